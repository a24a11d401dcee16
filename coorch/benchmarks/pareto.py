"""``coorch bench pareto``: decision latency of the Pareto agent (qLogNEHVI over a model list).

Two instruments, each observing one objective of a two-bump problem, on a 15 x 15 candidate
grid; ``n`` observations told (alternating instruments, random positions), then ``decisions``
tell + ask rounds, each with the other instrument's last point pending. The policy fits its
GPs inside ``ask`` (every ``refit_every`` new values past ``refit_all_below``), so the figure
includes those fits, as a campaign pays them.
"""

from __future__ import annotations

import json
import time

import numpy as np
import typer

from coorch.models.cost import InstrumentCost
from coorch.models.observations import Observation
from coorch.models.policies import make_policy


def _objectives(x: np.ndarray) -> np.ndarray:
    u = np.atleast_2d(x) / 10.0
    a = np.exp(-((u[:, 0] - 0.2) ** 2 + (u[:, 1] - 0.3) ** 2) / 0.1)
    b = np.exp(-((u[:, 0] - 0.8) ** 2 + (u[:, 1] - 0.7) ** 2) / 0.1)
    return np.column_stack([a, b])


def run(n: int = 112, decisions: int = 20, seed: int = 0) -> dict:
    gx, gy = np.meshgrid(np.linspace(0, 10, 15), np.linspace(0, 10, 15))
    cand = np.column_stack([gx.ravel(), gy.ravel()])
    insts = [InstrumentCost("a", (0,), cost_s=30.0), InstrumentCost("b", (1,), cost_s=20.0)]
    policy = make_policy("pareto", cand, np.array([[0.0, 10.0], [0.0, 10.0]]), insts, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = i % 2
        x = rng.uniform(0, 10, 2)
        policy.tell(
            [Observation("ab"[k], x, _objectives(x)[:, k] + 0.01 * rng.standard_normal(1), f"m{i}")]
        )
    times = []
    for i in range(decisions):
        t0 = time.perf_counter()
        s = policy.ask("ab"[i % 2])
        times.append(time.perf_counter() - t0)
        k = "ab".index(s.instrument)
        policy.tell([Observation(s.instrument, s.x, _objectives(s.x)[:, k], s.measurement_id)])
    ms = 1000 * np.asarray(times)
    return {
        "median_ms": float(np.median(ms)),
        "max_ms": float(ms.max()),
        "n_observations": n,
        "n_candidates": len(cand),
        "decisions": decisions,
    }


def bench_pareto_command(
    n: int = typer.Option(112, min=1, help="observations told before timing"),
    decisions: int = typer.Option(20, min=1, help="timed decisions"),
) -> None:
    """Decision latency of the Pareto (qLogNEHVI) policy, fits inside ``ask`` included."""
    print(json.dumps(run(n, decisions)))
