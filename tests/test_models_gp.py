"""The multi-task GP, its incremental posterior and the decision policies."""

import dataclasses

import numpy as np
import pytest
import torch

from coorch.models.incremental import IncrementalPosterior, exact_posterior
from coorch.models.mtgp import _HadamardMTGP, default_hyperparameters, fit_hyperparameters
from coorch.models.policies import GPPolicy, InstrumentModel, Observation, make_policy


def truth(x):
    """Two correlated tasks over 1-D position: the second is a warped copy of the first."""
    a = np.exp(-((x - 0.6) / 0.12) ** 2)
    return np.column_stack([a, 0.8 * a + 0.3 * np.sin(3 * x)])


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = rng.random((40, 1))
    t = rng.integers(0, 2, 40)
    y = truth(x[:, 0])[np.arange(40), t] + 0.02 * rng.standard_normal(40)
    return x, t, y, fit_hyperparameters(x, t, y, 2)


def test_incremental_variance_equals_exact_posterior(fitted):
    x, t, y, h = fitted
    cand = np.linspace(0, 1, 50)[:, None]
    post = IncrementalPosterior(cand, h, capacity=4, dtype=np.float64)  # forces growth
    for xi, ti in zip(x, t, strict=True):
        post.add(xi, [ti])
    _, var = exact_posterior(h, x, t, y, cand)
    np.testing.assert_allclose(post.variance() * h.y_scale**2, var, rtol=1e-6, atol=1e-9)


def test_exact_posterior_matches_gpytorch(fitted):
    x, t, y, h = fitted
    q = np.linspace(0, 1, 7)[:, None]
    mean, var = exact_posterior(h, x, t, y, q)
    ys = (y - h.y_offset[t]) / h.y_scale[t]
    xi = torch.as_tensor(np.column_stack([x, t]), dtype=torch.float64)
    centre = torch.full((1,), 0.5, dtype=torch.float64)
    model = _HadamardMTGP.build(xi, torch.as_tensor(ys), 2, 2, True, True, centre).double()
    model.initialize(raw_trend_variance=model.raw_trend_variance_constraint.inverse_transform(
        torch.as_tensor(h.trend_weight[:, 0])))
    model.covar_module.lengthscale = torch.as_tensor(h.lengthscale)
    model.own_module.lengthscale = torch.as_tensor(h.task_lengthscale)[:, None, :]
    model.initialize(raw_own_variance=model.raw_own_variance_constraint.inverse_transform(
        torch.as_tensor(h.task_variance)))
    f = torch.as_tensor(np.linalg.cholesky(h.task_covariance + 1e-12 * np.eye(2)))
    model.task_covar_module.covar_factor.data = f
    model.task_covar_module.var = torch.full((2,), 1e-12, dtype=torch.float64)
    model.likelihood.noise = torch.as_tensor(h.noise)
    model.task_mean.data = torch.as_tensor(h.task_mean)
    model.eval()
    for task in (0, 1):
        qi = torch.as_tensor(np.column_stack([q, np.full(len(q), task)]), dtype=torch.float64)
        with torch.no_grad():
            out = model(qi)
        np.testing.assert_allclose(out.mean.numpy() * h.y_scale[task] + h.y_offset[task],
                                   mean[:, task], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.variance.numpy() * h.y_scale[task] ** 2,
                                   var[:, task], rtol=1e-3, atol=1e-6)


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


def instruments():
    return [InstrumentModel("a", (0,), cost_s=10.0), InstrumentModel("b", (1,), cost_s=10.0)]


@pytest.mark.parametrize("name", ["coorchestrate", "single_task", "max_uncertainty",
                                  "random", "grid"])
def test_no_policy_picks_a_pending_point(name):
    cand = np.linspace(0, 10, 30)[:, None]
    pol = make_policy(name, cand, np.array([[0.0, 10.0]]), instruments(), seed=3)
    chosen = [tuple(pol.ask("a").x) for _ in range(12)]
    assert len(set(chosen)) == len(chosen)
    assert len(pol.pending) == 12


