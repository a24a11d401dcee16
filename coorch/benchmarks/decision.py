"""``coorch bench decision``: measurement arrived -> next (position, instrument) chosen.

Setting of the issue: 500 observations, 4 tasks (instruments), 10,000 candidate positions on
2 CPU cores. The incremental path (``tell`` + ``ask`` on the co-orchestration agent,
:class:`~coorch.models.mtgp_agent.MTGPAgent`: one rank-one update of the cached posterior
covariance, two-stage integrated variance reduction) is timed per decision; the naive path
(refit hyperparameters, then the posterior variance at all 40,000 candidate-tasks from
scratch) is timed on a few decisions in the same run. A background refit on Dask is started
half-way to show that decisions go on while it is in flight.

The rebuild when new hyperparameters arrive (:meth:`MTGPAgent._build`, off the decision path)
is timed too, after the decisions: the blocked build at 500 and 2000 rows and, for the ratio,
the row-by-row build it replaced at 500 (at 2000 that took 27 s, 2 cores, issue 15: not rerun).
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import typer

from coorch.models.cost import InstrumentCost
from coorch.models.incremental import IncrementalPosterior, exact_posterior
from coorch.models.mtgp import MTGPHyperparameters, fit_hyperparameters
from coorch.models.mtgp_agent import MTGPAgent
from coorch.models.observations import Observation


def synthetic_truth(x: np.ndarray, n_tasks: int) -> np.ndarray:
    """Correlated smooth maps over the unit square, one per task."""
    base = np.sin(3 * x[:, 0]) + np.exp(-(((x[:, 1] - 0.5) / 0.2) ** 2))
    return np.column_stack(
        [base * (1 - 0.2 * k) + 0.3 * k * np.cos(4 * x[:, 1] + k) for k in range(n_tasks)]
    )


def naive_decision(x, t, y, cand, n_tasks) -> tuple[int, float, float]:
    """Refit the hyperparameters, then recompute the posterior variance at every
    candidate-task from scratch (one Cholesky, one triangular solve: our own fastest
    non-incremental path, faster than gpytorch's predictive variance here). Returns the chosen
    candidate and the seconds spent fitting and predicting."""
    t0 = time.perf_counter()
    h = fit_hyperparameters(x, t, y, n_tasks, max_iter=50)
    t1 = time.perf_counter()
    _, var = exact_posterior(h, x, t, y, cand)
    arg = int(np.argmax((var / h.prior_variance).max(1)))
    return arg, t1 - t0, time.perf_counter() - t1


def setup(n_obs: int, n_tasks: int, n_candidates: int, seed: int) -> tuple[MTGPAgent, float]:
    """An agent told ``n_obs`` observations of correlated maps, with hyperparameters fitted
    on the first 200; and the seconds the telling took (the initial build)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_candidates)))
    g = np.linspace(0, 1, side)
    cand = np.column_stack([a.ravel() for a in np.meshgrid(g, g)])[:n_candidates]
    insts = [InstrumentCost(f"inst{k}", (k,), cost_s=10.0 * (k + 1)) for k in range(n_tasks)]
    x0 = rng.random((n_obs, 2))
    tk = np.arange(n_obs) % n_tasks
    y0 = synthetic_truth(x0, n_tasks)[np.arange(n_obs), tk] + 0.05 * rng.standard_normal(n_obs)
    hyper = fit_hyperparameters(x0[:200], tk[:200], y0[:200], n_tasks, max_iter=50)
    agent = MTGPAgent(
        cand,
        np.array([[0.0, 1.0], [0.0, 1.0]]),
        insts,
        hyperparameters=hyper,
        n_reference=512,
        seed=seed,
    )
    t0 = time.perf_counter()
    agent.tell(
        [
            Observation(f"inst{k}", x, np.array([v]), f"seed-{i}")
            for i, (x, k, v) in enumerate(zip(x0, tk, y0, strict=True))
        ]
    )
    return agent, time.perf_counter() - t0


