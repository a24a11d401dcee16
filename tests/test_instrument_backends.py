"""Backend specifics the conformance suite cannot know: replay, twin physics, CLI, layers."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from shared_data import REPLAY_FILE

from coorch.instrument_agents.client import InstrumentClient
from coorch.instrument_agents.launch import serve_driver
from coorch.instrument_agents.replay import ReplayDriver, replay_positions
from coorch.instrument_agents.twins import make_twin
from coorch.net import free_port, wait_until_healthy

needs_data = pytest.mark.skipif(not REPLAY_FILE.exists(), reason="replay data not present")
TOKEN = "backend-token"


@needs_data
def test_replay_answers_descriptor_of_nearest_position_over_http():
    ds = xr.open_dataset(REPLAY_FILE)
    pos = replay_positions(REPLAY_FILE)
    assert pos.shape == (ds.sizes["position"], 2)
    assert pos[1, 0] - pos[0, 0] == pytest.approx(0.1) and np.all(pos[:, 1] == 1.0)
    driver = ReplayDriver(REPLAY_FILE)
    assert [m.name for m in driver.describe().modalities] == ["raman", "beps_polarization"]
    with serve_driver(driver, token=TOKEN) as agent, InstrumentClient(agent.url, TOKEN) as c:
        for p in (0, 17, 93):
            x, y = pos[p]
            c.move(x + 0.03, y + 0.4)  # off-grid: the nearest measured position answers
            for mi, name in enumerate(["raman", "beps_polarization"]):
                m = c.measure(name)
                assert m.signal.dims == ["latent"]
                np.testing.assert_allclose(m.signal.array(), ds["descriptor"].values[mi, p])
            assert c.status()["position_index"] == p


@needs_data
def test_replay_noise_and_modality_selection():
    d = ReplayDriver(REPLAY_FILE, modality="raman", noise=0.05, seed=1)
    assert [m.name for m in d.describe().modalities] == ["raman"]
    d.move(*d.library_positions()[10])
    vals = np.array([d.measure("raman", {}).array() for _ in range(200)])
    np.testing.assert_allclose(
        vals.mean(0), d.noiseless("raman", *d.library_positions()[10]), atol=0.02
    )
    assert vals.std(0) == pytest.approx([0.05, 0.05], rel=0.2)
    with pytest.raises(KeyError):
        ReplayDriver(REPLAY_FILE, modality="afm")


def test_replay_reads_any_dataset_with_position_coords(tmp_path):
    x = np.array([0.0, 1.0, 2.0])
    ds = xr.Dataset(
        {"loop": (("position", "bias"), np.arange(12.0).reshape(3, 4), {"units": "pm/V"})},
        coords={
            "library_x": ("position", x),
            "library_y": ("position", x * 0),
            "bias": np.linspace(-1, 1, 4),
        },
    )
    path = tmp_path / "loops.nc"
    ds.to_netcdf(path)
    d = ReplayDriver(path)
    spec = d.describe().modality("loop")
    assert spec.dims == ["bias"] and spec.shape == [4] and spec.units == "pm/V"
    d.move(1.9, 0.0)
    assert d.measure("loop", {}).array().tolist() == [8.0, 9.0, 10.0, 11.0]


def test_wds_counting_noise_is_unbiased_and_poisson_like():
    twin = make_twin("wds", seed=5)
    twin.move(*twin.frame.to_stage(7.5, 1.0))
    vals = np.array([twin.measure("wds", {}).array() for _ in range(300)])
    truth = twin.noiseless("wds", 7.5, 1.0)
    np.testing.assert_allclose(vals.mean(0), truth, rtol=0.02)
    sm = vals[:, 2]  # element order Bi, Fe, Sm, O
    assert 0.01 < sm.std() / sm.mean() < 0.1
    np.testing.assert_allclose(vals.sum(1), 100.0)


def test_stem_texture_and_eels_change_with_phase():
    twin = make_twin("stem")
    r, o = twin.noiseless("stem_haadf", 2.0, 1.0), twin.noiseless("stem_haadf", 9.5, 1.0)
    assert r.shape == o.shape == (32, 32)
    ys = np.linspace(0.0, 2.0, 9)  # average over patches: each has its own domain walls
    bright_r = np.mean([twin.noiseless("stem_haadf", 2.0, y).mean() for y in ys])
    bright_o = np.mean([twin.noiseless("stem_haadf", 9.5, y).mean() for y in ys])
    assert bright_r > bright_o  # heavier Bi columns give brighter HAADF than Sm-rich ones
    np.testing.assert_array_equal(r, twin.noiseless("stem_haadf", 2.0, 1.0))  # same spot
    e_r, e_o = twin.noiseless("eels", 2.0, 1.0), twin.noiseless("eels", 9.5, 1.0)
    assert e_r.shape == (256,) and not np.allclose(e_r, e_o)


def test_alscbn_twins_render_every_modality():
    for inst in ("afm", "raman", "wds", "stem"):
        twin = make_twin(inst, "alscbn", seed=2)
        for name, mode in twin.modes.items():
            sig = twin.measure(name, {})
            assert list(sig.array().shape) == mode.shape and np.isfinite(sig.array()).all()


def test_instrument_agents_never_import_heavy_layers():
    code = (
        "import sys; import coorch.instrument_agents.cli, coorch.instrument_agents.launch;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','gpytorch','prefect')"
        " or m.startswith(('coorch.models','coorch.storage','coorch.flows','coorch.tasks'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_server_knows_drivers_only_through_the_protocol():
    code = (
        "import sys; import coorch.instrument_agents.server;"
        "bad=[m for m in ('faults','twins','twin_base','replay','libraries')"
        " if 'coorch.instrument_agents.'+m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_serves_a_twin_until_interrupted(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("cli-secret\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coorch.instrument_agents.cli",
            "serve",
            "--instrument",
            "raman",
            "--port",
            str(port),
            "--token-file",
            str(tok),
            "--time-scale",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(
                f"{url}/v1/health", timeout_s=30, interval_s=0.1, alive=lambda: proc.poll() is None
            )
        except RuntimeError:
            pytest.fail(f"the agent exited: {proc.stderr.read()}")
        with InstrumentClient(url, "cli-secret") as c:
            assert c.measure("raman").signal.array().shape == (512,)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