def test_pending_point_on_one_instrument_steers_the_other_away():
    """With coupled tasks, a point pending on instrument a is worth less to instrument b."""
    cand = np.linspace(0, 1, 41)[:, None]
    h = default_hyperparameters(2, 1, lengthscale=0.15, correlation=0.95)
    pol = GPPolicy(cand, np.array([[0.0, 1.0]]), instruments(), hyperparameters=h)
    first = pol.ask("a")
    second = pol.ask("b")
    assert abs(first.x[0] - second.x[0]) > 0.1
    assert second.pending == (first.measurement_id,)


def test_tell_accepts_seeds_and_resolves_pending():
    cand = np.linspace(0, 1, 21)[:, None]
    pol = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), instruments())
    pol.tell([Observation("a", np.array([0.5]), np.array([1.0]), "seed-1")])
    s = pol.ask("b")
    pol.tell([Observation("b", s.x, np.array([2.0]), s.measurement_id)])
    pol.tell([Observation("b", s.x, np.array([2.0]), s.measurement_id)])  # duplicate: ignored
    assert not pol.pending
    assert len(pol.rows) == 2
    x, t, y = pol.training_data()
    assert list(t) == [0, 1] and list(y) == [1.0, 2.0]


def test_async_swap_replays_points_decided_meanwhile(fitted):
    *_, h = fitted
    cand = np.linspace(0, 1, 41)[:, None]
    pol = GPPolicy(cand, np.array([[0.0, 1.0]]), instruments())
    for _ in range(3):
        pol.ask("a")
    fut = pol.swap_hyperparameters_async(h)
    pol.ask("b")  # decided while the new posterior may still be building
    fut.result()
    pol.ask("a")
    assert pol.model_version == h.version
    assert pol.post.n == 5
    ref = IncrementalPosterior(pol.unit, h)
    for u, tasks in pol.rows[:5]:
        ref.add(u, list(tasks))
    np.testing.assert_allclose(pol.post.C[:, 0, 0], ref.C[:, 0, 0], rtol=1e-4, atol=1e-6)
    pol.close()


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


def test_a_task_with_few_values_is_decided_on_the_prior(fitted):
    """Until task b has ``min_fit_values`` values, the policy's model keeps it uncoupled at
    prior variance, whatever the fit said; then the fit is used as it is."""
    *_, h = fitted
    cand = np.linspace(0, 1, 21)[:, None]
    pol = GPPolicy(cand, np.array([[0.0, 1.0]]), instruments(), min_fit_values=3)
    for i, xi in enumerate((0.1, 0.5, 0.9)):
        pol.tell([Observation("a", np.array([xi]), np.array([float(i)]), f"a{i}")])
    pol.tell([Observation("b", np.array([0.5]), np.array([1.0]), "b0")])
    pol.set_hyperparameters(h)
    assert pol.post.hyper.task_covariance[0, 1] == 0.0
    assert pol.post.hyper.prior_variance[1] == pytest.approx(1.0)
    for i, xi in enumerate((0.2, 0.8)):
        pol.tell([Observation("b", np.array([xi]), np.array([0.0]), f"b{i + 1}")])
    pol.set_hyperparameters(h)
    np.testing.assert_allclose(pol.post.hyper.task_covariance, h.task_covariance)


def test_grid_survey_skips_seeds_and_takes_instruments_in_turn():
    cand = np.linspace(0, 1, 11)[:, None]
    pol = make_policy("grid", cand, np.array([[0.0, 1.0]]), instruments())
    pol.tell([Observation("a", np.array([0.0]), np.array([1.0]), "seed-a"),
              Observation("b", np.array([1.0]), np.array([1.0]), "seed-b")])
    asked = [pol.ask(None) for _ in range(6)]
    assert [s.instrument for s in asked] == ["a", "b"] * 3
    assert all(s.x[0] != 0.0 for s in asked if s.instrument == "a")
    assert all(s.x[0] != 1.0 for s in asked if s.instrument == "b")
    assert len({s.x[0] for s in asked if s.instrument == "a"}) == 3


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
    g = np.stack(np.meshgrid(np.linspace(0.025, 0.975, 20), np.linspace(0.025, 0.975, 20)),
                 -1).reshape(-1, 2)
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
    h = dataclasses.replace(default_hyperparameters(2, 2, lengthscale=0.3, correlation=0.5,
                                                    trend=np.array([1.0, 0.5])),
                            log_tasks=np.array([False, True]))
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
