"""The multi-task GP: one covariance for the fit and the decision path, the fit's pieces, the
incremental posterior against the exact one. The agents deciding with it: test_models_agent.py."""

import dataclasses

import numpy as np
import pytest
import torch
from shared_data import two_tasks as truth

from coorch.models.incremental import IncrementalPosterior, exact_posterior
from coorch.models.mtgp import default_hyperparameters, fit_hyperparameters, standardise
from coorch.models.mtgp_fit import (
    SINGULAR,
    HadamardMTGP,
    best_of_starts,
    hyperparameters,
    initialise,
    optimise,
)


def test_incremental_variance_equals_exact_posterior(fitted):
    x, t, y, h = fitted
    cand = np.linspace(0, 1, 50)[:, None]
    post = IncrementalPosterior(cand, h, capacity=4, dtype=np.float64)  # forces growth
    for xi, ti in zip(x, t, strict=True):
        post.add(xi, [ti])
    _, var = exact_posterior(h, x, t, y, cand)
    np.testing.assert_allclose(post.variance() * h.y_scale**2, var, rtol=1e-6, atol=1e-9)


def gpytorch_model(seed: int = 0):
    """The fit's gpytorch model on 2-D data from an elongated library (aspect 1 : 0.5), three
    tasks, its parameters scattered away from the fit's start; and the numpy hyperparameters
    read off it as the fit reads them."""
    rng = np.random.default_rng(seed)
    stretch = np.array([1.0, 0.5])
    x, t = rng.random((30, 2)), np.arange(30) % 3
    y = np.sin(3 * x[:, 0]) + x[:, 1] * t
    off, scale = standardise(y, t, 3)
    xi = torch.as_tensor(np.column_stack([x * stretch, t]))
    yt = torch.as_tensor((y - off[t]) / scale[t])
    torch.manual_seed(seed)
    model = HadamardMTGP(xi, yt, 3, rank=2, centre=torch.as_tensor(0.5 * stretch)).double()
    initialise(model, 1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, hyperparameters(model, stretch, off, scale, None), (x, t, y, xi)


def test_gpytorch_model_and_numpy_path_give_the_same_covariance():
    """One covariance definition (models/kernels.py): the model the fit differentiates and the
    decision path's numpy hyperparameters read off it agree on the prior covariance of every
    pair of rows, shared, own and trend parts included, in the fit's stretched frame."""
    model, h, (x, t, _, xi) = gpytorch_model()
    assert h.task_variance.min() > 0 and h.trend_weight.min() > 0
    with torch.no_grad():
        k_torch = model.forward(xi).covariance_matrix.numpy()
    np.testing.assert_allclose(k_torch, h.covariance(x, t, x, t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        np.diag(k_torch), h.prior_diagonal(x)[np.arange(len(t)), t, t], rtol=1e-10
    )


def test_exact_posterior_matches_gpytorch():
    model, h, (x, t, y, _) = gpytorch_model(1)
    q = np.random.default_rng(2).random((7, 2))
    mean, var = exact_posterior(h, x, t, y, q)
    model.eval()
    for task in range(3):
        qi = torch.as_tensor(np.column_stack([q * [1.0, 0.5], np.full(len(q), task)]))
        with torch.no_grad():
            out = model(qi)
        np.testing.assert_allclose(
            out.mean.numpy() * h.y_scale[task] + h.y_offset[task],
            mean[:, task],
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            out.variance.numpy() * h.y_scale[task] ** 2, var[:, task], rtol=1e-3, atol=1e-6
        )


def test_a_singular_step_falls_back_to_the_best_iterate():
    """A step to NaN hyperparameters mid-fit (linear_operator's NanError) does not end the
    fit: it goes on with Adam from the best iterate and ends there; a start that cannot even be
    evaluated raises."""
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from linear_operator.utils.errors import NanError

    model, _, (_, _, _, xi) = gpytorch_model()
    forward, calls = model.forward, []

    def flaky(inputs):
        calls.append(1)
        if len(calls) == 4:
            raise NanError("NaN hyperparameters")
        return forward(inputs)

    model.forward = flaky
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with torch.no_grad():
        start = -mll(model(xi), model.train_targets, xi).item()
    loss = optimise(mll, max_iter=10)
    assert len(calls) > 10  # Adam went on after the failure
    assert loss < start
    with torch.no_grad():
        assert -mll(model(xi), model.train_targets, xi).item() == pytest.approx(loss)
    calls.clear()
    model.forward = lambda inputs: (_ for _ in ()).throw(NanError("NaN from the start"))
    with pytest.raises(NanError):
        optimise(mll, max_iter=10)


def test_a_failed_start_is_skipped_and_the_better_map_wins():
    from linear_operator.utils.errors import NotPSDError

    def fit_from(trend):
        if trend == 0.0:
            raise NotPSDError("singular start")
        return -trend, f"model from {trend}"

    assert best_of_starts(fit_from, (0.2, 0.0, 3.0)) == "model from 3.0"
    with pytest.raises(SINGULAR):
        best_of_starts(fit_from, (0.0,))


def test_fit_learns_task_coupling(fitted):
    *_, h = fitted
    assert h.correlation()[0, 1] > 0.5


def test_gp_error_falls_as_measurements_are_added(fitted):
    *_, h = fitted
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 1, 200)[:, None]
    errors = []
    for n in (5, 15, 40):
        x = rng.random((n, 1))
        t = np.arange(n) % 2
        y = truth(x[:, 0])[np.arange(n), t]
        mean, _ = exact_posterior(h, x, t, y, grid)
        errors.append(np.sqrt(((mean - truth(grid[:, 0])) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_each_task_keeps_its_own_smoothness():
    """A smooth task and a rough one: the own parts learn a long and a short lengthscale
    (the plain ICM would force one lengthscale on both)."""
    rng = np.random.default_rng(2)
    x = rng.random((60, 1))
    t = np.arange(60) % 2
    smooth, rough = 2 * x[:, 0], np.sin(25 * x[:, 0])
    y = np.where(t == 0, smooth, rough) + 0.01 * rng.standard_normal(60)
    h = fit_hyperparameters(x, t, y, 2, coupled=False)
    assert h.task_lengthscale[0, 0] > 2 * h.task_lengthscale[1, 0]
    assert h.noise.max() < 0.05  # neither task is explained as noise


def test_prior_for_few_value_tasks_decouples_and_restores_their_variance(fitted):
    *_, h = fitted
    p = h.with_prior_for([1])
    assert p.task_covariance[0, 1] == p.task_covariance[1, 0] == 0.0
    assert p.prior_variance[1] == pytest.approx(1.0)
    assert p.prior_variance[0] == pytest.approx(h.prior_variance[0])
    assert h.with_prior_for([]) is h


def sputter_profile(x: np.ndarray) -> np.ndarray:
    """A dopant's at.% over a 2-D chip in the unit box: 1 at.% far from its gun at (0, 1),
    ~27 at.% next to it (the shape of the alscbn twin's Sc map)."""
    return 27.0 * np.exp(-3.3 * np.hypot(x[:, 0], 1.0 - x[:, 1]))


def test_trend_and_log_scale_predict_an_unmeasured_corner():
    """Six interior values of a deposition profile: modelled as its log with a trend, the GP
    predicts the rich corner nobody measured; modelled as is, it cannot (flat at the mean)."""
    x = np.array([[0.05, 0.05], [0.95, 0.95], [0.35, 0.7], [0.7, 0.3], [0.5, 0.5], [0.15, 0.4]])
    t = np.zeros(6, int)
    y = sputter_profile(x)
    g = np.stack(
        np.meshgrid(np.linspace(0.025, 0.975, 20), np.linspace(0.025, 0.975, 20)), -1
    ).reshape(-1, 2)
    truth_g = sputter_profile(g)

    def nrmse(log: bool) -> float:
        h = fit_hyperparameters(x, t, y, 1, log_tasks=np.array([log]))
        mean, var = exact_posterior(h, x, t, y, g)
        assert (mean[:, 0] > 0).all() or not log  # an amount stays positive
        return float(np.sqrt(((mean[:, 0] - truth_g) ** 2).mean()) / truth_g.std())

    as_log, as_is = nrmse(True), nrmse(False)
    assert as_log < 0.4
    assert as_is > 0.9  # read as noise: the flat mean


def test_incremental_variance_equals_exact_posterior_with_trend_and_log_task():
    """The trend's variance grows away from the library's centre; the decision path (rank-one
    updates) and the reporting path (one Cholesky) must agree on it, in standardised units."""
    rng = np.random.default_rng(4)
    h = dataclasses.replace(
        default_hyperparameters(2, 2, lengthscale=0.3, correlation=0.5, trend=np.array([1.0, 0.5])),
        log_tasks=np.array([False, True]),
    )
    cand = rng.random((30, 2))
    x, t = rng.random((8, 2)), np.arange(8) % 2
    y = rng.random(8) + 0.5
    post = IncrementalPosterior(cand, h, dtype=np.float64)
    for xi, ti in zip(x, t, strict=True):
        post.add(xi, [ti])
    h_std = dataclasses.replace(h, log_tasks=None)  # compare the latent variance, unwarped
    _, var = exact_posterior(h_std, x, t, y, cand)
    np.testing.assert_allclose(post.variance(), var, rtol=1e-6, atol=1e-9)
    corner, centre = post.hyper.prior_diagonal(np.array([[0.0, 0.0], [0.5, 0.5]]))[:, 0, 0]
    assert corner == pytest.approx(centre + 0.25 * 1.0 + 0.25 * 0.5)


def test_log_task_values_at_or_below_zero_are_floored_not_lost():
    from coorch.models.mtgp import warp

    y = np.array([4.0, -0.1, 0.0, 2.0, 7.0])
    t = np.array([0, 0, 0, 0, 1])
    out = warp(y, t, np.array([True, False]))
    np.testing.assert_allclose(out, [np.log(4.0), np.log(1.0), np.log(1.0), np.log(2.0), 7.0])


def test_a_log_task_with_few_values_is_fitted_uncoupled():
    """Four values of an amount must not borrow another modality's shape (exp would turn it
    into multiplicative swings); with six it may couple like any task."""
    rng = np.random.default_rng(5)
    xa = rng.random((20, 1))
    ya = np.sin(6 * xa[:, 0])

    def coupling(n_log: int) -> float:
        xb = np.linspace(0.05, 0.95, abs(n_log))[:, None]
        if n_log < 0:  # each position twice
            xb = np.repeat(xb, 2, axis=0)
        n_log = len(xb)
        x = np.vstack([xa, xb])
        t = np.r_[np.zeros(20, int), np.ones(n_log, int)]
        y = np.r_[ya, np.exp(np.sin(6 * xb[:, 0]))]
        h = fit_hyperparameters(x, t, y, 2, log_tasks=np.array([False, True]), max_iter=50)
        return abs(h.task_covariance[0, 1])

    assert coupling(4) == 0.0
    assert coupling(-4) == 0.0  # four positions, each measured twice
    assert coupling(8) > 0.0
