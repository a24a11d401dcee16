"""The campaign store's ``simulations`` group: theory runs stored with their provenance.

Round trip of the records (done, failed, dropped), idempotent appends, plain xarray reading the
group, journaled simulations surviving a SIGKILLed writer, columns that a second writer adds,
and one round trip on S3 (moto on loopback).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store_s3 import moto_server, s3  # noqa: F401 - the S3 fixtures, reused

from coorch.benchmarks import fixtures as syn
from coorch.records import Simulation
from coorch.storage import CampaignStore
from coorch.storage.codec import SignalGrid
from coorch.storage.journal import decode_simulation, encode_simulation
from coorch.storage.simulations import simulation_from_row, simulation_row
from coorch.storage.zarr_table import encode_chunk

T0 = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sim(i: int, status: str = "done", *, prefix: str = "s", **kw: object) -> Simulation:
    """Simulation ``i``: odd ones also steer ``depol``; only done ones have results."""
    done = status == "done"
    rng = np.random.default_rng(i)
    fields: dict[str, object] = {
        "simulation_id": f"{prefix}-{i}",
        "campaign": "bfo-sm",
        "flow_run_id": "fr-1" if i % 3 else None,
        "requested_at": T0 + timedelta(seconds=i),
        "finished_at": T0 + timedelta(seconds=i, microseconds=500001),
        "composition": 0.01 * i,
        "parameters": {"s_c": 0.13, "depol": 0.2 * i} if i % 2 else {"s_c": 0.1},
        "status": status,
        "attempts": 1 + i % 2,
        "error": None if done else f"solver diverged ({i})",
        "worker": f"tcp://127.0.0.1:{4000 + i}",
        "runtime_s": 12.5 + i,
        "outputs": {"loop_opening": 1.5 * i, "coercive_v": 2.0} if done else {},
        "signal": syn.loop_signal(rng.random((2, 64)).tolist()) if done else None,
        "surrogate_version": f"theory-gp-{i}",
        "acquisition_value": 0.25 * i,
        "n_measurements": 10 + i,
        "n_simulations": i,
    }
    return Simulation(**{**fields, **kw})


@pytest.fixture
def url(tmp_path):
    return str(tmp_path / "campaign.zarr")


def test_simulations_round_trip_as_records_and_table(url):
    sims = [sim(0, "failed"), sim(1), sim(2, "dropped"), sim(3), sim(4, "failed"), sim(5)]
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0)
    for s in sims[:3]:  # through the journal: the first rows have no signal yet
        assert store.append_simulation(s) is True
    assert store.append_simulations(sims[3:]) == [True, True, True]  # the batch path
    got = store.read_simulations()
    assert got == sims
    assert [s.outputs for s in got if s.status != "done"] == [{}, {}, {}]
    assert all(s.signal is None for s in got if s.status != "done")
    assert got[0].error == "solver diverged (0)" and got[0].flow_run_id is None

    df = store.simulations()
    assert list(df["simulation_id"]) == [s.simulation_id for s in sims]
    assert {"param_s_c", "param_depol", "out_loop_opening", "out_coercive_v"} <= set(df.columns)
    assert "response" not in df.columns  # the signal is in the records and the dataset
    np.testing.assert_allclose(df["param_s_c"], [0.1, 0.13, 0.1, 0.13, 0.1, 0.13])
    assert np.isnan(df["param_depol"][0]) and df["param_depol"][3] == pytest.approx(0.6)
    assert np.isnan(df["out_loop_opening"][2]) and df["out_loop_opening"][5] == 7.5
    assert df["requested_at"][1] == T0 + timedelta(seconds=1)
    assert list(df["status"]) == [s.status for s in sims]
    assert store.verify() == []
    store.close()
    assert CampaignStore.open(url).read_simulations() == sims


def test_append_simulation_is_idempotent_by_id(url):
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0)
    s = sim(1)
    assert store.append_simulation(s) is True
    assert store.append_simulation(s) is False  # in the journal
    store.flush()
    assert store.append_simulation(s) is False  # committed
    assert CampaignStore.open(url).append_simulation(s) is False  # another writer
    assert store.append_simulations([s, sim(2, "failed"), sim(2, "failed")]) == [
        False,
        True,
        False,
    ]
    assert [x.simulation_id for x in store.read_simulations()] == ["s-1", "s-2"]
    assert store.verify() == []


def test_plain_xarray_reads_the_simulations_group(url):
    sims = [sim(0, "dropped"), sim(1), sim(2, "failed"), sim(3)]
    with CampaignStore.open(url) as store:
        store.append_simulations(sims)
        store.append_measurement(syn.measurement(0))
    ds = xr.open_zarr(url, group="simulations")
    assert ds.sizes == {"simulation": 4, "branch": 2, "bias": 64}
    assert ds["response"].dims == ("simulation", "branch", "bias")
    assert ds["response"].attrs["units"] == "pm/V" and ds["bias"].attrs["units"] == "V"
    assert list(ds["branch"].values) == ["up", "down"]
    assert np.isnan(ds["response"].values[[0, 2]]).all()  # no loop for failed and dropped
    np.testing.assert_array_equal(ds["response"].values[3], sims[3].signal.array())
    assert list(ds["simulation_id"].values) == ["s-0", "s-1", "s-2", "s-3"]
    assert list(ds["status"].values) == ["dropped", "done", "failed", "done"]
    np.testing.assert_allclose(ds["param_depol"].values, [np.nan, 0.2, np.nan, 0.6])
    assert np.issubdtype(ds["requested_at"].dtype, np.datetime64)
    assert ds.attrs["signal"] == "response"
    # the measurement groups are as they were
    assert xr.open_zarr(url, group="pfm_loop").sizes["measurement"] == 1


def test_a_store_without_simulations_reads_none(url):
    with CampaignStore.open(url) as store:
        store.append_measurement(syn.measurement(0))
        store.append_decision(syn.decision(0))
    store = CampaignStore.open(url)
    assert store.read_simulations() == []
    assert store.simulations().empty and "param_s_c" not in store.simulations().columns
    assert store.verify() == []


WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store_simulations import sim
    from coorch.storage import CampaignStore

    store = CampaignStore.open({url!r}, flush_every=1000, flush_interval_s=60)
    for i in range(5):
        assert store.append_simulation(sim(i, "done" if i % 2 else "failed"))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, no atexit
""")


