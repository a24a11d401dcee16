"""Lineage shows human inputs: the override that requested a measurement (with the proposal it
replaced) and the operators' votes on its signal, through the function and the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from coorch.benchmarks import fixtures as syn
from coorch.records import Decision, HumanInput
from coorch.storage import CampaignStore
from coorch.storage.cli import store_app
from coorch.storage.lineage import lineage

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z: fixed times, so the order of inputs is known
M0 = "m-pfm_loop-0"


def _operator_row(i: int, operator: str, action: str, detail: dict, **kw) -> Decision:
    """A row that asks for no measurement (empty modality): an operator's input only."""
    return Decision(
        decision_id=f"d-op-{i}",
        instrument="afm1",
        modality="",
        library_x=0.0,
        library_y=0.0,
        policy="operator",
        human_input=HumanInput(operator=operator, action=action, at=T0 + 100 * i, detail=detail),
        **kw,
    )


@pytest.fixture
def campaign(tmp_path):
    """d-0: alice overrode the agent's proposal d-prop; it measured M0, which bob and carol
    voted on. Noise around it: a vote on another measurement, an operator row that lists M0 in
    ``trained_on``, and an ordinary decision d-1 trained on M0 that caused m-pfm_loop-2."""
    url = str(tmp_path / "human.zarr")
    proposal = syn.decision(9, prefix="d-prop").model_copy(update={"library_x": 3.5})
    override = syn.decision(0).model_copy(
        update={
            "policy": "operator",
            "human_input": HumanInput(
                operator="alice",
                action="override",
                at=T0,
                detail={"library_x": 0.0, "library_y": 1.0},
                replaced=proposal.model_dump(mode="json"),
            ),
        }
    )
    store = CampaignStore.open(url)
    store.append_decision(override)
    store.append_many([syn.measurement(0, decision_id="d-0"), syn.measurement(1)])
    store.append_decisions(
        [
            _operator_row(2, "carol", "vote", {"measurement_id": M0, "score": 2}),
            _operator_row(1, "bob", "vote", {"measurement_id": M0, "score": 5, "comment": "ok"}),
            _operator_row(3, "bob", "vote", {"measurement_id": "m-pfm_loop-1", "score": 1}),
            _operator_row(4, "dave", "exclude", {"box": [0, 0, 1, 1]}, trained_on=[M0]),
            syn.decision(1, trained_on=[M0]),
        ]
    )
    store.append_measurement(syn.measurement(2, decision_id="d-1"))
    store.close()
    return url


def test_lineage_returns_override_and_votes(campaign):
    store = CampaignStore.open(campaign, create=False)
    lin = lineage(store.measurements_table(), store.decisions(), M0)
    human = lin["human"]
    assert [(h["action"], h["operator"]) for h in human] == [
        ("override", "alice"),
        ("vote", "bob"),
        ("vote", "carol"),
    ]
    override, bob, carol = human
    assert override["replaced"]["decision_id"] == "d-prop-9"
    assert override["replaced"]["library_x"] == 3.5
    assert override["decision_id"] == "d-0" and override["detail"]["library_x"] == 0.0
    assert bob["detail"] == {"measurement_id": M0, "score": 5, "comment": "ok"}
    assert carol["detail"]["score"] == 2 and carol["replaced"] is None
    assert pd.Timestamp(bob["at"]) == pd.Timestamp(T0 + 100, unit="s", tz="UTC")
    # operator rows leave back and forward as they were
    assert lin["back"]["decision"]["decision_id"] == "d-0"
    assert lin["forward"] == {"decisions": ["d-1"], "measurements": ["m-pfm_loop-2"]}
    # a measurement nobody spoke of has no human inputs; the other vote stays with its own
    assert store.lineage("m-pfm_loop-2")["human"] == []
    assert [h["detail"]["score"] for h in store.lineage("m-pfm_loop-1")["human"]] == [1]


def test_lineage_on_an_exported_decisions_table(campaign):
    """Lineage is a function of tables, exported ones too: Parquet holds human_input as JSON."""
    store = CampaignStore.open(campaign, create=False)
    dec = store.decisions()
    dec = dec.assign(human_input=[json.dumps(v) for v in dec["human_input"]])
    human = lineage(store.measurements_table(), dec, M0)["human"]
    assert [h["operator"] for h in human] == ["alice", "bob", "carol"]


def test_cli_lineage_prints_human_inputs(campaign):
    runner = CliRunner()
    res = runner.invoke(store_app, ["lineage", campaign, M0])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "human" in out
    assert "override by alice" in out and "replaced proposal d-prop-9" in out
    assert "vote by bob" in out and "score=5" in out and "comment=ok" in out
    assert "vote by carol" in out and "score=2" in out
    assert "exclude by dave" not in out and "score=1" not in out
    assert out.index("vote by bob") < out.index("vote by carol")
    res = runner.invoke(store_app, ["lineage", campaign, M0, "--json"])
    lin = json.loads(res.output)
    assert [h["action"] for h in lin["human"]] == ["override", "vote", "vote"]
    assert lin["human"][0]["replaced"]["library_x"] == 3.5
    res = runner.invoke(store_app, ["lineage", campaign, "m-pfm_loop-2"])
    assert res.exit_code == 0 and "no operator input" in res.output