def rebuild_seconds(
    h: MTGPHyperparameters,
    agent: MTGPAgent,
    n_rows: int,
    *,
    row_by_row: bool = False,
    repeats: int = 2,
    seed: int = 0,
) -> float:
    """Seconds (best of ``repeats``) to build the posterior for ``h`` on ``n_rows`` rows
    (uniform positions, tasks in turn) at the agent's candidates and reference set, as
    :meth:`MTGPAgent._build` builds it: in blocks, or with ``row_by_row`` one
    :meth:`~IncrementalPosterior.add` per row, as it was built before. Best of a few because
    the first touch of a few hundred MB of fresh memory can cost seconds on a VM."""
    rng = np.random.default_rng(seed)
    x, t = rng.random((n_rows, agent.unit.shape[1])), np.arange(n_rows) % h.num_tasks
    best = np.inf
    for _ in range(repeats):
        post = IncrementalPosterior(
            agent.unit, h, reference=agent.reference, capacity=max(64, 2 * n_rows)
        )
        t0 = time.perf_counter()
        if row_by_row:
            for xi, ti in zip(x, t, strict=True):
                post.add(xi, [ti])
        else:
            post.extend(x, t)
        best = min(best, time.perf_counter() - t0)
        del post
    return best


def decide_repeatedly(agent: MTGPAgent, n_decisions: int, executor) -> tuple[list, list]:
    """Keep every instrument busy for ``n_decisions`` decisions, timing tell + ask; a
    hyperparameter refit is submitted to ``executor`` (Dask) a third of the way in, its
    posterior built on a thread and installed when ready, as the campaign runtime does.
    Returns (latency s, whether a refit or build was in flight) per decision."""
    from concurrent.futures import ThreadPoolExecutor

    n_tasks = agent.num_tasks
    pending = {name: agent.ask(name) for name in agent.instruments}  # every instrument busy
    lat, busy, refit, build = [], [], None, None
    with ThreadPoolExecutor(1) as builder:
        for i in range(n_decisions):
            name = f"inst{i % n_tasks}"
            s = pending[name]
            val = synthetic_truth(s.x[None], n_tasks)[0, i % n_tasks]
            if executor is not None and i == n_decisions // 3:
                refit = executor.submit(
                    fit_hyperparameters, *agent.log.data(), n_tasks, max_iter=50
                )
            t = time.perf_counter()
            agent.tell([Observation(name, s.x, np.array([val]), s.measurement_id)])
            pending[name] = agent.ask(name)
            lat.append(time.perf_counter() - t)
            busy.append(refit is not None or build is not None)
            if build is not None and build.done():
                agent.install(build.result())
                build = None
            if refit is not None and refit.done():
                build, refit = builder.submit(agent.posterior_work(refit.result())), None
    return lat, busy


def run(
    n_obs: int = 500,
    n_tasks: int = 4,
    n_candidates: int = 10_000,
    n_decisions: int = 60,
    n_naive: int = 3,
    seed: int = 0,
    dask: bool = True,
    rebuild_rows: tuple[int, ...] = (500, 2000),
    row_by_row_rows: int | None = 500,
) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    torch.set_num_threads(1)
    agent, warm_s = setup(n_obs, n_tasks, n_candidates, seed)
    with contextlib.ExitStack() as stack:
        client = None
        if dask:  # the campaign's own cluster factory: one worker process, one thread
            from coorch.deployments.dask_cluster import dask_client
            from coorch.deployments.dask_config import DaskConfig
            from coorch.tasks.fit import warm_up

            client = stack.enter_context(dask_client(DaskConfig(n_workers=1)))
            client.run(warm_up)
        lat, busy = decide_repeatedly(agent, n_decisions, client)
        xt, tt, yt = agent.log.data()
        naive = [naive_decision(xt, tt, yt, agent.unit, n_tasks) for _ in range(n_naive)]
    h = agent.model.post.hyper
    rebuild = {n: rebuild_seconds(h, agent, n) for n in rebuild_rows}
    rbr = {}
    if row_by_row_rows:
        rbr[row_by_row_rows] = rebuild_seconds(h, agent, row_by_row_rows, row_by_row=True)
    load = os.getloadavg()[0]
    lat_ms, busy = np.array(lat) * 1e3, np.array(busy)
    naive_ms = (
        np.array([[f + p for _, f, p in naive], [f for _, f, _ in naive], [p for _, _, p in naive]])
        * 1e3
    )
    return {
        "median_ms": float(np.median(lat_ms)),
        "p95_ms": float(np.percentile(lat_ms, 95)),
        "median_ms_refit_in_flight": float(np.median(lat_ms[busy])) if busy.any() else None,
        "median_ms_no_refit": float(np.median(lat_ms[~busy])) if (~busy).any() else None,
        "max_ms": float(lat_ms.max()),
        "naive_median_ms": float(np.median(naive_ms[0])),
        "naive_fit_median_ms": float(np.median(naive_ms[1])),
        "naive_predict_median_ms": float(np.median(naive_ms[2])),
        "n_observations": n_obs,
        "n_tasks": n_tasks,
        "n_candidates": n_candidates,
        "n_decisions": n_decisions,
        "decisions_during_refit": int(busy.sum()),
        "initial_build_s": warm_s,
        "speedup": float(np.median(naive_ms[0]) / np.median(lat_ms)),
        "rebuild_s": {str(n): v for n, v in rebuild.items()},
        "rebuild_row_by_row_s": {str(n): v for n, v in rbr.items()},
        "rebuild_load": load,
    }


