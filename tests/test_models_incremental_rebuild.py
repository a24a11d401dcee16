"""The incremental posterior built in blocks (models/incremental.py ``extend``, used by
``MTGPAgent._build`` when new hyperparameters arrive): it reaches the state, variances and
integrated variance reduction scores that adding the rows one at a time reaches, and
``add`` carries on from it as from a row-by-row build (issue 15)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coorch.models import incremental
from coorch.models.acquisition import integrated_variance_reduction, local_variance_reduction
from coorch.models.cost import InstrumentCost
from coorch.models.incremental import JITTER, IncrementalPosterior
from coorch.models.marginal import local_loo_scale
from coorch.models.mtgp import MTGPHyperparameters
from coorch.models.mtgp_agent import MTGPAgent, Posterior, value_scale
from coorch.models.observations import Observation

#: What the incremental posterior keeps, padding beyond ``n`` included.
STATE = ("x", "t", "L", "V", "V_ref", "C")
#: Tasks observed together, as an instrument with a VAE descriptor observes its latents.
VAE_TASKS = (1, 2)
RTOL = 1e-8

Points = list[tuple[np.ndarray, tuple[int, ...]]]


def hyperparameters() -> MTGPHyperparameters:
    """Four tasks in 2-D with every part of the covariance: a coupled shared part, own parts
    (task 2 without one), trends (task 3 without one), task 0 modelled as its log."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4, 4))
    return MTGPHyperparameters(
        lengthscale=np.array([0.35, 0.25]),
        task_covariance=a @ a.T / 4 + 0.1 * np.eye(4),
        noise=np.array([0.01, 0.05, 0.002, 0.02]),
        task_mean=np.zeros(4),
        y_offset=np.zeros(4),
        y_scale=np.ones(4),
        task_lengthscale=rng.uniform(0.1, 0.4, (4, 2)),
        task_variance=np.array([0.3, 0.5, 0.0, 0.2]),
        trend_weight=np.array([[0.5, 0.2], [1.0, 1.0], [0.3, 0.0], [0.0, 0.0]]),
        log_tasks=np.array([True, False, False, False]),
    )


