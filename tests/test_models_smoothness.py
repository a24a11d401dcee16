"""A decision model may be rougher than the fit the benchmarks score with: Matern-3/2 instead
of 5/2. The kernel is gpytorch's, the option reaches every fit decisions are made with (the
background refit, the Laplace draws, the prior guess), and the benchmarks still score every
policy's map with the same 5/2 fit."""

from __future__ import annotations

import gpytorch
import numpy as np
import pytest
import torch

from coorch.benchmarks.simulate import SCORING_SMOOTHNESS, scoring_fit
from coorch.models import kernels
from coorch.models.cost import InstrumentCost
from coorch.models.mtgp_fit import fit_hyperparameters
from coorch.models.observations import Observation
from coorch.models.policies import make_policy
from coorch.tasks.background import InlineExecutor
from coorch.tasks.fit import HyperparameterRefit


@pytest.mark.parametrize("nu", kernels.SMOOTHNESS)
def test_the_matern_is_gpytorchs(nu):
    rng = np.random.default_rng(0)
    a, b, ls = rng.random((7, 2)), rng.random((5, 2)), np.array([0.3, 0.7])
    k = gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=2).double()
    k.lengthscale = torch.as_tensor(ls)
    want = k(torch.as_tensor(a), torch.as_tensor(b)).to_dense().detach().numpy()
    np.testing.assert_allclose(kernels.matern(a, b, ls, nu), want, rtol=1e-10, atol=1e-12)
    got = kernels.matern(torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(ls), nu)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_an_unknown_smoothness_is_refused():
    with pytest.raises(ValueError, match="smoothness"):
        kernels.matern(np.zeros((1, 1)), np.zeros((1, 1)), np.ones(1), 0.5)
    with pytest.raises(ValueError, match="smoothness"):
        fit_hyperparameters(np.zeros((2, 1)), np.zeros(2, int), np.zeros(2), 1, smoothness=2.0)


def data(n: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.random((n, 2))
    t = np.arange(n) % 2
    return x, t, np.sin(5 * x[:, 0]) + t * x[:, 1]


def test_a_rough_fit_and_its_draws_are_rough_and_predict_otherwise():
    x, t, y = data()
    rough = fit_hyperparameters(x, t, y, 2, max_iter=20, draws=3, smoothness=1.5)
    smooth = fit_hyperparameters(x, t, y, 2, max_iter=20, draws=3)
    assert rough.smoothness == 1.5 and {s.smoothness for s in rough.samples} == {1.5}
    assert smooth.smoothness == 2.5 and rough.version != smooth.version
    kinds = {k.smoothness for k, _ in rough.components() if isinstance(k, kernels.Matern)}
    assert kinds == {1.5}
    same = rough.covariance(x[:3], t[:3], x[:3], t[:3])
    as_smooth = type(rough)(**{**rough.__dict__, "smoothness": 2.5})
    assert not np.allclose(same, as_smooth.covariance(x[:3], t[:3], x[:3], t[:3]))


def test_the_option_reaches_the_prior_guess_and_the_background_refit():
    cand = np.linspace(0, 1, 21)[:, None]
    insts = [InstrumentCost("a", (0,), cost_s=1.0), InstrumentCost("b", (1,), cost_s=1.0)]
    agent = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), insts, smoothness=1.5)
    assert agent.decision.smoothness == 1.5 and agent.model.post.hyper.smoothness == 1.5
    asked = []

    def fit(*args, **kw):
        asked.append(kw["smoothness"])
        return fit_hyperparameters(*args, max_iter=10, **kw)

    for i, v in enumerate(np.linspace(0, 1, 12)):
        agent.tell([Observation("ab"[i % 2], np.array([v]), np.array([np.sin(4 * v)]), f"m{i}")])
    refit = HyperparameterRefit(InlineExecutor(), every=1, fit=fit)
    refit.poll(_Campaign(agent))
    refit.finish(_Campaign(agent))
    assert asked and set(asked) == {1.5} and agent.model.post.hyper.smoothness == 1.5

    scored = scoring_fit(_Problem(), agent, refit, lambda *a, **kw: fit_hyperparameters(*a, **kw))
    assert scored.smoothness == SCORING_SMOOTHNESS == 2.5  # not the decision fit's


class _Campaign:
    """What ``HyperparameterRefit`` reads of a campaign: its agent."""

    def __init__(self, agent) -> None:
        self.agent = agent


class _Problem:
    """What ``scoring_fit`` reads of a problem: tasks, bounds, instruments."""

    tasks = ("a", "b")
    bounds = np.array([[0.0, 1.0]])
    instruments = [InstrumentCost("a", (0,), cost_s=1.0), InstrumentCost("b", (1,), cost_s=1.0)]