def bench_decision_command(
    n_obs: int = typer.Option(500, "--observations", min=1, help="observations already told"),
    n_tasks: int = typer.Option(4, "--tasks", min=1, help="tasks = instruments"),
    n_candidates: int = typer.Option(10_000, "--candidates", min=1),
    n_decisions: int = typer.Option(60, "--decisions", min=1, help="incremental decisions timed"),
    n_naive: int = typer.Option(2, "--naive", min=1, help="naive refit-every-step decisions timed"),
    rebuild_rows: list[int] = typer.Option(
        [500, 2000], "--rebuild-rows", help="rows the posterior rebuild is timed at (repeat)"
    ),
    row_by_row_rows: int = typer.Option(
        500, "--row-by-row-rows", help="rows the old row-by-row rebuild is timed at (0: not)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Decision latency: incremental path vs naive refit-every-step, in one run."""
    import json

    out = run(
        n_obs,
        n_tasks,
        n_candidates,
        n_decisions,
        n_naive,
        rebuild_rows=tuple(rebuild_rows),
        row_by_row_rows=row_by_row_rows or None,
    )
    if json_out:
        print(json.dumps(out))
        return
    print(
        f"decision latency at n={n_obs}, {n_tasks} tasks, {n_candidates} candidates: "
        f"median {out['median_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms "
        f"(naive refit-every-step: median {out['naive_median_ms']:.0f} ms, "
        f"{out['speedup']:.0f}x slower); {out['decisions_during_refit']} of {n_decisions} "
        f"decisions made while a Dask refit was in flight (median "
        f"{out['median_ms_refit_in_flight']:.1f} ms then, {out['median_ms_no_refit']:.1f} ms "
        f"otherwise)"
    )
    print(rebuild_line(out, n_tasks, n_candidates))


def rebuild_line(out: dict, n_tasks: int, n_candidates: int) -> str:
    """The rebuild timings of :func:`run` as one line: blocked at every size, row by row
    where it was run (with the ratio), the 2000-row figure of issue 15 where it was not."""
    slow = out["rebuild_row_by_row_s"]
    parts = []
    for n, s in out["rebuild_s"].items():
        if n in slow:
            parts.append(f"n={n} {s:.2f} s (row by row {slow[n]:.2f} s, {slow[n] / s:.0f}x slower)")
        elif n == "2000" and (n_tasks, n_candidates) == (4, 10_000):
            parts.append(f"n={n} {s:.2f} s (row by row: 27 s before issue 15, not rerun)")
        else:
            parts.append(f"n={n} {s:.2f} s")
    return (
        f"posterior rebuild on new hyperparameters ({n_candidates} candidates x {n_tasks} "
        f"tasks, blocked, best of 2): " + "; ".join(parts) + f" (load {out['rebuild_load']:.1f})"
    )
