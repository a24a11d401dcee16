"""Theory in the loop: surrogate, calibration and simulation design on a problem with a known
answer (:mod:`theory_synthetic`: an LGD-shaped stand-in, a hidden theta and a discrepancy along
library y that the theory lacks)."""

from __future__ import annotations

import pickle

import gpytorch
import numpy as np
import pytest
import theory_synthetic as ts
import torch

from coorch.models.theory_design import initial_design, next_simulations
from coorch.models.theory_posterior import ParameterPosterior, infer_parameters
from coorch.models.theory_space import ParameterSpace
from coorch.models.theory_surrogate import TheorySurrogate, _ExactGP


def _surrogate(n_sim: int, seed: int) -> TheorySurrogate:
    design = initial_design(ts.SPACE, ts.S_RANGE, n_sim, seed)
    return TheorySurrogate.fit(
        design[:, 0], design[:, 1:], ts.simulate(design), ts.SPACE, ts.S_RANGE, seed=seed
    )


def _calibrated(n_sim: int, seed: int) -> tuple[TheorySurrogate, ParameterPosterior]:
    x, s, y = ts.observe(15, np.random.default_rng(seed))
    surrogate = _surrogate(n_sim, seed)
    return surrogate, infer_parameters(surrogate, x, s, y, bounds_mm=ts.BOUNDS_MM, seed=seed)


