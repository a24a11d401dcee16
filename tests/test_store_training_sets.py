"""A decision's training set is stored as a chain (each row lists the ids its model read since
the decision it names), so a campaign's decisions grow linearly, not as the square of its
length; lineage, verify and the report resolve the chain, and stores written before it still
read and take new decisions."""

from __future__ import annotations

import numpy as np
import pytest

from coorch.benchmarks import fixtures as syn
from coorch.storage import CampaignStore, schema
from coorch.storage.training_sets import (
    LoopingChain,
    links_of,
    table_links,
    trained_after,
    trained_on_of,
    training_set_sizes,
)
from coorch.tasks.runtime import Campaign
from tests.test_runtime import campaign, measured


def chain_store(url: str) -> tuple[CampaignStore, list[str]]:
    """d-0 trained on a; d-1 on a + b (stored: b since d-0); d-2 on a + b + c (c since d-1);
    d-3 starts a new chain (after a restart) with everything; d-2 asked for m-raman-3."""
    store = CampaignStore.open(url)
    ms = [syn.measurement(i) for i in range(3)]
    store.append_many(ms)
    a, b, c = (m.measurement_id for m in ms)
    store.append_decision(syn.decision(0, trained_on=[a]))
    store.append_decision(syn.decision(1, trained_on=[b], trained_since="d-0"))
    store.append_decision(syn.decision(2, trained_on=[c], trained_since="d-1"))
    store.append_decision(syn.decision(3, trained_on=[a, b, c]))
    store.append_measurement(syn.measurement(3, "raman", decision_id="d-2"))
    return store, [a, b, c]


def test_lineage_resolves_a_chained_training_set_both_ways(tmp_path):
    store, (a, b, c) = chain_store(str(tmp_path / "c.zarr"))
    lin = store.lineage("m-raman-3")
    assert lin["back"]["decision"]["decision_id"] == "d-2"
    assert lin["back"]["trained_on"] == [a, b, c] and lin["back"]["chain_broken"] is None
    assert store.lineage(b)["forward"] == {
        "decisions": ["d-1", "d-2", "d-3"],
        "measurements": ["m-raman-3"],
    }
    assert store.lineage(c)["forward"]["decisions"] == ["d-2", "d-3"]
    d = store.decisions()
    assert list(d["trained_since"]) == ["", "d-0", "d-1", ""]
    links = table_links(d)
    assert training_set_sizes(links) == {"d-0": 1, "d-1": 2, "d-2": 3, "d-3": 3}
    assert store.verify() == []


def test_a_broken_chain_is_reported_not_resolved_wrong(tmp_path):
    store, (a, b, c) = chain_store(str(tmp_path / "c.zarr"))
    store.append_decision(syn.decision(4, trained_on=[c], trained_since="d-gone"))
    store.append_measurement(syn.measurement(5, "raman", decision_id="d-4"))
    problems = store.verify()
    assert problems == ["dangling ref: decision d-4: trained_since names unknown decision d-gone"]
    lin = store.lineage("m-raman-5")
    assert lin["back"]["trained_on"] == [c] and "d-gone" in lin["back"]["chain_broken"]
    links = {"x": ("y", ["m1"]), "y": ("x", ["m2"])}
    with pytest.raises(LoopingChain, match="loops"):
        trained_on_of(links, "x")
    assert training_set_sizes(links) == {"x": -1, "y": -1}
    assert trained_after(links, "m2") == ["x", "y"]


def test_a_store_written_before_the_chain_reads_and_takes_chained_decisions(tmp_path, monkeypatch):
    url = str(tmp_path / "old.zarr")
    old = [c for c in schema.DECISION_COLUMNS if c[0] != "trained_since"]
    monkeypatch.setattr(schema, "DECISION_COLUMNS", old)
    store = CampaignStore.open(url)
    store.append_measurement(syn.measurement(0))
    store.append_decision(syn.decision(0, trained_on=["m-pfm_loop-0"]))
    store.close()
    monkeypatch.undo()

    store = CampaignStore.open(url)
    assert store.decisions()["trained_since"].tolist() == [""]
    store.append_measurement(syn.measurement(1))
    store.append_decision(syn.decision(1, trained_on=["m-pfm_loop-1"], trained_since="d-0"))
    assert [d.trained_since for d in store.read_decisions()] == [None, "d-0"]
    store.close()  # consolidated for plain readers
    store = CampaignStore.open(url)
    ds = store.read_dataset(schema.DECISIONS_GROUP)
    assert ds["trained_since"].values.tolist() == ["", "d-0"]
    assert store.verify() == []


def test_a_campaign_stores_each_decision_as_a_link_of_its_chain(tmp_path):
    """What the runtime stores resolves to what the agent had read at each decision, and the
    ids stored grow with the measurements (not their square); a resumed run starts a chain."""
    url = str(tmp_path / "c.zarr")
    c: Campaign = campaign(url, budget=12)
    c.reserve([("a", np.array([0.0, 1.0])), ("b", np.array([10.0, 1.0]))])
    read_at: dict[str, list[str]] = {}
    while (d := c.decide()) is not None:
        read_at[d.decision_id] = [] if d.policy == "seed" else list(c.agent.log.ids)
        m = measured(d)
        c.store.append_measurement(m)
        c.record(m)
    c.store.close()
    again = campaign(url, budget=14)
    again.resume()
    while (d := again.decide()) is not None:
        read_at[d.decision_id] = list(again.agent.log.ids)
        again.store.append_measurement(measured(d))
        again.record(measured(d))

    stored = CampaignStore.open(url).read_decisions()
    links = links_of((d.decision_id, d.trained_since, d.trained_on) for d in stored)
    for did, ids in read_at.items():
        assert trained_on_of(links, did) == ids
    assert sum(d.trained_since is None for d in stored) == 2  # one chain per run
    # each id stored once per run: the runs' last decisions had read 11 and 13 measurements
    assert sum(len(d.trained_on) for d in stored) == 11 + 13
    assert CampaignStore.open(url).verify() == []
