"""``coorch bench decision``: measurement arrived -> next (position, instrument) chosen.

Setting of the issue: 500 observations, 4 tasks (instruments), 10,000 candidate positions on
2 CPU cores. The incremental path (``tell`` + ``ask`` on :class:`GPPolicy`: one rank-one update
of the cached posterior covariance, two-stage knowledge gain) is timed per decision; the naive
path (refit hyperparameters, then the posterior variance at all 40,000 candidate-tasks
from scratch) is timed on a few decisions in the same run. A background refit on Dask is started
half-way to show that decisions go on while it is in flight.
"""

from __future__ import annotations

import time

import numpy as np
import typer

from coorch.models.incremental import exact_posterior
from coorch.models.mtgp import fit_hyperparameters
from coorch.models.policies import GPPolicy, InstrumentModel, Observation


def synthetic_truth(x: np.ndarray, n_tasks: int) -> np.ndarray:
    """Correlated smooth maps over the unit square, one per task."""
    base = np.sin(3 * x[:, 0]) + np.exp(-((x[:, 1] - 0.5) / 0.2) ** 2)
    return np.column_stack([base * (1 - 0.2 * k) + 0.3 * k * np.cos(4 * x[:, 1] + k)
                            for k in range(n_tasks)])


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


def run(n_obs: int = 500, n_tasks: int = 4, n_candidates: int = 10_000, n_decisions: int = 60,
        n_naive: int = 3, seed: int = 0, dask: bool = True) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_candidates)))
    g = np.linspace(0, 1, side)
    cand = np.column_stack([a.ravel() for a in np.meshgrid(g, g)])[:n_candidates]
    insts = [InstrumentModel(f"inst{k}", (k,), cost_s=10.0 * (k + 1)) for k in range(n_tasks)]
    x0 = rng.random((n_obs, 2))
    tk = np.arange(n_obs) % n_tasks
    y0 = synthetic_truth(x0, n_tasks)[np.arange(n_obs), tk] + 0.05 * rng.standard_normal(n_obs)
    hyper = fit_hyperparameters(x0[:200], tk[:200], y0[:200], n_tasks, max_iter=50)

    policy = GPPolicy(cand, np.array([[0.0, 1.0], [0.0, 1.0]]), insts, hyperparameters=hyper,
                      n_reference=512, seed=seed)
    t0 = time.perf_counter()
    policy.tell([Observation(f"inst{k}", x, np.array([v]), f"seed-{i}")
                 for i, (x, k, v) in enumerate(zip(x0, tk, y0, strict=True))])
    warm_s = time.perf_counter() - t0

    client = cluster = None
    if dask:
        from distributed import Client, LocalCluster

        from coorch.tasks.fit import _warm_up

        cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster)
        client.run(_warm_up)
    lat, busy = [], []  # latency, and whether a Dask refit was in flight meanwhile
    refit = None
    try:
        pending = {}
        for name in policy.instruments:  # every instrument busy
            pending[name] = policy.ask(name)
        for i in range(n_decisions):
            name = f"inst{i % n_tasks}"
            s = pending[name]
            xv = s.x
            val = synthetic_truth(xv[None], n_tasks)[0, i % n_tasks]
            if client is not None and i == n_decisions // 3:
                xt, tt, yt = policy.training_data()
                refit = client.submit(fit_hyperparameters, xt, tt, yt, n_tasks, max_iter=50)
            t = time.perf_counter()
            policy.tell([Observation(name, xv, np.array([val]), s.measurement_id)])
            pending[name] = policy.ask(name)
            lat.append(time.perf_counter() - t)
            busy.append(refit is not None and not refit.done())
            if refit is not None and refit.done():
                policy.swap_hyperparameters_async(refit.result())
                refit = None
        policy.close()
        xt, tt, yt = policy.training_data()
        naive, naive_fit, naive_predict = [], [], []
        for _ in range(n_naive):
            t = time.perf_counter()
            _, fit_s, pred_s = naive_decision(xt, tt, yt, cand, n_tasks)
            naive.append(time.perf_counter() - t)
            naive_fit.append(fit_s)
            naive_predict.append(pred_s)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    lat_ms, busy = np.array(lat) * 1e3, np.array(busy)
    return {"median_ms": float(np.median(lat_ms)), "p95_ms": float(np.percentile(lat_ms, 95)),
            "median_ms_refit_in_flight": float(np.median(lat_ms[busy])) if busy.any() else None,
            "median_ms_no_refit": float(np.median(lat_ms[~busy])) if (~busy).any() else None,
            "max_ms": float(lat_ms.max()), "naive_median_ms": float(np.median(naive) * 1e3),
            "naive_fit_median_ms": float(np.median(naive_fit) * 1e3),
            "naive_predict_median_ms": float(np.median(naive_predict) * 1e3),
            "n_observations": n_obs, "n_tasks": n_tasks, "n_candidates": n_candidates,
            "n_decisions": n_decisions, "decisions_during_refit": int(busy.sum()),
            "initial_build_s": warm_s, "speedup": float(np.median(naive) * 1e3
                                                         / np.median(lat_ms))}


def bench_decision_command(
    n_obs: int = typer.Option(500, "--observations", help="observations already told"),
    n_tasks: int = typer.Option(4, "--tasks", help="tasks = instruments"),
    n_candidates: int = typer.Option(10_000, "--candidates"),
    n_decisions: int = typer.Option(60, "--decisions", help="incremental decisions timed"),
    n_naive: int = typer.Option(2, "--naive", help="naive refit-every-step decisions timed"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Decision latency: incremental path vs naive refit-every-step, in one run."""
    import json

    out = run(n_obs, n_tasks, n_candidates, n_decisions, n_naive)
    if json_out:
        print(json.dumps(out))
        return
    print(f"decision latency at n={n_obs}, {n_tasks} tasks, {n_candidates} candidates: "
          f"median {out['median_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms "
          f"(naive refit-every-step: median {out['naive_median_ms']:.0f} ms, "
          f"{out['speedup']:.0f}x slower); {out['decisions_during_refit']} of {n_decisions} "
          f"decisions made while a Dask refit was in flight (median "
          f"{out['median_ms_refit_in_flight']:.1f} ms then, {out['median_ms_no_refit']:.1f} ms "
          f"otherwise)")