def test_parameter_space_scales_both_ways_and_draws_inside_the_box() -> None:
    theta = ts.SPACE.sobol(64, seed=3)
    assert theta.shape == (64, 2) and ts.SPACE.contains(theta).all()
    np.testing.assert_allclose(ts.SPACE.from_unit(ts.SPACE.to_unit(theta)), theta)
    np.testing.assert_allclose(ts.SPACE.to_unit(ts.HIDDEN[None]), [[0.055 / 0.12, 0.25 / 0.6]])
    design = initial_design(ts.SPACE, ts.S_RANGE, 32, seed=1)
    assert design.shape == (32, 3) and len(np.unique(design, axis=0)) == 32
    # A longer design extends a shorter one: a campaign plans its start in pieces.
    np.testing.assert_array_equal(initial_design(ts.SPACE, ts.S_RANGE, 12, seed=1), design[:12])
    assert design[:, 0].min() >= 0.0 and design[:, 0].max() <= 0.2
    with pytest.raises(ValueError, match="bounds"):
        ParameterSpace(("a", "b"), np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        ts.SPACE.to_unit(np.zeros((3, 3)))


def test_parameter_space_reads_the_lgd_parameters() -> None:
    lgd = pytest.importorskip("coorch.lgd")
    if not hasattr(lgd, "PARAMETERS"):
        pytest.skip("coorch.lgd has no PARAMETERS yet")
    space = ParameterSpace.from_lgd()
    assert space.names == tuple(p.name for p in lgd.PARAMETERS)
    assert space.bounds.tolist() == [[p.low, p.high] for p in lgd.PARAMETERS]


def test_surrogate_predicts_as_gpytorch_does_with_its_hyperparameters() -> None:
    surrogate = _surrogate(40, seed=0)
    rng = np.random.default_rng(1)
    s, theta = rng.uniform(0.0, 0.2, 7), ts.SPACE.sobol(7, seed=2)
    mean, var = surrogate.predict(s, theta)
    h = surrogate.hyper
    y = torch.as_tensor((surrogate.y - surrogate.y_mean) / surrogate.y_std)
    model = _ExactGP(surrogate.u, y).double()
    model.mean_module.constant = h["constant"]
    model.covar_module.outputscale = h["outputscale"]
    kern_s, kern_t = model.covar_module.base_kernel.kernels
    kern_s.lengthscale, kern_t.lengthscale = h["lengthscale"][:1], h["lengthscale"][1:]
    model.likelihood.noise = h["noise"] + 1e-9
    model.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        f = model(surrogate.unit_inputs(s, theta))
    np.testing.assert_allclose(mean, f.mean.numpy() * surrogate.y_std + surrogate.y_mean)
    np.testing.assert_allclose(var, f.variance.numpy() * surrogate.y_std**2, atol=1e-6)
    # The grids the calibration uses agree with pairwise prediction.
    grid_mean = surrogate.mean_grid(s[:3], theta)
    grid_var = surrogate.var_grid(s[:3], theta)
    grid_cov = surrogate.covariance_grid(s[:3], theta)
    pm, pv = surrogate.predict(np.repeat(s[:3], 7), np.tile(theta, (3, 1)))
    np.testing.assert_allclose(grid_mean.ravel(), pm, atol=1e-9)
    np.testing.assert_allclose(grid_var.ravel(), pv, atol=1e-6)
    np.testing.assert_allclose(np.diagonal(grid_cov, axis1=1, axis2=2).T, grid_var, atol=1e-6)
    assert surrogate.n == 40 and surrogate.version.startswith("theory-gp/n=40/")


def test_surrogate_interpolates_the_simulations_it_was_fitted_to() -> None:
    design = initial_design(ts.SPACE, ts.S_RANGE, 60, seed=4)
    y = ts.simulate(design)
    surrogate = TheorySurrogate.fit(design[:, 0], design[:, 1:], y, ts.SPACE, ts.S_RANGE)
    mean, var = surrogate.predict(design[:, 0], design[:, 1:])
    assert np.max(np.abs(mean - y)) < 0.01 * np.ptp(y)
    assert np.sqrt(np.max(var)) < 0.01 * np.ptp(y)
    away = initial_design(ts.SPACE, ts.S_RANGE, 200, seed=9)
    m_away, v_away = surrogate.predict(away[:, 0], away[:, 1:])
    assert np.median(v_away) > 4 * np.median(var)
    z2 = (m_away - ts.simulate(away)) ** 2 / v_away
    assert 0.1 < np.mean(z2) < 5.0  # its variance is the size of its errors
    with pytest.raises(ValueError, match="same length"):
        TheorySurrogate.fit(design[:5, 0], design[:4, 1:], y[:5], ts.SPACE, ts.S_RANGE)


def test_interval_contains_the_hidden_theta_and_narrows_with_more_simulations() -> None:
    _, half = _calibrated(40, seed=7)
    _, full = _calibrated(80, seed=7)
    for post in (half, full):
        ci = post.interval(0.9)
        assert np.all(ci[:, 0] <= ts.HIDDEN) and np.all(ci[:, 1] >= ts.HIDDEN), ci
        assert post.effective_samples > 20
    width_half = np.diff(half.interval(0.9), axis=1).ravel()
    width_full = np.diff(full.interval(0.9), axis=1).ravel()
    assert np.all(width_full < width_half), (width_half, width_full)
    summary = full.summary()
    assert set(summary) == {"s_c", "depol"}
    assert summary["s_c"]["lo"] < summary["s_c"]["mean"] < summary["s_c"]["hi"]
    np.testing.assert_allclose(full.weights.sum(), 1.0)


def test_predict_beats_the_theory_alone_where_the_discrepancy_is() -> None:
    surrogate, post = _calibrated(60, seed=0)
    gx, gy = np.meshgrid(np.linspace(0.0, 6.0, 25), [0.0, 0.2, 1.8, 2.0])  # far from y = 1
    x = np.column_stack([gx.ravel(), gy.ravel()])
    s = ts.composition(x[:, 0])
    truth = ts.truth(x)
    mean, var = post.predict(x, s)
    theory, _ = surrogate.predict(s, np.broadcast_to(post.mean(), (len(s), 2)))
    rmse = np.sqrt(np.mean((mean - truth) ** 2))
    rmse_theory = np.sqrt(np.mean((theory - truth) ** 2))
    assert rmse < 0.6 * rmse_theory, (rmse, rmse_theory)
    assert np.all(var > 0) and np.mean((mean - truth) ** 2 / var) < 5.0
    d_mean, d_sd = post.discrepancy(x)
    assert np.corrcoef(d_mean, ts.discrepancy(x))[0, 1] > 0.8 and np.all(d_sd > 0)
    # Plausible thetas disagree most where the film is ferroelectric, not past s_c.
    disagreement = post.disagreement(np.array([0.02, 0.19]))
    assert disagreement[0] > 10 * disagreement[1]


def test_next_simulations_are_distinct_in_the_box_and_near_the_posterior() -> None:
    surrogate, post = _calibrated(40, seed=1)
    s_grid = np.linspace(0.0, 0.2, 41)
    rows = next_simulations(surrogate, post, s_grid, 8, rng=np.random.default_rng(0), explore=0)
    assert rows.shape == (8, 3) and len(np.unique(rows, axis=0)) == 8
    assert np.isin(rows[:, 0], s_grid).all() and ts.SPACE.contains(rows[:, 1:]).all()
    # Plausible picks sit where the posterior is: closer to its mean than the box's draws.
    centre = ts.SPACE.to_unit(post.mean()[None])
    near = np.linalg.norm(ts.SPACE.to_unit(rows[:, 1:]) - centre, axis=1)
    box = np.linalg.norm(ts.SPACE.to_unit(ts.SPACE.sobol(256, seed=5)) - centre, axis=1)
    assert np.median(near) < 0.5 * np.median(box), (near, np.median(box))
    # A second batch with the first pending does not repeat it.
    more = next_simulations(
        surrogate, post, s_grid, 8, pending=rows, rng=np.random.default_rng(0), explore=0.5
    )
    assert len(np.unique(np.vstack([rows, more]), axis=0)) == 16
    assert ts.SPACE.contains(more[:, 1:]).all()


def test_infer_parameters_refuses_mismatched_shapes() -> None:
    surrogate = _surrogate(20, seed=0)
    x, s, y = ts.observe(6, np.random.default_rng(0))
    bounds = ts.BOUNDS_MM
    with pytest.raises(ValueError, match="x_obs must be"):
        infer_parameters(surrogate, x[:, :1], s, y, bounds_mm=bounds)
    with pytest.raises(ValueError, match="s_obs and y_obs"):
        infer_parameters(surrogate, x, s[:5], y, bounds_mm=bounds)
    with pytest.raises(ValueError, match="s_obs and y_obs"):
        infer_parameters(surrogate, x, s, y[:, None], bounds_mm=bounds)
    with pytest.raises(ValueError, match="bounds_mm"):
        infer_parameters(surrogate, x, s, y, bounds_mm=bounds.ravel())
    with pytest.raises(ValueError, match=r"theta must be \(n, 2\)"):
        infer_parameters(surrogate, x, s, y, bounds_mm=bounds, n_theta=np.zeros((10, 3)))
    grid = np.stack(np.meshgrid(np.linspace(0.08, 0.2, 16), np.linspace(0, 0.6, 8)), -1)
    post = infer_parameters(surrogate, x, s, y, bounds_mm=bounds, n_theta=grid.reshape(-1, 2))
    assert post.thetas.shape == (128, 2)
    clone = pickle.loads(pickle.dumps(post))  # ships to and from Dask workers
    np.testing.assert_allclose(clone.predict(x, s)[0], post.predict(x, s)[0])


def test_refined_weights_agree_with_a_dense_grid() -> None:
    """A coarse Sobol set (256) refined where the posterior sits gives the posterior a dense
    grid (121 x 121) gives: the refinement's importance weights are exact, not a heuristic."""
    x, s, y = ts.observe(15, np.random.default_rng(1))
    surrogate = _surrogate(80, seed=1)
    refined = infer_parameters(surrogate, x, s, y, bounds_mm=ts.BOUNDS_MM, n_theta=256)
    grid = np.stack(np.meshgrid(np.linspace(0.08, 0.2, 121), np.linspace(0, 0.6, 121)), -1)
    dense = infer_parameters(
        surrogate, x, s, y, bounds_mm=ts.BOUNDS_MM, n_theta=grid.reshape(-1, 2)
    )
    assert len(refined.thetas) == 256 + 128  # the refinement ran
    scale = ts.SPACE.width
    np.testing.assert_allclose(refined.mean() / scale, dense.mean() / scale, atol=0.02)
    # interval ends agree to 8 % of the prior's width: the Monte Carlo error of 384 weighted
    # points, and the surrogate's fit moves with the BLAS's rounding (0.055 after other test
    # modules in one process, 0.03 alone)
    np.testing.assert_allclose(
        refined.interval() / scale[:, None], dense.interval() / scale[:, None], atol=0.08
    )
