"""Hyperparameter uncertainty (issue 15): Laplace draws with every fit, the posterior
integrated over them, and decisions that count what a plug-in fit hides."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from shared_data import two_tasks as truth

from coorch.models.cost import InstrumentCost
from coorch.models.incremental import exact_posterior
from coorch.models.marginal import marginal_posterior, task_inflation
from coorch.models.mtgp import fit_hyperparameters
from coorch.models.mtgp_agent import IntegratedVarianceReduction
from coorch.models.mtgp_laplace import draw_offsets
from coorch.models.observations import Observation
from coorch.models.policies import make_policy


@pytest.fixture(scope="module")
def few() -> tuple:
    """Task 0 well measured, task 1 at four clustered positions: its fit is a guess."""
    rng = np.random.default_rng(3)
    x0 = rng.random(16)
    x1 = np.array([0.1, 0.15, 0.2, 0.25])
    x = np.r_[x0, x1][:, None]
    t = np.r_[np.zeros(16, int), np.ones(4, int)]
    y = np.r_[truth(x0)[:, 0], truth(x1)[:, 1]] + 0.02 * rng.standard_normal(20)
    return x, t, y


def test_draws_come_with_the_fit_and_leave_the_map_alone(few) -> None:
    x, t, y = few
    plain = fit_hyperparameters(x, t, y, 2, max_iter=30)
    drawn = fit_hyperparameters(x, t, y, 2, max_iter=30, draws=8)
    assert plain.samples == ()
    assert len(drawn.samples) == 8
    np.testing.assert_allclose(drawn.lengthscale, plain.lengthscale)
    np.testing.assert_allclose(drawn.noise, plain.noise)
    spread = np.std([s.task_lengthscale[1, 0] for s in drawn.samples])
    assert spread > 0  # the draws differ from each other
    for s in drawn.samples:
        assert s.samples == () and np.isfinite(s.task_covariance).all()


def test_a_log_task_fitted_uncoupled_stays_uncoupled_in_every_draw() -> None:
    x = np.r_[np.linspace(0, 1, 12), np.linspace(0.1, 0.9, 4)][:, None]
    t = np.r_[np.zeros(12, int), np.ones(4, int)]
    y = np.r_[np.sin(6 * x[:12, 0]), np.exp(np.sin(6 * x[12:, 0]))]
    h = fit_hyperparameters(x, t, y, 2, log_tasks=np.array([False, True]), max_iter=30, draws=6)
    assert h.samples
    assert all(s.task_covariance[0, 1] == 0.0 for s in (h, *h.samples))


def test_a_declared_noise_is_held_in_the_fit_and_every_draw(few) -> None:
    """Task 1's four values, declared repeatable to 0.02 (their real noise): the fit and its
    Laplace draws keep that noise (in standardised units), task 0's is fitted, and the draws
    of the rest still spread."""
    x, t, y = few
    fitted = fit_hyperparameters(x, t, y, 2, max_iter=30, draws=8)
    held = fit_hyperparameters(x, t, y, 2, max_iter=30, draws=8, noise_sd=np.array([np.nan, 0.02]))
    want = (0.02 / held.y_scale[1]) ** 2
    assert held.noise[1] == pytest.approx(want, rel=1e-6)
    assert all(s.noise[1] == pytest.approx(want, rel=1e-6) for s in held.samples)
    assert np.std([s.noise[0] for s in held.samples]) > 0
    assert np.std([s.task_lengthscale[1, 0] for s in held.samples]) > 0
    assert fitted.noise[1] != pytest.approx(want, rel=0.1)  # left alone, the fit says otherwise


def test_draw_offsets_floor_flat_directions() -> None:
    """A direction the data do not constrain gets the capped variance, not infinity."""
    h = np.diag([100.0, 1e-9, -3.0])  # well determined, flat, a saddle
    off = draw_offsets(h, 20000, np.random.default_rng(0), max_variance=1.0)
    np.testing.assert_allclose(off.var(0), [0.01, 1.0, 1.0], rtol=0.05)


def test_the_mixture_is_wider_where_the_fit_is_a_guess(few) -> None:
    x, t, y = few
    h = fit_hyperparameters(x, t, y, 2, max_iter=30, draws=16)
    q = np.linspace(0, 1, 50)[:, None]
    _, plug_in = exact_posterior(h, x, t, y, q)
    mean, mixed = marginal_posterior(h, x, t, y, q)
    assert np.isfinite(mean).all()
    # average variance of the mixture is at least the draws' average (law of total variance)
    parts = [exact_posterior(s, x, t, y, q)[1] for s in h.samples]
    assert (mixed >= np.mean(parts, axis=0) - 1e-12).all()
    inflation = task_inflation(h, (x, t, y), q)
    assert inflation.shape == (2,) and (inflation >= 1).all()
    assert inflation.max() > 1.2  # twenty values do not pin these hyperparameters down


def test_inflation_steers_the_gain_towards_the_task_that_hides_variance(few) -> None:
    """Two instruments of equal cost, one per task: a built model carries the fit's
    inflation, and the task whose fit hides more variance is worth more for it."""
    x, t, y = few
    cand = np.linspace(0, 1, 41)[:, None]
    insts = [InstrumentCost("a", (0,), cost_s=1.0), InstrumentCost("b", (1,), cost_s=1.0)]
    agent = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), insts, min_fit_values=0)
    agent.tell(
        [
            Observation(insts[ti].name, np.array([xi]), np.array([yi]), f"m{k}")
            for k, (xi, ti, yi) in enumerate(zip(x[:, 0], t, y, strict=True))
        ]
    )
    h = fit_hyperparameters(*agent.log.data(), 2, max_iter=30, draws=16)
    agent.set_hyperparameters(h)
    model = agent.model
    np.testing.assert_allclose(model.inflation, task_inflation(h, agent.log.data(), agent.unit))
    excl = np.array([], int)
    gain = IntegratedVarianceReduction()
    model.inflation = np.array([1.0, 4.0])
    with_inflation = [gain(model, [k], excl)[1].max() for k in (0, 1)]
    model.inflation = None
    without = [gain(model, [k], excl)[1].max() for k in (0, 1)]
    # not 4x: each instrument also informs the other task through the coupling
    assert with_inflation[1] / with_inflation[0] > 1.5 * without[1] / without[0]


def test_leave_one_out_widens_a_task_the_fit_is_too_sure_of() -> None:
    """A model that believes its values nearly noiseless while they are noisy is widened by
    its own held-out residuals; a model that matches its data is left as it is."""
    from coorch.models.marginal import loo_scale
    from coorch.models.mtgp import default_hyperparameters

    rng = np.random.default_rng(0)
    x = rng.random((60, 1))
    t = np.r_[np.zeros(30, int), np.ones(30, int)]
    y = np.sin(4 * x[:, 0]) + np.where(t == 1, 0.3, 0.01) * rng.standard_normal(60)
    h = default_hyperparameters(2, 1, lengthscale=0.3, noise=1e-4)
    h = dataclasses.replace(h, noise=np.array([1e-4, 1e-4]))
    scale = loo_scale(h, x, t, y)
    assert scale[1] > 3 and scale[0] < scale[1]
    honest = dataclasses.replace(h, noise=np.array([1e-4, 0.09]))
    assert loo_scale(honest, x, t, y)[1] < 1.5


def _step(x: np.ndarray) -> np.ndarray:
    """A smooth map with a jump of 2 at 0.7: a phase boundary."""
    return np.sin(3 * x) + 2.0 * (x > 0.7)


def test_the_fit_is_trusted_less_where_its_map_jumps() -> None:
    """Values of a map with a jump, under a smooth model: the squared leave-one-out z-scores
    are large beside the jump, so the widening is highest there and about 1 or below far
    from it, with mean 1 over the reference positions; a task with two values is left at 1."""
    from coorch.models.marginal import local_loo_scale
    from coorch.models.mtgp import default_hyperparameters

    x = np.linspace(0, 1, 25)[:, None]
    t = np.r_[np.zeros(25, int), 1, 1]
    xs = np.r_[x, [[0.3], [0.6]]]
    y = np.r_[_step(x[:, 0]), 0.0, 1.0]
    h = default_hyperparameters(2, 1, lengthscale=0.3, noise=1e-3)
    unit = np.linspace(0, 1, 101)[:, None]
    ref = np.arange(0, 101, 2)
    where = local_loo_scale(h, xs, t, y, unit, ref)
    assert where.shape == (101, 2)
    np.testing.assert_allclose(where[ref].mean(0), 1.0)
    assert np.abs(unit[where[:, 0].argmax(), 0] - 0.7) < 0.1
    assert where[70, 0] > 3 * where[20, 0]
    np.testing.assert_array_equal(where[:, 1], 1.0)


def test_a_map_the_model_describes_is_weighted_about_evenly() -> None:
    """Values the model would have drawn (smooth, its own noise): no place stands out."""
    from coorch.models.marginal import local_loo_scale
    from coorch.models.mtgp import default_hyperparameters

    rng = np.random.default_rng(1)
    x = rng.random((30, 1))
    y = np.sin(3 * x[:, 0]) + 0.05 * rng.standard_normal(30)
    h = default_hyperparameters(1, 1, lengthscale=0.3, noise=0.05**2)
    unit = np.linspace(0, 1, 101)[:, None]
    where = local_loo_scale(h, x, np.zeros(30, int), y, unit, np.arange(101))
    assert where.min() > 0.5 and where.max() < 2.0


def test_the_agent_measures_beside_a_jump_its_smooth_fit_misses() -> None:
    """Twelve evenly spaced values of a map with a jump at 0.7, the model smooth: of the next
    four positions the co-orchestration agent asks for, two are beside the jump. With the
    same map less the jump none is: a stationary GP's variance, which the values do not
    change, sends them to the ends."""
    from coorch.models.mtgp import default_hyperparameters
    from coorch.models.mtgp_agent import MTGPAgent

    cand = np.linspace(0, 1, 201)[:, None]
    inst = InstrumentCost("probe", (0,), cost_s=1.0)
    beside = {}
    for name, truth_map in (("jump", _step), ("smooth", lambda x: np.sin(3 * x))):
        agent = MTGPAgent(cand, np.array([[0.0, 1.0]]), [inst], seed=0)
        xs = np.linspace(0.0, 1.0, 12)
        agent.tell([Observation("probe", np.array([u]), np.array([truth_map(u)]), f"{name}{i}")
                    for i, u in enumerate(xs)])  # fmt: skip
        agent.set_hyperparameters(default_hyperparameters(1, 1, lengthscale=0.3, noise=1e-3))
        picks = np.array([agent.ask("probe").x[0] for _ in range(4)])
        beside[name] = int((np.abs(picks - 0.7) < 0.1).sum())
    assert beside == {"jump": 2, "smooth": 0}


@pytest.mark.parametrize("n_values", [500, 501])
def test_the_residual_weighting_stops_where_the_draws_stop(n_values: int) -> None:
    """Up to LAPLACE_MAX_VALUES values a rebuild weights the gain by the residuals; above
    that it does not (its O(n^3) would cost as much again as the rebuild)."""
    from coorch.models.mtgp import LAPLACE_MAX_VALUES, default_hyperparameters
    from coorch.models.mtgp_agent import MTGPAgent

    assert LAPLACE_MAX_VALUES == 500
    cand = np.linspace(0, 1, 101)[:, None]
    agent = MTGPAgent(cand, np.array([[0.0, 1.0]]), [InstrumentCost("probe", (0,), cost_s=1.0)])
    xs = np.random.default_rng(0).random(n_values)
    agent.tell([Observation("probe", np.array([u]), np.array([_step(u)]), f"v{i}")
                for i, u in enumerate(xs)])  # fmt: skip
    agent.set_hyperparameters(default_hyperparameters(1, 1, lengthscale=0.3, noise=1e-3))
    weighted = not np.allclose(agent.model.value_scale, 1.0)
    assert weighted == (n_values <= LAPLACE_MAX_VALUES)
