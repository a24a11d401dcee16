"""The instrument protocol over real HTTP on 127.0.0.1: shapes, auth, limits, retry, lease.

Every test talks to a uvicorn server started by ``start_twin`` (no HTTP mocks); each server is
stopped at the end of its fixture.
"""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pytest

from coorch.instrument_agents.client import (
    AuthError,
    InstrumentClient,
    InstrumentError,
    LeaseConflict,
    OutOfLimits,
)
from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.launch import serve_driver, start_twin
from coorch.instrument_agents.libraries import get_library
from coorch.instrument_agents.protocol import Driver, Resettable
from coorch.instrument_agents.twins import make_twin

# One shared plain-http client: building an httpx.Client loads the CA bundle (~0.1 s).
HTTP = httpx.Client(verify=False, timeout=10)
TOKEN, RO = "ctl-token", "ro-token"


@pytest.fixture(scope="module")
def afm():
    with start_twin("afm", "smbfo", token=TOKEN, readonly_token=RO, seed=3) as agent:
        yield agent


@pytest.fixture(scope="module")
def raman():
    with start_twin("raman", "smbfo", token=TOKEN, readonly_token=RO, seed=4) as agent:
        yield agent


@pytest.fixture
def client(afm):
    with InstrumentClient(afm.url, TOKEN, client_id="tester", timeout_s=5) as c:
        yield c
        c.release_lease()


def test_pfm_loop_over_http_has_documented_shape(afm, client):
    moved = client.move(6.5, 1.0)
    m = client.measure("pfm_loop")
    sig = m.signal
    assert sig.dims == ["branch", "bias"]
    assert sig.array().shape == (2, 64)
    assert sig.units == "pm/V" and sig.coord_units["bias"] == "V"
    assert len(sig.coords["bias"]) == 64 and sig.coords["branch"] == ["forward", "reverse"]
    assert np.isfinite(sig.array()).all()
    assert m.library_x == pytest.approx(6.5) and m.library_y == pytest.approx(1.0)
    assert m.stage_x == pytest.approx(moved["stage_x"])
    assert m.instrument == "afm-twin" and m.sample == "smbfo"
    topo = client.measure("afm_topo").signal
    assert topo.dims == ["y", "x"] and topo.array().shape == (32, 32) and topo.units == "nm"


def test_raman_spectrum_over_http(raman):
    with InstrumentClient(raman.url, TOKEN) as c:
        sig = c.measure("raman").signal
    assert sig.dims == ["wavenumber"] and sig.array().shape == (512,)
    assert sig.units == "counts" and sig.coord_units["wavenumber"] == "cm^-1"
    wn = np.asarray(sig.coords["wavenumber"])
    assert wn[0] == pytest.approx(100) and wn[-1] == pytest.approx(800)


def test_health_needs_no_token_and_others_do(afm):
    assert HTTP.get(f"{afm.url}/v1/health").status_code == 200
    for path in ("/v1/describe", "/v1/status"):
        assert HTTP.get(f"{afm.url}{path}").status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert HTTP.get(f"{afm.url}{path}", headers=bad).status_code == 401
        ro = {"Authorization": f"Bearer {RO}"}
        assert HTTP.get(f"{afm.url}{path}", headers=ro).status_code == 200
    r = HTTP.post(f"{afm.url}/v1/move", json={"x": 1, "y": 1})
    assert r.status_code == 401


def test_readonly_token_cannot_control(afm):
    with InstrumentClient(afm.url, RO, max_retries=0) as ro:
        assert ro.describe().kind == "afm"
        assert "stage_x" in ro.status()
        for call in (
            lambda: ro.move(1, 1),
            lambda: ro.measure("pfm_loop"),
            lambda: ro.acquire_lease(),
            lambda: ro.load_sample("x"),
            ro.abort,
        ):
            with pytest.raises(AuthError) as exc:
                call()
            assert exc.value.status == 403


