"""The Pareto policy: never a pending point, a non-dominated front, more hypervolume than random
in the same budget, and a co-orchestrated campaign that ends with a front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume

from coorch.models.agent import RandomAgent
from coorch.models.cost import InstrumentCost
from coorch.models.observations import Observation
from coorch.models.pareto import pareto_front
from coorch.models.pareto_policy import ParetoPolicy
from coorch.models.policies import make_policy

GX, GY = np.meshgrid(np.linspace(0.0, 10.0, 16), np.linspace(0.0, 10.0, 16))
CANDIDATES = np.column_stack([GX.ravel(), GY.ravel()])  # library mm
BOUNDS = np.array([[0.0, 10.0], [0.0, 10.0]])
BOTH = [InstrumentCost("ab", (0, 1), cost_s=10.0)]  # one instrument measures both objectives
TWO = [
    InstrumentCost("a", (0,), cost_s=30.0, move_cost_s_per_mm=2.0),
    InstrumentCost("b", (1,), cost_s=20.0, move_cost_s_per_mm=0.5),
]


def objectives(x: np.ndarray) -> np.ndarray:
    """Two competing properties peaked at opposite sides: the front joins the two peaks."""
    u = np.atleast_2d(x) / 10.0
    a = np.exp(-((u[:, 0] - 0.2) ** 2 + (u[:, 1] - 0.3) ** 2) / 0.1)
    b = np.exp(-((u[:, 0] - 0.8) ** 2 + (u[:, 1] - 0.7) ** 2) / 0.1)
    return np.column_stack([a, b])


_HV = Hypervolume(torch.zeros(2, dtype=torch.float64))


def hypervolume(y: np.ndarray) -> float:
    return float(_HV.compute(torch.as_tensor(y[pareto_front(y)])))


def assert_non_dominated(values: np.ndarray, directions: np.ndarray) -> None:
    v = np.asarray(values) * directions
    assert len(v) > 0
    for row in v:
        assert not np.any(np.all(v >= row, axis=1) & np.any(v > row, axis=1))


def told(policy, s, rng, noise: float = 0.01) -> None:
    """Tell ``policy`` the noisy objectives of the instrument of suggestion ``s``."""
    tasks = policy.instruments[s.instrument].tasks
    y = objectives(s.x)[0, list(tasks)] + rng.normal(0.0, noise, len(tasks))
    policy.tell([Observation(s.instrument, s.x, y, s.measurement_id)])


def run(policy, budget: int, seed: int) -> np.ndarray:
    """Measure ``budget`` points one at a time; the true objectives at the measured points."""
    rng = np.random.default_rng(seed + 100)
    xs = []
    for _ in range(budget):
        s = policy.ask()
        xs.append(s.x)
        told(policy, s, rng)
    return objectives(np.asarray(xs))


def test_registered_and_validated() -> None:
    p = make_policy("pareto", CANDIDATES, BOUNDS, TWO, seed=0, directions=[1, -1])
    assert isinstance(p, ParetoPolicy) and p.name == "pareto"
    with pytest.raises(ValueError):
        ParetoPolicy(CANDIDATES, BOUNDS, TWO[:1])  # one objective is no Pareto problem
    with pytest.raises(ValueError):
        ParetoPolicy(CANDIDATES, BOUNDS, TWO, directions=[1, 2])


@pytest.mark.parametrize("n_told", [0, 6])
def test_never_picks_a_pending_point(n_told: int) -> None:
    p = ParetoPolicy(CANDIDATES, BOUNDS, TWO, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(n_told):
        told(p, p.ask(), rng)
    assert p.ready() == (n_told >= 4)
    picks = []
    for _ in range(6):  # nothing told back: everything asked stays pending
        before = {c for _, c in p.pending.values()}
        s = p.ask()
        c = p.nearest(s.x)
        assert c not in before  # never a point pending on any instrument
        picks.append(c)
    assert len(set(picks)) == 6 and len(p.pending) == 6
    if n_told:
        assert np.isfinite(s.acquisition_value)  # decided by the model, not space-filling


def test_front_is_non_dominated_and_in_target_units() -> None:
    directions = np.array([1.0, -1.0])  # maximise a, minimise b
    p = ParetoPolicy(CANDIDATES, BOUNDS, BOTH, seed=0, directions=directions)
    assert p.report()["pareto_front"] is None  # no model yet
    run(p, 10, seed=0)
    rep = p.report()
    front = rep["pareto_front"]
    values = np.asarray(front["values"])
    assert_non_dominated(values, directions)
    assert np.asarray(front["x"]).shape == (len(values), 2)
    mean, _ = p.predict(np.asarray(front["x"]))
    np.testing.assert_allclose(mean, values)  # posterior means, targets' units
    observed = np.asarray(rep["pareto_observed"]["values"])
    assert_non_dominated(observed, directions)
    assert rep["directions"] == [1.0, -1.0] and len(rep["ref_point"]) == 2


def test_finds_more_hypervolume_than_random_in_the_same_budget() -> None:
    true = hypervolume(objectives(CANDIDATES))
    ours, rand = [], []
    for seed in (0, 1):
        ours.append(
            hypervolume(run(ParetoPolicy(CANDIDATES, BOUNDS, BOTH, seed=seed), 15, seed)) / true
        )
        rand.append(
            hypervolume(run(RandomAgent(CANDIDATES, BOUNDS, BOTH, seed=seed), 15, seed)) / true
        )
    # measured: 0.84 and 0.73 of the true front's hypervolume, random 0.30 and 0.39
    assert min(ours) > 0.6 and np.mean(ours) > np.mean(rand) + 0.15, (ours, rand)


def test_decoupled_instruments_complete_each_others_points() -> None:
    """Each instrument measures its own objective; the front still gets observed points where
    both were measured, and asking with ``instrument=None`` uses both instruments."""
    p = ParetoPolicy(CANDIDATES, BOUNDS, TWO, seed=0)
    rng = np.random.default_rng(0)
    used = []
    for _ in range(16):
        s = p.ask()
        used.append(s.instrument)
        told(p, s, rng)
    assert set(used) == {"a", "b"}
    rep = p.report()
    assert_non_dominated(np.asarray(rep["pareto_front"]["values"]), np.ones(2))
    assert rep["pareto_observed"] is not None


def test_coorchestrate_flow_runs_the_pareto_policy(prefect_server, twins, tmp_path) -> None:
    from coorch.deployments.config import CampaignSpec
    from coorch.flows.coorchestrate import coorchestrate
    from coorch.storage import CampaignStore

    store_url = tmp_path / "p.zarr"
    spec = CampaignSpec(
        name="pareto",
        instruments=twins,
        policy="pareto",
        budget=12,
        seeds_per_instrument=2,
        grid=(21, 3),
        store=str(store_url),
    )
    result = coorchestrate(spec)
    assert result.n_measurements == 12 and result.n_fits == 0  # no Dask: fits in ask
    front = result.policy["pareto_front"]
    assert front is not None and len(front["x"]) >= 1
    assert_non_dominated(np.asarray(front["values"]), np.ones(2))
    decisions = CampaignStore.open(str(store_url), create=False).decisions()
    chosen = decisions[decisions["policy"] == "pareto"]
    assert len(chosen) == 12 - 4
    # once both instruments' seeds are in, the model decides (before that: space-filling)
    assert np.isfinite(chosen["acquisition_value"].astype(float).to_numpy()[-4:]).all()


def test_refit_cadence_every_value_early_then_every_k() -> None:
    """The cadence is explicit (``RefitCadence``): a task's GP is fitted at each new value while
    it has fewer than ``refit_all_below``, then once ``refit_every`` values arrived since."""
    p = ParetoPolicy(CANDIDATES, BOUNDS, BOTH, seed=0, refit_every=3, refit_all_below=4)
    rng = np.random.default_rng(0)
    fitted_at = []
    for i, c in enumerate(rng.choice(len(CANDIDATES), 8, replace=False)):
        x = CANDIDATES[c]
        p.tell([Observation("ab", x, objectives(x)[0], f"m{i}")])
        if i >= 1:
            before = p.n_fits
            p.model_list()
            if p.n_fits > before:
                fitted_at.append(i + 1)
    assert fitted_at == [2, 3, 6]  # both tasks at once: one instrument measures both
    assert p.n_fits == 6 and p.model_version == "pareto-n6-6"
