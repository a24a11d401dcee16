"""Campaign store on local disk: round trip through plain xarray, idempotency, lineage, verify."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from coorch.benchmarks import fixtures as syn
from coorch.records import Measurement
from coorch.storage import CampaignStore
from coorch.storage.codec import content_hash


@pytest.fixture
def url(tmp_path):
    return str(tmp_path / "campaign.zarr")


def test_round_trip_through_plain_xarray(url):
    store = CampaignStore.open(url)
    d = syn.decision(0)
    assert store.append_decision(d)
    ms = [syn.measurement(i, decision_id="d-0", flow_run_id="fr-1") for i in range(5)]
    rs = [syn.measurement(i, "raman") for i in range(3)]
    for m in ms + rs:
        assert store.append_measurement(m) is True
    store.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata is there: no fallback warning
        ds = xr.open_zarr(url, group="pfm_loop")
    assert ds.sizes == {"measurement": 5, "branch": 2, "bias": 64}
    assert ds["response"].dims == ("measurement", "branch", "bias")
    assert list(ds["measurement_id"].values) == [m.measurement_id for m in ms]
    for i, m in enumerate(ms):
        np.testing.assert_array_equal(ds["response"].values[i], m.signal.array())
        assert ds["content_hash"].values[i] == content_hash(m.signal.array())
    assert ds["response"].attrs["units"] == "pm/V"
    assert ds["bias"].attrs["units"] == "V"
    assert list(ds["branch"].values) == ["up", "down"]
    np.testing.assert_allclose(ds["bias"].values, syn.BIAS)
    for c in (
        "library_x",
        "library_y",
        "stage_x",
        "stage_y",
        "instrument",
        "sample",
        "start_time",
        "end_time",
        "decision_id",
        "flow_run_id",
    ):
        assert c in ds.coords, c
    assert ds["library_x"].attrs["units"] == "mm"
    assert np.issubdtype(ds["start_time"].dtype, np.datetime64)
    t0 = np.datetime64(int(ms[0].started * 1e6), "us")
    assert abs(ds["start_time"].values[0] - t0) < np.timedelta64(1, "ms")
    assert set(ds["decision_id"].values) == {"d-0"}
    assert set(ds["flow_run_id"].values) == {"fr-1"}

    raman = xr.open_zarr(url, group="raman")
    assert raman["intensity"].dims == ("measurement", "wavenumber")
    assert raman.sizes["measurement"] == 3
    assert raman["wavenumber"].attrs["units"] == "1/cm"
    # plain zarr too, without consolidated metadata
    g = zarr.open_group(url, mode="r", use_consolidated=False)
    assert g["pfm_loop/response"].shape == (5, 2, 64)
    # the store's own reader agrees
    assert CampaignStore.open(url).read_modality("raman").identical(raman)
    dec = xr.open_zarr(url, group="decisions")
    assert list(dec["decision_id"].values) == ["d-0"]


def test_append_is_idempotent_by_id(url):
    store = CampaignStore.open(url)
    m = syn.measurement(1)
    assert store.append_measurement(m) is True
    assert store.append_measurement(m) is False
    store.flush()
    assert store.append_measurement(m) is False
    other = CampaignStore.open(url)  # another writer sees the committed id
    assert other.append_measurement(m) is False
    assert store.append_many([m, syn.measurement(2), syn.measurement(2)]) == [False, True, False]
    assert store.measurement_ids() == {"m-pfm_loop-1", "m-pfm_loop-2"}
    d = syn.decision(3)
    assert store.append_decision(d) is True
    assert store.append_decision(d) is False
    assert store.append_decisions([d, syn.decision(4)]) == [False, True]
    assert len(store.decisions()) == 2
    assert store.verify() == []


def test_read_sees_every_acknowledged_append_before_flush(url):
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0)
    for i in range(7):
        store.append_measurement(syn.measurement(i))
    # a second process-like reader: opening consolidates the journal
    assert len(CampaignStore.open(url).measurement_ids("pfm_loop")) == 7
    assert store.read_modality("pfm_loop").sizes["measurement"] == 7


def test_background_flush_makes_plain_readers_current(url):
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0.05)
    store.append_measurement(syn.measurement(0))
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            if xr.open_zarr(url, group="pfm_loop").sizes["measurement"] == 1:
                break
        except (KeyError, FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    else:
        pytest.fail("background flush did not consolidate the journal")
    store.close()


def test_tables_metadata_and_modalities(url):
    store = CampaignStore.open(url)
    md = store.metadata()
    assert md["code_version"]["package"] == "coorch"
    assert md["code_version"]["version"]
    store.set_metadata(
        spec={"name": "demo", "budget": 10, "nan": float("nan")}, instruments=[{"id": "afm1"}]
    )
    md = store.metadata()
    assert md["spec"] == {"name": "demo", "budget": 10, "nan": None}
    assert md["instruments"] == [{"id": "afm1"}]
    store.append_measurement(syn.measurement(0, decision_id="d-0"))
    store.append_measurement(syn.measurement(0, "raman"))
    store.append_decision(syn.decision(0))
    assert store.modalities() == ["pfm_loop", "raman"]
    t = store.measurements_table()
    assert list(t["measurement_id"]) == ["m-pfm_loop-0", "m-raman-0"]
    assert {
        "modality",
        "instrument",
        "library_x",
        "stage_y",
        "start_time",
        "end_time",
        "decision_id",
        "flow_run_id",
        "content_hash",
    } <= set(t.columns)
    d = store.decisions()
    assert d.loc[0, "trained_on"] == [] and d.loc[0, "policy"] == "coorchestrate"
    assert d.loc[0, "human_input"] is None
    assert d.loc[0, "n_candidates"] == 100


def test_lineage_back_and_forward(url):
    store = CampaignStore.open(url)
    store.append_decision(syn.decision(0))
    a = syn.measurement(0, decision_id="d-0")
    b = syn.measurement(1, decision_id="d-0")
    store.append_many([a, b])
    store.append_decision(syn.decision(1, trained_on=[a.measurement_id, b.measurement_id]))
    c = syn.measurement(2, "raman", decision_id="d-1")
    store.append_measurement(c)
    store.append_decision(syn.decision(2, trained_on=[a.measurement_id]))

    lin = store.lineage(c.measurement_id)
    assert lin["back"]["decision"]["decision_id"] == "d-1"
    assert lin["back"]["trained_on"] == [a.measurement_id, b.measurement_id]
    assert lin["forward"] == {"decisions": [], "measurements": []}
    fwd = store.lineage(a.measurement_id)
    assert fwd["back"]["decision"]["decision_id"] == "d-0"
    assert fwd["forward"]["decisions"] == ["d-1", "d-2"]
    assert fwd["forward"]["measurements"] == [c.measurement_id]
    json.dumps(fwd, default=str)  # printable
    with pytest.raises(KeyError):
        store.lineage("nope")


def test_verify_detects_corrupted_hash_and_dangling_refs(url):
    store = CampaignStore.open(url)
    store.append_decision(syn.decision(0))
    store.append_many([syn.measurement(i, decision_id="d-0") for i in range(3)])
    assert store.verify() == []
    # a measurement naming a decision that was never stored, and a decision trained on a
    # measurement that was never stored
    store.append_measurement(syn.measurement(9, decision_id="d-missing"))
    store.append_decision(syn.decision(5, trained_on=["m-ghost"]))
    problems = store.verify()
    assert any("d-missing" in p and "dangling" in p for p in problems)
    assert any("m-ghost" in p and "dangling" in p for p in problems)

    # flip the data of one stored measurement behind the store's back (plain zarr)
    url2 = url + "2"
    s2 = CampaignStore.open(url2)
    s2.append_many([syn.measurement(i) for i in range(3)])
    arr = zarr.open_array(url2, path="pfm_loop/response", mode="r+")
    arr[1, 0, 0] = 42.0
    problems = CampaignStore.open(url2).verify()
    assert len(problems) == 1 and "hash mismatch" in problems[0] and "m-pfm_loop-1" in problems[0]


def test_verify_detects_partial_write_and_open_repairs_it(url):
    store = CampaignStore.open(url)
    store.append_many([syn.measurement(i) for i in range(3)])
    # simulate a crash between per-array metadata and the root commit: one array's own
    # zarr.json claims a row that was never committed
    path = Path(url) / "pfm_loop" / "library_x" / "zarr.json"
    meta = json.loads(path.read_text())
    meta["shape"] = [4]
    path.write_text(json.dumps(meta))
    assert any("partial write" in p for p in store.verify())
    CampaignStore.open(url)  # opening repairs it
    assert store.verify() == []


def test_rejects_a_signal_that_does_not_fit_the_modality(url):
    store = CampaignStore.open(url)
    store.append_measurement(syn.measurement(0))
    bad = syn.measurement(1).model_copy(update={"signal": syn.raman_signal(np.zeros(512))})
    with pytest.raises(ValueError):
        store.append_many([bad])
    other_bias = syn.loop_signal(np.zeros((2, 64))).model_copy(
        update={"coords": {"branch": ["up", "down"], "bias": list(range(64))}}
    )
    with pytest.raises(ValueError):
        store.append_many([syn.measurement(2).model_copy(update={"signal": other_bias})])
    with pytest.raises(ValueError):
        store.append_measurement(syn.measurement(3).model_copy(update={"modality": "decisions"}))
    assert store.measurement_ids() == {"m-pfm_loop-0"}
    assert store.verify() == []


def test_measurement_from_json_lists(url):
    """Records that crossed HTTP carry nested lists, not numpy arrays."""
    m = syn.measurement(0)
    m2 = Measurement.model_validate_json(
        m.model_copy(
            update={"signal": m.signal.model_copy(update={"values": m.signal.array().tolist()})}
        ).model_dump_json()
    )
    store = CampaignStore.open(url)
    assert store.append_measurement(m2)
    np.testing.assert_array_equal(
        store.read_modality("pfm_loop")["response"].values[0], m.signal.array()
    )


def test_threads_append_concurrently(url):
    store = CampaignStore.open(url, flush_every=16)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            own = CampaignStore.open(url, flush_every=8) if t % 2 else store
            for i in range(60):
                mod = "raman" if i % 3 == 0 else "pfm_loop"
                assert own.append_measurement(syn.measurement(i, mod, prefix=f"t{t}"))
            own.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    store.close()
    assert len(store.measurement_ids()) == 240
    ds = xr.open_zarr(url, group="pfm_loop")
    assert ds.sizes["measurement"] == 160
    assert store.verify() == []


def test_append_latency_is_a_few_ms(url):
    store = CampaignStore.open(url)
    ms = [syn.measurement(i) for i in range(200)]
    times = []
    for m in ms:
        t = time.perf_counter()
        store.append_measurement(m)
        times.append(time.perf_counter() - t)
    store.close()
    median = float(np.median(times))
    assert median < 0.010, f"median append {median * 1e3:.1f} ms"


def test_verify_detects_duplicate_ids(url):
    store = CampaignStore.open(url)
    store.append_many([syn.measurement(i) for i in range(3)])
    ids = zarr.open_array(url, path="pfm_loop/measurement_id", mode="r+")
    ids[2] = "m-pfm_loop-0"  # a duplicate written behind the store's back
    problems = CampaignStore.open(url).verify()
    assert any(p.startswith("duplicate") and "m-pfm_loop-0" in p for p in problems)


def test_storage_layer_imports_no_upper_layer():
    """DESIGN.md layer rule: storage never imports Prefect, torch or the other layers (every
    module of coorch.storage, the CLI included), and ships no test fixtures or benchmarks."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, coorch.storage\n"
        "mods = [m.name for m in pkgutil.iter_modules(coorch.storage.__path__)]\n"
        "for m in mods:\n"
        "    importlib.import_module('coorch.storage.' + m)\n"
        "assert 'cli' in mods and 'codec' in mods, mods\n"
        "assert not {'bench', 'synthetic', 'moto'} & set(mods), mods\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'torch', 'gpytorch',"
        " 'moto') or m.startswith(('coorch.models', 'coorch.flows', 'coorch.tasks',"
        " 'coorch.instrument_agents', 'coorch.deployments', 'coorch.benchmarks'))]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_journaled_record_that_cannot_be_stored_is_set_aside_and_reported(url):
    store = CampaignStore.open(url, flush_every=1000, flush_interval_s=0)
    assert store.append_measurement(syn.measurement(0))
    # the modality has no group yet, so this one cannot be checked until consolidation
    odd = syn.measurement(1).model_copy(update={"signal": syn.raman_signal(np.zeros(512))})
    assert store.append_measurement(odd)
    store.flush()  # must not block the good record
    assert store.measurement_ids() == {"m-pfm_loop-0"}
    problems = store.verify()
    assert len(problems) == 1 and problems[0].startswith("rejected")
    # once the group exists, the same mistake is refused at append time
    with pytest.raises(ValueError):
        store.append_measurement(syn.measurement(2).model_copy(update={"signal": odd.signal}))


def test_process_exit_consolidates_for_plain_readers(url):
    """A writer that never calls close(): plain xarray still finds everything afterwards."""
    import subprocess
    import sys

    code = (
        "from coorch.storage import CampaignStore\n"
        "from coorch.benchmarks import fixtures as syn\n"
        f"s = CampaignStore.open({url!r}, flush_every=1000, flush_interval_s=60)\n"
        "for i in range(5):\n"
        "    s.append_measurement(syn.measurement(i))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert xr.open_zarr(url, group="pfm_loop").sizes["measurement"] == 5