def test_journaled_simulations_survive_a_killed_writer(url):
    from pathlib import Path

    code = WRITER.format(tests=str(Path(__file__).parent), url=url)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == -9, res.stderr
    root = json.loads((Path(url) / "zarr.json").read_text())
    assert "simulations" not in root["consolidated_metadata"]["metadata"]  # only journaled
    store = CampaignStore.open(url)  # opening consolidates the journal
    want = [sim(i, "done" if i % 2 else "failed") for i in range(5)]
    assert store.read_simulations() == want
    assert xr.open_zarr(url, group="simulations").sizes["simulation"] == 5
    assert store.verify() == []


def test_columns_added_by_another_writer_are_kept_in_step(url):
    """Two open stores: B adds a parameter and the signal, then A (which built its table
    before) commits; every column must grow with A's rows (else xarray cannot open it)."""
    a = CampaignStore.open(url, flush_every=1)
    assert a.append_simulation(sim(0, "failed", parameters={"s_c": 0.1}))
    b = CampaignStore.open(url, flush_every=1)
    assert b.append_simulation(sim(1))  # new: param_depol, outputs, the signal
    assert a.append_simulation(sim(2, "failed", parameters={"s_c": 0.2}))
    assert a.append_simulation(sim(3))  # A now checks the signal grid B stored
    with pytest.raises(ValueError, match="coordinate 'bias'"):
        bad = syn.loop_signal(np.zeros((2, 64)).tolist())
        a.append_simulation(
            sim(4, signal=bad.model_copy(update={"coords": {**bad.coords, "bias": [0.0] * 64}}))
        )
    assert a.verify() == []
    ds = xr.open_zarr(url, group="simulations")
    assert ds.sizes["simulation"] == 4
    np.testing.assert_allclose(ds["param_depol"].values, [np.nan, 0.2, np.nan, 0.6])
    assert [s.simulation_id for s in b.read_simulations()] == ["s-0", "s-1", "s-2", "s-3"]