def points(n: int, *, multi: bool, seed: int = 0) -> Points:
    """``n`` (unit position, tasks) points; with ``multi`` every third observes VAE_TASKS.
    A few repeat an earlier position, as revisits and seeds at candidates do."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2))
    x[5::11] = x[: len(x[5::11])]
    tasks = [(VAE_TASKS if multi and i % 3 == 0 else (int(i % 4),)) for i in range(n)]
    return list(zip(x, tasks, strict=True))


def candidates() -> tuple[np.ndarray, np.ndarray]:
    """A 17 x 13 grid over the unit box and a reference subset of it."""
    g = np.meshgrid(np.linspace(0, 1, 17), np.linspace(0, 1, 13))
    cand = np.column_stack([a.ravel() for a in g])
    return cand, np.arange(0, len(cand), 3)


def new_posterior(dtype: type = np.float64, capacity: int = 4) -> IncrementalPosterior:
    cand, ref = candidates()
    return IncrementalPosterior(
        cand, hyperparameters(), reference=ref, capacity=capacity, dtype=dtype
    )


def row_by_row(pts: Points, **kw) -> IncrementalPosterior:
    post = new_posterior(**kw)
    for u, tasks in pts:
        post.add(u, list(tasks))
    return post


def flat(pts: Points) -> tuple[np.ndarray, np.ndarray]:
    """The GP rows (position, task) of ``pts``, in the order ``add`` conditions on them."""
    x = np.array([u for u, tasks in pts for _ in tasks])
    return x, np.array([k for _, tasks in pts for k in tasks])


def blocked(pts: Points, **kw) -> IncrementalPosterior:
    post = new_posterior(**kw)
    post.extend(*flat(pts))
    return post


def assert_same_state(
    got: IncrementalPosterior, want: IncrementalPosterior, rtol: float = RTOL
) -> None:
    assert got.n == want.n and len(got.t) == len(want.t)  # capacity grown the same way
    for name in STATE:
        g, w = getattr(got, name), getattr(want, name)
        assert g.shape == w.shape and g.dtype == w.dtype, name
        scale = max(np.abs(w).max(), 1.0)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)


def assert_same_scores(
    got: IncrementalPosterior, want: IncrementalPosterior, rtol: float = RTOL
) -> None:
    """Variances, local and integrated variance reduction for every instrument's tasks."""
    np.testing.assert_allclose(got.variance(), want.variance(), rtol=rtol, atol=rtol)
    w = np.random.default_rng(1).uniform(0.5, 2.0, got.C.shape[:2])  # (M, T), as a value scale
    m = len(got.candidates)
    for tasks in ([0], [3], list(VAE_TASKS)):
        np.testing.assert_allclose(
            local_variance_reduction(got, tasks, w),
            local_variance_reduction(want, tasks, w),
            rtol=rtol,
            atol=rtol,
        )
        (i_got, g_got), (i_want, g_want) = (
            integrated_variance_reduction(p, tasks, w, top_k=m) for p in (got, want)
        )
        order = np.argsort(i_want)
        np.testing.assert_allclose(g_got[np.argsort(i_got)], g_want[order], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("multi", [False, True], ids=["single-task", "multi-task"])
def test_a_blocked_build_reaches_the_state_of_adding_rows_one_at_a_time(multi: bool) -> None:
    """From capacity 4, 70 points (94 rows with the VAE's pairs) grow it to 128 either way."""
    pts = points(70, multi=multi)
    want = row_by_row(pts)
    got = blocked(pts)
    assert len(got.t) == 128 and got.n == len(flat(pts)[1])
    assert_same_state(got, want)
    assert_same_scores(got, want)


def test_blocks_on_top_of_conditioned_rows_reach_the_same_state() -> None:
    """A block below rows already conditioned (the Cholesky factor extended by a block row),
    then another, then single rows: the state of all of them added one at a time."""
    pts = points(60, multi=True)
    got = new_posterior()
    for u, tasks in pts[:7]:
        got.add(u, list(tasks))
    got.extend(*flat(pts[7:30]))
    got.extend(*flat(pts[30:31]))
    got.extend(*flat(pts[31:50]))
    for u, tasks in pts[50:]:
        got.add(u, list(tasks))
    want = row_by_row(pts)
    assert_same_state(got, want)
    assert_same_scores(got, want)


def test_add_after_a_blocked_build_goes_on_as_after_a_row_by_row_one() -> None:
    """Pending points are conditioned one at a time between rebuilds; past the capacity
    too (a blocked build of 40 rows into capacity 64, then 54 more added)."""
    pts = points(70, multi=True)
    got = new_posterior(capacity=64)
    got.extend(*flat(pts[:30]))
    for u, tasks in pts[30:]:
        got.add(u, list(tasks))
    want = row_by_row(pts, capacity=64)
    assert len(want.t) == 128
    assert_same_state(got, want)
    assert_same_scores(got, want)


def test_in_float32_the_blocked_build_is_as_close_to_exact_as_row_by_row() -> None:
    """The agent keeps ``V`` in float32: both builds round there, neither further from the
    float64 state than float32 allows."""
    pts = points(70, multi=True)
    exact = blocked(pts, dtype=np.float64)
    fast, slow = blocked(pts, dtype=np.float32), row_by_row(pts, dtype=np.float32)
    for post in (fast, slow):
        np.testing.assert_allclose(post.C, exact.C, atol=1e-4)
        np.testing.assert_allclose(post.V, exact.V, atol=1e-4)
    assert_same_scores(fast, slow, rtol=1e-3)


def test_chunks_built_on_every_core_are_the_chunks_built_in_turn(monkeypatch) -> None:
    """Candidates split into 12 chunks (a small ``CHUNK_BYTES``), a block on top of conditioned
    rows (so the right-hand side subtracts ``L21 V1`` too), in float32 as the agent keeps
    ``V``: one thread per core gives the state of one chunk after another, to the last bit,
    so a decision never depends on how many cores built its model."""
    pts = points(70, multi=True)
    cand, _ = candidates()
    b = len(flat(pts[7:])[1])
    monkeypatch.setattr(incremental, "CHUNK_BYTES", 8 * b * 4 * 20)  # 20 candidates a chunk
    assert len(cand) > 11 * 20

    def build() -> IncrementalPosterior:
        post = new_posterior(dtype=np.float32)
        for u, tasks in pts[:7]:
            post.add(u, list(tasks))
        post.extend(*flat(pts[7:]))
        return post

    threaded = build()
    monkeypatch.setattr(incremental, "_on_every_core", incremental._in_turn)
    in_turn = build()
    for name in STATE:
        assert np.array_equal(getattr(threaded, name), getattr(in_turn, name)), name


def test_a_numerically_singular_block_is_added_as_add_would_add_it() -> None:
    """Where a pivot falls below JITTER, ``add`` clamps it; a blocked build of such rows
    (a repeated position with noise cancelling the jitter) gives that same clamped state."""
    h = hyperparameters()
    h = dataclasses.replace(h, noise=np.array([-0.9 * JITTER, 0.05, 0.002, 0.02]))
    pts = points(20, multi=False)
    pts.insert(9, (pts[4][0], (0,)))  # pts[4] observes task 0 too: the same row twice
    cand, ref = candidates()
    got = IncrementalPosterior(cand, h, reference=ref, capacity=4, dtype=np.float64)
    got.extend(*flat(pts))
    want = IncrementalPosterior(cand, h, reference=ref, capacity=4, dtype=np.float64)
    for u, tasks in pts:
        want.add(u, list(tasks))
    assert np.isclose(np.diag(want.L)[: want.n] ** 2, JITTER).any()  # add() clamped
    assert_same_state(got, want)


def test_the_agent_builds_a_new_model_in_blocks_as_it_built_it_row_by_row() -> None:
    """An agent with a log-scale instrument and a VAE instrument (two tasks per point) swaps
    in new hyperparameters: posterior state, value scale (from the posterior mean) and the
    acquisition's scores are the row-by-row ones; pending points then go on being added."""
    insts = [
        InstrumentCost("wds", (0,), cost_s=30.0, log_scale=True),
        InstrumentCost("vae", VAE_TASKS, cost_s=10.0),
        InstrumentCost("raman", (3,), cost_s=5.0),
    ]
    cand, _ = candidates()
    bounds = np.array([[0.0, 10.0], [0.0, 5.0]])
    agent = MTGPAgent(cand * bounds[:, 1], bounds, insts, n_reference=64)
    rng = np.random.default_rng(3)
    obs = [
        Observation(
            inst.name, rng.random(2) * bounds[:, 1], rng.uniform(1, 9, len(inst.tasks)), f"s{i}"
        )
        for i, inst in enumerate(insts * 12)
    ]
    agent.tell(obs)
    for name in ("vae", "wds", "raman", "vae"):
        agent.ask(name)  # pending rows
    h = dataclasses.replace(hyperparameters(), log_tasks=agent.log_tasks)
    agent.set_hyperparameters(h)
    cap = max(64, 2 * len(agent.rows))  # as the agent sizes it
    want = IncrementalPosterior(agent.unit, h, reference=agent.reference, capacity=cap)
    for u, tasks in agent.rows:
        want.add(u, list(tasks))
    assert agent.model.post.n == want.n == 12 * 4 + 6
    assert_same_state(agent.model.post, want, rtol=1e-5)  # V in float32, as the agent keeps it
    scale = value_scale(h, agent.log.data(), agent.unit)
    assert not np.allclose(scale[:, 0], 1.0)  # the log task's value follows its mean
    scale = scale * local_loo_scale(h, *agent.log.data(), agent.unit, agent.reference)
    np.testing.assert_allclose(agent.model.value_scale, scale)
    assert agent.model.inflation is None  # a fit without draws (above 500 values) is not widened
    ref = Posterior(want, scale, len(agent.rows))
    none = np.zeros(0, int)
    for inst in insts:
        got_idx, got = agent.acquisition(agent.model, list(inst.tasks), none)
        want_idx, wanted = agent.acquisition(ref, list(inst.tasks), none)
        np.testing.assert_allclose(got, wanted, rtol=1e-4)
        np.testing.assert_array_equal(got_idx[:3], want_idx[:3])
    agent.ask("vae")
    want.add(agent.rows[-1][0], list(VAE_TASKS))
    assert_same_state(agent.model.post, want, rtol=1e-5)
