"""The LGD simulator (coorch.lgd) and the twin library whose ground truth it is (smbfo-lgd).

The simulator is the theory of a co-navigation campaign: its parameters must be identifiable
from the loop openings the campaign measures (``models.descriptors.loop_opening``), so these
tests read the simulator through that descriptor.
"""

from __future__ import annotations

import numpy as np
import pytest

from coorch import lgd
from coorch.instrument_agents.libraries import LIBRARY_NAMES, LGDLibrary, get_library
from coorch.instrument_agents.twins import N_BIAS, make_twin
from coorch.models.descriptors import loop_opening
from coorch.records import Signal

BIAS = lgd.default_bias()


def opening(loops: np.ndarray) -> np.ndarray:
    """The campaign's descriptor of each loop in ``loops`` (..., 2, nb)."""
    flat = loops.reshape(-1, 2, loops.shape[-1])
    coords = {"branch": ["forward", "reverse"], "bias": BIAS}
    out = [
        loop_opening(Signal.from_array("pfm_loop", ["branch", "bias"], loop, coords=coords))[0]
        for loop in flat
    ]
    return np.array(out).reshape(loops.shape[:-2])


@pytest.fixture(scope="module")
def along_s() -> tuple[np.ndarray, np.ndarray]:
    """Openings at the hidden parameters on a Sm grid through the boundary."""
    s = np.array([0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.115, 0.13, 0.15, 0.18])
    return s, opening(lgd.simulate_many(s, lgd.HIDDEN))


def test_parameters_are_s_c_and_depol_with_the_hidden_truth_inside_their_bounds():
    assert [p.name for p in lgd.PARAMETERS] == ["s_c", "depol"]
    for p in lgd.PARAMETERS:
        assert p.low < lgd.HIDDEN[p.name] < p.high
    low, high = lgd.PARAMETERS[1].low, lgd.PARAMETERS[1].high
    assert abs(lgd.HIDDEN["depol"] - (low + high) / 2) > 0.1 * (high - low)  # not the centre
    assert lgd.HIDDEN["s_c"] == get_library("smbfo").s_boundary
    assert lgd.default_bias().shape == (N_BIAS,)


def test_loops_are_hysteretic_below_s_c_and_closed_above(along_s):
    s, op = along_s
    below, above = op[s < 0.1], op[s > lgd.HIDDEN["s_c"]]
    assert below.min() > 0.1 * op[0] > 10.0
    assert np.abs(above).max() < 0.005 * op[0]


def test_opening_falls_monotonically_and_vanishes_continuously_at_s_c(along_s):
    s, op = along_s
    ferro = op[s < lgd.HIDDEN["s_c"]]
    assert np.all(np.diff(ferro) < 0)
    assert ferro[-1] < 0.02 * ferro[0]  # 0.005 below s_c: almost closed, no jump


def test_s_c_sets_where_the_loops_close():
    s = np.full(2, 0.12)
    op = opening(lgd.simulate_many(s, np.array([[0.10, 0.22], [0.17, 0.22]])))
    assert abs(op[0]) < 1.0 < 10.0 < op[1]


def test_depolarisation_shears_the_loop_and_shrinks_its_opening():
    depol = np.array([0.0, lgd.HIDDEN["depol"], 0.6])
    theta = np.column_stack([np.full(3, lgd.HIDDEN["s_c"]), depol])
    loops = lgd.simulate_many(np.full(3, 0.02), theta)
    op = opening(loops)
    assert op[0] > 1.1 * op[1] and op[1] > 1.5 * op[2] > 50.0  # still a loop at the top bound
    steepest = np.max(np.diff(loops[:, 0], axis=-1), axis=-1)  # forward branch, pm/V per step
    assert steepest[0] > steepest[1] > steepest[2]


def test_simulate_is_one_row_of_simulate_many():
    s = np.array([0.03, 0.11])
    theta = np.array([[0.12, 0.1], [0.15, 0.4]])
    many = lgd.simulate_many(s, theta)
    assert many.shape == (2, 2, N_BIAS)
    one = lgd.simulate(0.11, {"s_c": 0.15, "depol": 0.4})
    np.testing.assert_allclose(one, many[1], rtol=1e-12, atol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(KeyError, match="depol"):
        lgd.simulate(0.1, {"s_c": 0.13})
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        lgd.simulate_many(np.array([0.1, 0.2]), np.array([0.13, 0.2]))
    with pytest.raises(ValueError, match="increasing"):
        lgd.simulate(0.1, lgd.HIDDEN, bias_v=BIAS[::-1])


def test_coercive_voltage_is_zero_for_closed_loops(along_s):
    s, _ = along_s
    vc = lgd.coercive_voltage(lgd.simulate_many(s[[0, -1]], lgd.HIDDEN), BIAS)
    assert 2.0 < vc[0] < 8.0 and vc[1] < 0.05


def test_lgd_library_is_registered_for_every_twin():
    assert "smbfo-lgd" in LIBRARY_NAMES
    assert isinstance(get_library("smbfo-lgd"), LGDLibrary)
    for kind in ("afm", "raman", "wds", "stem"):
        assert make_twin(kind, "smbfo-lgd").describe().library == "smbfo-lgd"


def test_lgd_twin_loop_is_the_simulator_at_hidden_times_the_missing_clamping():
    twin = make_twin("afm", "smbfo-lgd")
    lib = twin.library
    for x, y in [(2.5, 0.0), (5.0, 1.0), (5.0, 2.0)]:  # Sm 0.05 and 0.10: nodes of its table
        expected = lgd.simulate(float(lib.sm(x, y)), lgd.HIDDEN) * float(lib.clamping(x, y))
        np.testing.assert_allclose(twin.noiseless("pfm_loop", x, y), expected, rtol=1e-9)
    clamp = lib.clamping(np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 2.0]))
    assert clamp.tolist() == pytest.approx([0.92, 0.92, 1.08])  # along y only, 16 % across


def test_lgd_twin_shows_the_boundary_at_the_hidden_s_c_in_every_modality():
    from coorch.tasks.report import ground_truth

    lib = get_library("smbfo-lgd")
    x_c = lgd.HIDDEN["s_c"] / lib.s_max * 10.0  # mm along x
    assert lib.polar_fraction(x_c, 1.0) == pytest.approx(0.5)
    twins = {k: make_twin(k, "smbfo-lgd") for k in ("afm", "raman")}
    truth = ground_truth(
        twins, {"afm": "pfm_loop", "raman": "raman"}, np.array(lib.extent), draws=0
    )
    x, op = truth.grid[:, 0], truth.values[:, 0]
    assert op[x < x_c - 2.0].min() > 10.0 and np.abs(op[x > x_c + 0.5]).max() < 1.0
    raman = truth.values[:, 1]
    assert raman[x > x_c + 1.0].min() > raman[x < x_c - 1.0].max()