def test_a_new_column_never_shows_chunks_a_crashed_writer_left(url):
    store = CampaignStore.open(url, flush_every=1)
    for i in (0, 2):
        store.append_simulation(sim(i, "failed"))  # no param_depol, no signal
    # a writer that added param_depol for rows 0 and 1, then died before its commit
    from pathlib import Path

    orphan = Path(url) / "simulations" / "param_depol" / "c" / "0"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(encode_chunk("float64", np.full(256, 99.0)))
    store.append_simulation(sim(1))
    ds = xr.open_zarr(url, group="simulations")
    np.testing.assert_allclose(ds["param_depol"].values, [np.nan, np.nan, 0.2])
    params = {s.simulation_id: s.parameters for s in store.read_simulations()}
    assert params == {"s-0": {"s_c": 0.1}, "s-2": {"s_c": 0.1}, "s-1": {"s_c": 0.13, "depol": 0.2}}


def test_simulations_that_cannot_be_stored_are_refused_or_set_aside(url):
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0)
    with pytest.raises(ValueError):
        store.append_simulation(sim(0, parameters={"a/b": 1.0}))
    raman = syn.raman_signal(np.zeros(512).tolist())
    with pytest.raises(ValueError):  # a signal named like a column of the table
        store.append_simulation(sim(0, signal=raman.model_copy(update={"name": "status"})))
    with pytest.raises(ValueError):  # results of a run that did not finish
        sim(0, "failed", outputs={"loop_opening": 1.0})
    # two journaled runs on different grids before the table has one: the second is set aside
    assert store.append_simulation(sim(1))
    assert store.append_simulation(sim(3, signal=raman))
    store.flush()
    assert [s.simulation_id for s in store.read_simulations()] == ["s-1"]
    problems = store.verify()
    assert len(problems) == 1 and problems[0].startswith("rejected")


def test_s3_simulations_round_trip(s3):  # noqa: F811 - the fixture
    url, opts = s3
    sims = [sim(0, "failed"), sim(1), sim(2, "dropped"), sim(3)]
    store = CampaignStore.open(url, storage_options=opts, flush_every=1000, flush_interval_s=0)
    assert store.append_simulation(sims[0]) and store.append_simulation(sims[1])
    assert store.append_simulations(sims) == [False, False, True, True]
    assert CampaignStore.open(url, storage_options=opts).read_simulations() == sims
    ds = xr.open_zarr(url, group="simulations", storage_options=opts)
    assert ds["response"].dims == ("simulation", "branch", "bias")
    np.testing.assert_array_equal(ds["response"].values[1], sims[1].signal.array())
    assert store.verify() == []


names = st.text(min_size=1, max_size=8).filter(lambda n: not any(c in n for c in "/\\\0"))
values = st.floats(allow_nan=False, width=64)
times = st.datetimes(datetime(1970, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC))


@st.composite
def simulations(draw: st.DrawFn) -> Simulation:
    status = draw(st.sampled_from(["done", "failed", "dropped"]))
    done = status == "done"
    loop = draw(st.lists(values, min_size=10, max_size=10)) if done else None
    return sim(
        draw(st.integers(0, 5)),
        status,
        flow_run_id=draw(st.one_of(st.none(), names)),
        requested_at=draw(times),
        finished_at=draw(times),
        composition=draw(values),
        parameters=draw(st.dictionaries(names, values, max_size=3)),
        error=draw(st.one_of(st.none(), names)),
        worker=draw(st.one_of(st.none(), names)),
        outputs=draw(st.dictionaries(names, values, max_size=3)) if done else {},
        signal=None
        if loop is None
        else syn.loop_signal(np.reshape(loop, (2, 5)).tolist()).model_copy(
            update={"coords": {"branch": ["up", "down"], "bias": [0.0, 1.0, 2.0, 3.0, 4.0]}}
        ),
        acquisition_value=draw(values),
    )


@settings(max_examples=40, deadline=None)
@given(simulations())
def test_row_and_journal_codecs_round_trip(s):
    row, loop = simulation_row(s)
    grid = None if s.signal is None else SignalGrid.of_signal(s.signal)
    assert simulation_from_row(row, loop, grid) == s
    assert decode_simulation(encode_simulation(s))[1] == s
