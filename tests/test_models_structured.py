"""Structured GP: the physics mean recovers the phase boundary and beats a plain GP when sparse."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from coorch.models.structured import fit_structured_gp

CENTRE, WIDTH, AMPLITUDE, OFFSET = 0.135, 0.015, 1.0, 0.2  # Sm fraction at the MPB


def _peak(sm: np.ndarray) -> np.ndarray:
    """Piezoresponse vs Sm fraction, peaked at the morphotropic phase boundary."""
    return OFFSET + AMPLITUDE * np.exp(-0.5 * ((sm - CENTRE) / WIDTH) ** 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_phase_boundary_from_15_noisy_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sm = np.sort(rng.uniform(0.0, 0.2, 15))
    y = _peak(sm) + rng.normal(0, 0.05, 15)
    model = fit_structured_gp(sm[:, None], y, mean="peak", seed=seed)
    params = model.physics_params()
    assert abs(params["center"] - CENTRE) < 0.005  # 0.5 % Sm
    assert params["width"] == pytest.approx(WIDTH, rel=0.5)
    assert params["amplitude"] == pytest.approx(AMPLITUDE, rel=0.5)
    mean, var = model.predict(np.array([[CENTRE], [0.05]]))
    assert mean[0] > mean[1] + 0.5
    assert np.all(var >= 0)


def test_physics_input_among_several_columns_in_mm() -> None:
    """Composition axis given as stage position (mm) beside a second, irrelevant coordinate."""
    rng = np.random.default_rng(4)
    pos = np.column_stack([rng.uniform(0.0, 10.0, 15), rng.uniform(0.0, 5.0, 15)])
    sm = pos[:, 0] * 0.02  # 0-20 % Sm over 10 mm: the boundary sits at 6.75 mm
    y = _peak(sm) + rng.normal(0, 0.05, 15)
    model = fit_structured_gp(pos, y, feature_index=0, bounds=np.array([[0, 0], [10, 5]]))
    assert abs(model.physics_params()["center"] - 6.75) < 0.25
    mean, var = model.predict(pos[:3])
    assert mean.shape == var.shape == (3,)
    clone = pickle.loads(pickle.dumps(model))  # ships to and from Dask workers
    np.testing.assert_allclose(clone.predict(pos[:3])[0], mean)


def test_beats_plain_gp_on_sparse_data_away_from_the_data() -> None:
    rng = np.random.default_rng(2)
    sm = np.linspace(0.0, 0.2, 9) + rng.uniform(-0.005, 0.005, 9)
    y = _peak(sm) + rng.normal(0, 0.03, 9)
    grid = np.linspace(0.0, 0.2, 401)
    away = grid[np.min(np.abs(grid[:, None] - sm[None, :]), axis=1) > 0.005]
    truth = _peak(away)
    physics = fit_structured_gp(sm[:, None], y, mean="peak", seed=0)
    plain = fit_structured_gp(sm[:, None], y, mean="constant", seed=0)
    rmse_physics = np.sqrt(np.mean((physics.predict(away[:, None])[0] - truth) ** 2))
    rmse_plain = np.sqrt(np.mean((plain.predict(away[:, None])[0] - truth) ** 2))
    assert rmse_physics < 0.6 * rmse_plain
    assert set(plain.physics_params()) == {"offset"}


def test_step_mean_locates_a_stepwise_change() -> None:
    """A Raman-mode position that changes across the boundary (rhombohedral -> orthorhombic)."""
    rng = np.random.default_rng(5)
    sm = np.sort(rng.uniform(0.0, 0.2, 15))
    y = 520.0 + 8.0 / (1 + np.exp(-(sm - CENTRE) / 0.005)) + rng.normal(0, 0.4, 15)
    params = fit_structured_gp(sm, y, mean="step").physics_params()
    assert abs(params["center"] - CENTRE) < 0.01
    assert params["amplitude"] == pytest.approx(8.0, rel=0.3)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_structured_gp(np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(ValueError):
        fit_structured_gp(np.zeros((5, 1)), np.zeros(5), feature_index=1)
    with pytest.raises(ValueError):
        fit_structured_gp(np.zeros((5, 1)), np.zeros(5), mean="bogus")  # type: ignore[arg-type]


def test_the_centre_interval_spans_the_gap_the_data_leave_at_the_step() -> None:
    """Values on both sides of an unmeasured stretch: the 90 % interval of the centre holds the
    true step and spans most of the stretch; two more values inside it pin the step to a
    fraction of that. A constant mean has no centre; a level outside (0, 1) is refused."""
    rng = np.random.default_rng(0)
    step = lambda v: np.where(v < 6.2, 1.0, 0.1)  # noqa: E731
    bounds = np.array([[0.0], [10.0]])
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0])
    y = step(x) + rng.normal(0, 0.05, len(x))
    lo, hi = fit_structured_gp(x, y, mean="step", bounds=bounds).center_interval(0.9)
    assert 5.0 <= lo < 6.2 < hi <= 8.0 and hi - lo > 1.0
    x2 = np.append(x, [6.0, 6.5])
    y2 = np.append(y, step(x2[-2:]) + rng.normal(0, 0.05, 2))
    lo2, hi2 = fit_structured_gp(x2, y2, mean="step", bounds=bounds).center_interval(0.9)
    assert lo2 < 6.2 < hi2 and hi2 - lo2 < 0.5 * (hi - lo)
    flat = fit_structured_gp(x, y, mean="constant", bounds=bounds)
    assert np.isnan(flat.center_interval()).all()
    with pytest.raises(ValueError):
        flat.center_interval(1.0)
