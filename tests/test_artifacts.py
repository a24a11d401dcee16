"""Artifacts of a running campaign: attached to its flow run on a real Prefect server, cheap on
the flow's thread, coalesced when the API is slow, and never raising into the campaign."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from coorch.flows import artifacts as artifacts_module
from coorch.flows.artifacts import CampaignArtifacts, artifact_key
from coorch.records import Decision, HumanInput


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert artifact_key("SmBFO run #2", "progress") == "smbfo-run-2-progress"
    assert artifact_key("  ___ ", "summary") == "campaign-summary"
    assert artifact_key("Ünï_côde/x", "report") == "n-c-de-x-report"
    long = artifact_key("a" * 300, "decisions")
    assert len(long) < 64 and long.endswith("-decisions")


def _decisions() -> list[Decision]:
    operator = HumanInput(operator="ana", action="override", detail={"x": 3.5, "y": 1.0})
    return [
        Decision(instrument="afm-twin", modality="pfm_loop", library_x=1.0, library_y=0.5,
                 policy="seed"),
        Decision(instrument="raman-twin", modality="raman", library_x=7.25, library_y=1.5,
                 policy="coorchestrate", acquisition_value=0.123456, model_version="mtgp-n3"),
        Decision(instrument="afm-twin", modality="pfm_loop", library_x=3.5, library_y=1.0,
                 policy="human", model_version="mtgp-n3", human_input=operator),
    ]  # fmt: skip


def test_a_flow_publishes_progress_summary_decisions_and_report_link(prefect_server, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    report = tmp_path / "report.html"
    report.write_text("<html></html>")

    @flow
    def tiny_campaign() -> str:
        with CampaignArtifacts("Tiny Campaign #1", budget=4) as art:
            for n in range(1, 5):
                art.progress(n)
            art.summary({"afm-twin": {"n": 1, "mean_sd": 0.5}}, model_version="mtgp-n1")
            art.summary(
                {"afm-twin": {"n": 2, "mean_sd": 0.25}, "raman-twin": {"n": 2, "mean_sd": 0.125}},
                model_version="mtgp-n4",
            )
            art.decisions(_decisions())
            art.report(report)
        assert art.failures == 0
        return str(get_run_context().flow_run.id)

    run_id = tiny_campaign()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert {str(a.flow_run_id) for a in found} == {run_id}
    by_key: dict[str, list] = {}
    for a in sorted(found, key=lambda a: a.created):
        by_key.setdefault(a.key, []).append(a)
    key = "tiny-campaign-1-"
    assert set(by_key) == {key + k for k in ("progress", "summary", "decisions", "report")}

    (progress,) = by_key[key + "progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    latest = by_key[key + "summary"][-1].data
    assert "| afm-twin | 2 | 0.25 | `mtgp-n4` |" in latest
    assert "| raman-twin | 2 | 0.125 | `mtgp-n4` |" in latest
    (table,) = by_key[key + "decisions"]
    rows = json.loads(table.data)
    assert [r["instrument"] for r in rows] == ["afm-twin", "raman-twin", "afm-twin"]
    assert rows[0]["acquisition value"] is None and rows[1]["acquisition value"] == 0.1235
    assert rows[1]["x"] == 7.25 and rows[1]["model version"] == "mtgp-n3"
    assert rows[2]["human input"] == "ana: override (x=3.5, y=1)"
    assert list(rows[0]) == [
        "time",
        "instrument",
        "x",
        "y",
        "policy",
        "acquisition value",
        "model version",
        "human input",
    ]
    (link,) = by_key[key + "report"]
    assert f"({report.resolve().as_uri()})" in link.data


def test_publishing_costs_microseconds_and_coalesces_behind_a_slow_api(monkeypatch):
    sent: list[float] = []
    first = threading.Event()

    def slow_create(percent, **kw):
        first.wait(5)  # the API is stuck while the flow keeps reporting
        sent.append(percent)
        return "artifact-id"

    def slow_update(artifact_id, percent, **kw):
        time.sleep(0.05)
        sent.append(percent)

    monkeypatch.setattr(artifacts_module, "create_progress_artifact", slow_create)
    monkeypatch.setattr(artifacts_module, "update_progress_artifact", slow_update)
    art = CampaignArtifacts("slow", budget=2000)
    t0 = time.perf_counter()
    for n in range(1, 2001):
        art.progress(n)
    per_call = (time.perf_counter() - t0) / 2000
    first.set()
    art.close()
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} us per call on the flow's thread"
    assert sent[-1] == 100.0 and len(sent) <= 3, sent  # the first, maybe one more, the last


def test_failures_are_logged_once_and_never_raised(monkeypatch, caplog):
    def broken(*args, **kw):
        raise ConnectionError("API down")

    for name in ("create_progress_artifact", "create_markdown_artifact", "create_table_artifact"):
        monkeypatch.setattr(artifacts_module, name, broken)
    caplog.set_level(logging.WARNING, logger="coorch.artifacts")
    with CampaignArtifacts("down", budget=3) as art:
        for n in range(3):
            art.progress(n)
            art.summary({"afm": {"n": n, "mean_sd": 1.0}}, "v")
            art.decisions(_decisions())
            time.sleep(0.02)
    assert art.failures >= 3
    not_published = [r for r in caplog.records if "not published" in r.getMessage()]
    assert len(not_published) == 1 and "API down" in not_published[0].getMessage()


def test_a_budget_below_one_is_refused():
    with pytest.raises(ValueError, match="budget"):
        CampaignArtifacts("x", budget=0)
