"""Simulated campaigns kept on disk, so a benchmark re-run reuses what it has already run.

Why: ``coorch bench defaults`` runs co-orchestration's candidates on every problem, and
``coorch bench efficiency`` then reports the chosen one beside the baselines; a full table is
about an hour of two cores. A job's trace is a pure function of its arguments (the twins and
fits are seeded by the agent seed), so it is stored under a digest of them and of what the
policy reads from its settings (a baseline ignores co-orchestration's options, so a baseline
run serves every candidate). Delete the folder after a change to the models or the twins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

from coorch.benchmarks.simulate import Settings, Trace

#: Options added after traces were cached, with the value every run had before: left out of
#: a key at that value, so a cache keeps serving traces the option cannot have changed.
LATER_OPTIONS: dict[str, object] = {"smoothness": 2.5}
_NONE = object()


def job_key(fn: Callable[..., Trace], job: tuple) -> str:
    """A digest of the job: the function's name and its arguments, a ``Settings`` reduced to
    what the job's policy reads (policy = the first string argument that names a policy)."""
    from coorch.models.policies import POLICIES

    policy = next((a for a in job if isinstance(a, str) and a in POLICIES), None)
    parts = []
    for a in job:
        if isinstance(a, Settings):
            options = a.policy_options(policy or "").items()
            kept = [(k, v) for k, v in options if LATER_OPTIONS.get(k, _NONE) != v]
            a = (a.max_iter, a.draws, sorted(kept))
        parts.append(repr(a))
    return hashlib.sha1(f"{fn.__name__}|{'|'.join(parts)}".encode()).hexdigest()[:16]


def split(
    fn: Callable[..., Trace], jobs: list[tuple], cache: Path | None
) -> tuple[dict[int, Trace], list[int]]:
    """The traces already on disk (by job index) and the indices still to run."""
    if cache is None:
        return {}, list(range(len(jobs)))
    done, todo = {}, []
    for i, job in enumerate(jobs):
        path = cache / f"{job_key(fn, job)}.pkl"
        if path.exists():
            done[i] = pickle.loads(path.read_bytes())
        else:
            todo.append(i)
    return done, todo


def store(fn: Callable[..., Trace], job: tuple, trace: Trace, cache: Path | None) -> None:
    """Keep ``trace`` (written to a temporary name, then renamed: a killed run leaves no
    half-written trace behind)."""
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{job_key(fn, job)}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(dataclasses.replace(trace)))
    tmp.replace(path)