def test_out_of_limits_is_422_and_nothing_moves(afm, client):
    before = client.move(3.0, 1.0)
    for x, y, frame in [
        (500.0, 1.0, "library"),
        (3.0, -40.0, "library"),
        (0.0, 0.0, "stage"),
        (math.nan, 1.0, "library"),
    ]:
        with pytest.raises(OutOfLimits) as exc:
            client.move(x, y, frame=frame)
        assert exc.value.status == 422
        after = client.status()
        assert (after["stage_x"], after["stage_y"]) == (before["stage_x"], before["stage_y"])
    r = HTTP.post(
        f"{afm.url}/v1/move",
        content=b'{"x": NaN, "y": 1.0}',
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "X-Lease-Id": client.lease_id,  # the lease the client took for its moves
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 422
    assert client.status()["stage_x"] == before["stage_x"]


def test_move_in_library_frame_lands_in_stage_frame(afm, client):
    frame = afm.driver.frame
    out = client.move(2.0, 0.5, frame="library")
    sx, sy = frame.to_stage(2.0, 0.5)
    assert (out["stage_x"], out["stage_y"]) == pytest.approx((sx, sy))
    assert (out["library_x"], out["library_y"]) == pytest.approx((2.0, 0.5))
    assert abs(out["stage_x"] - 2.0) > 1.0  # the twin's stage frame really differs
    back = client.move(out["stage_x"], out["stage_y"], frame="stage")
    assert back["library_x"] == pytest.approx(2.0)


def test_retry_with_same_request_id_returns_first_result(afm, client):
    n0 = afm.driver.n_measured
    first = client.measure("pfm_loop", request_id="req-idem-1")
    again = client.measure("pfm_loop", request_id="req-idem-1")
    assert again == first
    assert first.measurement_id == "req-idem-1"
    assert afm.driver.n_measured == n0 + 1
    other = client.measure("pfm_loop", request_id="req-idem-2")
    assert other.signal.values != first.signal.values  # a new id is a new acquisition
    assert afm.driver.n_measured == n0 + 2
    r = HTTP.post(
        f"{afm.url}/v1/measure",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Lease-Id": client.lease_id},
        json={"modality": "afm_topo", "request_id": "req-idem-1"},
    )
    assert r.status_code == 422 and r.json()["error"] == "request_id_reused"


def test_lease_blocks_other_clients_until_release(afm):
    with (
        InstrumentClient(afm.url, TOKEN, client_id="alice") as a,
        InstrumentClient(afm.url, TOKEN, client_id="bob", max_retries=0) as b,
    ):
        a.acquire_lease(ttl_s=30)
        assert b.status()["lease"]["holder"] == "alice"  # reading is always allowed
        for call in (
            lambda: b.move(1, 1),
            lambda: b.measure("pfm_loop"),
            lambda: b.acquire_lease(),
            b.release_lease,
        ):
            with pytest.raises(LeaseConflict) as exc:
                call()
            assert exc.value.status == 409
        a.measure("pfm_loop")  # the holder works normally
        a.release_lease()
        b.move(1.0, 1.0)
        b.acquire_lease(ttl_s=0.5)
        with pytest.raises(LeaseConflict):
            a.move(2.0, 1.0)
        time.sleep(0.6)  # bob's lease expires without activity
        a.move(2.0, 1.0)


def test_abort_is_allowed_to_any_controller(afm):
    with (
        InstrumentClient(afm.url, TOKEN, client_id="alice") as a,
        InstrumentClient(afm.url, TOKEN, client_id="bob") as b,
    ):
        a.acquire_lease()
        b.abort()  # an emergency stop never waits for a lease
        a.release_lease()


def test_ground_truth_is_not_reachable_over_http(afm):
    paths = HTTP.get(f"{afm.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if "noise" in p or "truth" in p]
    assert set(paths) >= {
        "/v1/health",
        "/v1/describe",
        "/v1/status",
        "/v1/lease",
        "/v1/sample",
        "/v1/move",
        "/v1/measure",
        "/v1/abort",
    }


def test_start_stop_is_fast_and_leaves_nothing_running():
    t0 = time.perf_counter()
    agent = start_twin("raman", token=TOKEN)
    with InstrumentClient(agent.url, TOKEN) as c:
        c.measure("raman")
    agent.stop()
    assert time.perf_counter() - t0 < 3.0
    assert not agent.running
    with pytest.raises(httpx.ConnectError):  # nothing listens on its port any more
        HTTP.get(f"{agent.url}/v1/health")


class _NoReset:
    """The six Driver methods of a twin and nothing else (no ``reset``, no ``frame``)."""

    def __init__(self, twin):
        self._twin = twin

    def describe(self):
        return self._twin.describe()

    def status(self):
        return self._twin.status()

    def load_sample(self, sample_id):
        self._twin.load_sample(sample_id)

    def move(self, stage_x, stage_y):
        self._twin.move(stage_x, stage_y)

    def measure(self, modality, params):
        return self._twin.measure(modality, params)

    def abort(self):
        self._twin.abort()


def test_reset_is_an_optional_capability_checked_with_isinstance():
    twin = make_twin("raman")
    bare = _NoReset(twin)
    assert isinstance(twin, Driver) and isinstance(twin, Resettable)
    assert isinstance(bare, Driver) and not isinstance(bare, Resettable)
    with (
        serve_driver(bare, token=TOKEN) as agent,
        InstrumentClient(agent.url, TOKEN, max_retries=0) as c,
    ):
        assert c.measure("raman").signal.array().shape == (512,)
        with pytest.raises(InstrumentError) as err:
            c.reset()
        assert err.value.status == 501 and err.value.error == "not_supported"


def test_describe_reports_costs_and_limits(afm, client):
    d = client.describe()
    assert d.modality("pfm_loop").cost_s == 30.0 and d.modality("pfm_loop").shape == [2, 64]
    assert d.move_cost_s_per_mm > 0 and set(d.stage_limits) == {"x", "y"}
    assert d.library == "smbfo"


def test_time_scale_makes_the_twin_take_time():
    twin = make_twin("raman", time_scale=0.005)  # 20 s raman -> 0.1 s
    t0 = time.perf_counter()
    twin.measure("raman", {})
    assert 0.09 < time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------ frames and libraries


def test_affine_frame_fit_recovers_transform_and_reports_residual():
    true = AffineFrame.from_rotation(2.0, (12.0, -3.0), scale=1.001)
    lib = np.array([[0, 0], [10, 0], [10, 2], [0, 2], [5, 1]], float)
    stage = np.column_stack(true.to_stage(lib[:, 0], lib[:, 1]))
    fit = AffineFrame.fit(lib, stage)
    assert fit.residual_mm < 1e-9
    assert np.allclose(fit.matrix, true.matrix) and np.allclose(fit.offset, true.offset)
    x, y = fit.to_library(*fit.to_stage(3.3, 1.7))
    assert (x, y) == pytest.approx((3.3, 1.7))
    noisy = stage + np.random.default_rng(0).normal(0, 0.01, stage.shape)
    assert 0.001 < AffineFrame.fit(lib, noisy).residual_mm < 0.05
    with pytest.raises(ValueError):
        AffineFrame.fit(lib[:2], stage[:2])
    with pytest.raises(ValueError):
        AffineFrame.fit([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]])


def test_smbfo_ground_truth_has_boundary_peak():
    lib = get_library("smbfo")
    x = np.linspace(0, 10, 201)
    y = np.ones_like(x)
    sm = lib.composition(x, y)["Sm"]
    assert sm[0] == 0 and sm[-1] == pytest.approx(0.2)
    d = lib.piezo_amplitude(x, y)
    assert 0.125 < sm[np.argmax(d)] < 0.15
    vc = lib.coercive_voltage(x, y)
    assert vc[0] > vc[100] > vc[-1]
    assert lib.phase(x, y)[0] == 0 and lib.phase(x, y)[-1] == 1


def test_alscbn_has_a_ferroelectric_band():
    lib = get_library("alscbn")
    gx, gy = lib.grid(41, 41)
    comp = lib.composition(gx, gy)
    assert np.allclose(sum(comp.values()), 1.0)
    phases = set(np.unique(lib.phase(gx, gy)).tolist())
    assert phases == {0, 1, 2}
    at = lib.atomic_percent(gx, gy)
    assert np.allclose(sum(at.values()), 100.0)


def test_signals_change_across_the_phase_boundary():
    afm, raman = make_twin("afm"), make_twin("raman")

    def loop_area(x: float) -> float:
        loop = afm.noiseless("pfm_loop", x, 1.0)
        return float(np.abs(loop[1] - loop[0]).sum())

    assert loop_area(2.0) > 5 * loop_area(9.5)
    r, o = raman.noiseless("raman", 2.0, 1.0), raman.noiseless("raman", 9.5, 1.0)
    assert np.corrcoef(r, o)[0, 1] < 0.9


def test_twins_are_seeded():
    a, b = make_twin("raman", seed=7), make_twin("raman", seed=7)
    assert a.measure("raman", {}).values == b.measure("raman", {}).values
    c = make_twin("raman", seed=8)
    assert c.measure("raman", {}).values != make_twin("raman", seed=7).measure("raman", {}).values


def test_frame_fitted_from_twin_fiducials_over_http():
    with start_twin("raman", token=TOKEN) as agent, InstrumentClient(agent.url, TOKEN) as c:
        lib, stage = agent.driver.fiducials(noise_mm=0.002)
        fitted = c.set_frame(lib, stage)
        assert 0 < fitted["residual_mm"] < 0.01
        out = c.move(4.0, 1.0)
        sx, sy = agent.driver.frame.to_stage(4.0, 1.0)
        assert abs(out["stage_x"] - sx) < 0.01 and abs(out["stage_y"] - sy) < 0.01
        assert c.status()["frame"]["residual_mm"] == fitted["residual_mm"]
