"""A campaign's budget in instrument-seconds and its deadline: checked before each measurement
starts (tasks/meter.py), so neither is ever passed; what an instrument could not measure is
dropped in an ``ended`` row that a resume does not re-issue."""

from __future__ import annotations

import datetime
import threading

import pytest

from coorch.deployments.config import CampaignSpec
from coorch.storage import CampaignStore
from coorch.tasks.meter import Ended, InstrumentTime, Meter

AFM = InstrumentTime({"pfm_loop": 30.0}, move_s_per_mm=2.0, load_s=120.0)


def test_expected_time_is_measure_plus_move_plus_load():
    assert AFM.expected("pfm_loop", (0.0, 0.0), (3.0, 4.0), False) == 30.0 + 2.0 * 5.0
    assert AFM.expected("pfm_loop", None, (3.0, 4.0), True) == 30.0 + 120.0


def test_meter_never_books_past_its_budget_even_from_many_threads():
    meter = Meter({"afm": AFM}, budget_s=1000.0)
    booked, refused = [], []

    def book():
        try:
            booked.append(meter.reserve("afm", 30.0))
        except Ended as exc:
            refused.append(exc)

    threads = [threading.Thread(target=book) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(booked) == 33 and len(refused) == 17  # 33 x 30 s fit in 1000 s
    assert refused[0].instruments == ("afm",)
    meter.settle(30.0, spent=False)  # a failed measurement gives its time back
    assert meter.reserve("afm", 30.0) == 30.0


def test_meter_refuses_everything_after_the_deadline():
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    with pytest.raises(Ended, match="deadline") as exc:
        Meter({"afm": AFM}, deadline=past).reserve("afm", 1.0)
    assert exc.value.instruments == ()  # every instrument


def _spec(cfgs, store, **kw) -> CampaignSpec:
    return CampaignSpec(
        name="limits",
        instruments=cfgs,
        policy="random",
        budget=40,
        seeds_per_instrument=1,
        grid=(21, 3),
        store=str(store),
        report="",
        **kw,
    )


def _spent(store: CampaignStore, twins) -> float:
    """Instrument-seconds the stored measurements used, by the agents' own cost model."""
    from coorch.instrument_agents.client import InstrumentClient

    times = {}
    for cfg in twins:
        with InstrumentClient(cfg.url, cfg.token()) as c:
            times[cfg.name] = InstrumentTime.of(c.describe())
    total, here = 0.0, {}
    for m in sorted(store.read_measurements(), key=lambda m: m.started):
        x = (m.library_x, m.library_y)
        total += times[m.instrument].expected(m.modality, here.get(m.instrument), x, False)
        here[m.instrument] = x
    return total


def test_a_budget_in_instrument_seconds_is_never_passed(prefect_server, twins, tmp_path):
    from coorch.flows.coorchestrate import coorchestrate

    store_url = tmp_path / "b.zarr"
    result = coorchestrate(_spec(twins, store_url, budget_s=400.0))
    store = CampaignStore.open(str(store_url), create=False)
    assert 0 < result.n_measurements < 40  # the seconds ran out before the count
    # moves from the stage's start position are charged too, so this is a lower bound
    assert _spent(store, twins) <= 400.0
    ended = [d for d in store.read_decisions() if d.policy == "ended"]
    assert ended and all(e.pending for e in ended)
    again = coorchestrate(_spec(twins, store_url, budget_s=400.0))  # resume: nothing more fits
    assert again.n_measurements <= result.n_measurements + len(twins)
    dropped = {mid for e in ended for mid in e.pending}
    measured = {m.measurement_id for m in store.read_measurements()}
    assert not dropped & measured  # what was dropped is never measured later


def test_a_campaign_past_its_deadline_measures_nothing_and_ends(prefect_server, twins, tmp_path):
    from coorch.flows.coorchestrate import coorchestrate

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    store_url = tmp_path / "d.zarr"
    result = coorchestrate(_spec(twins, store_url, deadline=past))
    assert result.n_measurements == 0
    rows = CampaignStore.open(str(store_url), create=False).read_decisions()
    ended = [d for d in rows if not d.requests_measurement]
    assert ended and {d.policy for d in ended} == {"ended"}
    # every decision (the seeds, all started at once) is dropped in one of them
    dropped = {mid for d in ended for mid in d.pending}
    assert dropped == {d.measurement_id for d in rows if d.requests_measurement}
