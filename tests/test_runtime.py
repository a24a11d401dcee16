"""The campaign runtime on its own (no Prefect, no HTTP): resume from the store, decide with the
queue first and the budget kept, record into the agent and the background work."""

from __future__ import annotations

import numpy as np
import pytest

from coorch.models.cost import InstrumentCost
from coorch.models.policies import make_policy
from coorch.records import Decision, Measurement, Signal
from coorch.storage import CampaignStore
from coorch.tasks.describe import Describer
from coorch.tasks.runtime import Campaign

MODALITIES = {"a": "raman", "b": "wds"}


def campaign(url: str, budget: int = 6) -> Campaign:
    cand = np.column_stack([np.linspace(0, 10, 11), np.ones(11)])
    insts = [InstrumentCost("a", (0,)), InstrumentCost("b", (1,))]
    agent = make_policy("random", cand, np.array([[0.0, 10.0], [0.0, 2.0]]), insts, seed=1)
    passthrough = Describer(describe=lambda _, s: s.array().reshape(-1))
    return Campaign("rt", CampaignStore.open(url), agent, passthrough, MODALITIES, budget)


def measured(d: Decision) -> Measurement:
    """What an instrument would return for ``d``: the position's x as the value."""
    return Measurement(
        measurement_id=d.measurement_id, instrument=d.instrument, modality=d.modality,
        sample="s", library_x=d.library_x, library_y=d.library_y, stage_x=0.0, stage_y=0.0,
        started=1.0, ended=2.0, decision_id=d.decision_id,
        signal=Signal(name="v", dims=["value"], values=[d.library_x]),
    )  # fmt: skip


class Counting:
    """Background work that counts its polls and finishes."""

    def __init__(self) -> None:
        self.polls = self.finished = 0

    def poll(self, campaign: Campaign) -> None:
        self.polls += 1

    def finish(self, campaign: Campaign) -> None:
        self.finished += 1


def test_decisions_are_stored_before_they_are_measured_and_the_budget_holds(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"))
    work = Counting()
    c.work = [work]
    c.reserve([("a", np.array([0.0, 1.0])), ("b", np.array([10.0, 1.0]))])
    made = []
    while (d := c.decide()) is not None:
        assert d.measurement_id in {r.measurement_id for r in c.store.read_decisions()}
        m = measured(d)
        c.store.append_measurement(m)
        c.record(m)
        made.append(d)
    c.finish()
    assert [d.policy for d in made[:2]] == ["seed", "seed"] and len(made) == 6
    assert c.done and c.measured == 6 and work.polls == 6 and work.finished == 1
    x, t, y = c.agent.log.data()
    assert len(y) == 6 and set(t) == {0, 1}


def test_resume_tells_the_store_and_reissues_unmeasured_decisions_with_their_ids(tmp_path):
    url = str(tmp_path / "c.zarr")
    first = campaign(url)
    first.reserve([("a", np.array([0.0, 1.0]))])
    done = [first.decide(), first.decide("b"), first.decide("a")]
    for d in done[:2]:  # the third was decided, then the run died before its measurement
        first.store.append_measurement(measured(d))
    first.store.close()

    again = campaign(url)
    stored = again.resume()
    assert {m.measurement_id for m in stored} == {d.measurement_id for d in done[:2]}
    assert [d.measurement_id for d in again.queue] == [done[2].measurement_id]
    assert again.measured == 2 and again.decided == 3
    assert again.decide("b").measurement_id not in {d.measurement_id for d in done}
    assert again.decide("a").measurement_id == done[2].measurement_id  # queued first, same id
    assert len(again.agent.log) == 2 and done[2].measurement_id in again.agent.pending


def test_decide_returns_none_once_the_budget_is_decided(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=2)
    assert c.decide("a") is not None and c.decide("b") is not None
    assert c.decide("a") is None and c.done


@pytest.mark.parametrize("instrument", ["a", None])
def test_a_queued_decision_goes_to_its_instrument_only(tmp_path, instrument):
    c = campaign(str(tmp_path / "c.zarr"))
    c.reserve([("b", np.array([5.0, 1.0]))])
    d = c.decide(instrument)
    assert d.instrument == ("b" if instrument is None else "a")
