"""``coorch bench efficiency``: how much instrument time each policy needs for the same map.

Two settings, one simulated campaign (:func:`coorch.benchmarks.simulate.simulate`, the campaign
runtime driven by a plain measure function):

* **replay of real data** (:func:`run_dataset`): a file shaped like
  ``smbfo_coorchestration/raman_beps.nc`` (``descriptor(modality, position, latent)``, the
  published run's seeds and, optionally, its per-step errors). Every policy starts from the same
  seed measurements and takes ``steps`` more, one at a time, each answered with the stored
  descriptor, equal cost per modality as in the published run. The error is the RMSE of one
  latent component over every position, the published run's metric (so the published
  multi-task GP is a fair reference); the score is its mean over modalities of nRMSE (RMSE /
  std of the component), so that no modality's units outweigh another's.
* **digital twins** (:func:`run_twins`): several instruments with different costs over a virtual
  library; the score is the normalised RMSE of each instrument's physics descriptor on a
  held-out grid against the twins' ground truth (the expected measured descriptor:
  :func:`coorch.tasks.report.ground_truth`), against the number of measurements and against
  cumulative instrument-seconds (measurement plus stage moves).

Both report, per policy, the figures after the last step (:func:`final_figures`: error per task,
measurement counts, 90 % interval coverage) and, seed by seed, whether co-orchestration beat
each baseline on the same seed (:func:`paired_comparison`): a mean over seeds can hide a policy
that wins big once and loses the rest.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import typer

from coorch.benchmarks import paired_intervals as intervals
from coorch.benchmarks import trace_cache
from coorch.benchmarks.efficiency_format import format_dataset, format_twins
from coorch.benchmarks.efficiency_plot import plot_curves
from coorch.benchmarks.problems import (
    TWIN_INSTRUMENTS,
    load_replay,
    replay_measure,
    twin_measure,
    twin_setup,
)
from coorch.benchmarks.simulate import Settings, Trace, simulate

DEFAULT_POLICIES = ("coorchestrate", "max_uncertainty", "single_task", "random", "grid")
REFERENCE = "coorchestrate"  # the policy the paired comparison holds against each baseline


#: defaults only (issue 15): the replay is scored like the twins, by the mean of its tasks' nRMSE
REPLAY_SETTINGS = Settings()


def _dataset_job(
    path: str,
    component: int,
    policy: str,
    seed: int,
    steps: int,
    settings: Settings,
    score_every: int,
) -> Trace:
    """One replay campaign (top-level so that a process pool can run it)."""
    replay = load_replay(path, component)
    return simulate(
        replay.problem, policy, seed, steps, replay_measure(replay), settings, score_every
    )


def run_dataset(
    path: str | Path,
    steps: int = 30,
    seeds: int = 10,
    component: int = 1,
    policies: Sequence[str] = DEFAULT_POLICIES,
    *,
    settings: Settings | None = None,
    score_every: int = 1,
    workers: int | None = None,
    baseline_seeds: int | None = None,
    cache: Path | None = None,
) -> dict:
    """Every policy on a replay file, ``seeds`` agent seeds each: per policy the
    :func:`final_figures` (score: ``mean_nrmse``, the mean over modalities of RMSE / std of the
    component over all positions), the paired comparison with co-orchestration, the published
    figures where the file has them, and the learning curves under ``curves``."""
    settings = settings or REPLAY_SETTINGS
    replay = load_replay(path, component)
    counts = _seed_counts(policies, seeds, baseline_seeds)
    jobs = [
        (str(Path(path).resolve()), component, p, s, steps, settings, score_every)
        for p in policies
        for s in range(counts[p])
    ]
    traces = run_jobs(_dataset_job, jobs, workers, cache)
    scale = replay.values.std(0)
    tasks = replay.problem.tasks
    out: dict = {
        "score": "final mean over modalities of nRMSE (RMSE / std of the component)",
        "scale": _per_task(tasks, scale),
        "policies": {},
        "published": replay.published,
        "curves": {},
    }
    for p in policies:
        runs = _runs(traces, p)
        rmse = np.mean([t.rmse for t in runs], axis=0)  # (scored steps, T)
        out["policies"][p] = {"final": final_figures(runs, scale, tasks)}
        out["curves"][p] = {
            "measurements": runs[0].scored_at,
            "rmse": {m: rmse[:, k].round(4).tolist() for k, m in enumerate(tasks)},
            "rmse_final_per_seed": [_per_task(tasks, np.asarray(t.rmse[-1])) for t in runs],
        }
    out["paired"] = paired_comparison(_per_seed_nrmse(out["policies"]))
    return out


def _runs(traces: list[Trace], policy: str) -> list[Trace]:
    """One policy's campaigns in seed order (the order the paired comparison matches on)."""
    return sorted((t for t in traces if t.policy == policy), key=lambda t: t.seed)


def final_figures(runs: list[Trace], scale: np.ndarray, tasks: Sequence[str]) -> dict:
    """The figures after the last scored step, mean over seeds: RMSE and nRMSE (RMSE /
    ``scale``) per task and nRMSE's mean over tasks, the 90 % interval coverage per task (None
    when the traces carry none), measurement counts per task (seeds included), and per seed:
    its id, its mean nRMSE and its counts."""
    nrmse = np.array([np.asarray(t.rmse[-1]) / scale for t in runs])  # (S, T)
    counts = [{m: t.instruments.count(m) for m in tasks} for t in runs]
    coverage = None
    if runs and all(t.coverage for t in runs):
        coverage = _per_task(tasks, np.mean([t.coverage[-1] for t in runs], axis=0))
    return {
        "rmse": _per_task(tasks, np.mean([t.rmse[-1] for t in runs], axis=0)),
        "nrmse": _per_task(tasks, nrmse.mean(0)),
        "mean_nrmse": round(float(nrmse.mean()), 4),
        "coverage": coverage,
        "measured": {m: float(np.mean([c[m] for c in counts])) for m in tasks},
        "measured_per_seed": counts,
        "seeds": [t.seed for t in runs],
        "mean_nrmse_per_seed": nrmse.mean(1).round(4).tolist(),
    }


def _per_seed_nrmse(policies: Mapping[str, dict]) -> dict[str, dict[int, float]]:
    return {
        p: dict(zip(v["final"]["seeds"], v["final"]["mean_nrmse_per_seed"], strict=True))
        for p, v in policies.items()
    }


def paired_comparison(
    nrmse: Mapping[str, Mapping[int, float]],
    seconds: Mapping[str, Mapping[int, float | None]] | None = None,
    reference: str = REFERENCE,
) -> dict | None:
    """``reference`` against each other policy, seed by seed on the seeds both ran: per seed
    ``nrmse`` (final mean nRMSE, lower wins) and, when given, ``seconds`` to the target (None:
    never reached; a win is reaching it when the baseline did not, or reaching it in fewer
    seconds). Per baseline ``of`` seeds, wins and losses on each (the rest are ties) and
    ``wins``: those on seconds to the target when given (the twins' question), else on nRMSE;
    and the mean nRMSE difference with its 95 % paired bootstrap interval
    (:mod:`coorch.benchmarks.paired_intervals`). None when ``reference`` is not among the
    policies."""
    if reference not in nrmse:
        return None
    baselines = {}
    for b in (p for p in nrmse if p != reference):
        seeds = sorted(set(nrmse[reference]) & set(nrmse[b]))
        ref, base = nrmse[reference], nrmse[b]
        row = {
            "of": len(seeds),
            "nrmse_wins": int(sum(ref[s] < base[s] for s in seeds)),
            "nrmse_losses": int(sum(ref[s] > base[s] for s in seeds)),
            "nrmse_difference": intervals.mean_difference(
                [ref[s] for s in seeds], [base[s] for s in seeds]
            ),
        }
        if seconds is not None:
            ref_s, base_s = seconds[reference], seconds[b]
            row["seconds_wins"] = int(sum(_sooner(ref_s[s], base_s[s]) for s in seeds))
            row["seconds_losses"] = int(sum(_sooner(base_s[s], ref_s[s]) for s in seeds))
        row["wins"] = row["seconds_wins" if seconds is not None else "nrmse_wins"]
        baselines[b] = row
    return {
        "reference": reference,
        "wins_on": "seconds to the target" if seconds is not None else "final mean nRMSE",
        "baselines": baselines,
    }


def _sooner(a: float | None, b: float | None) -> bool:
    """``a`` reached the target and ``b`` did not, or both did and ``a`` took fewer seconds."""
    return a is not None and (b is None or a < b)


def _per_task(tasks: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {m: round(float(v), 4) for m, v in zip(tasks, values, strict=True)}


def run_jobs(
    fn: Callable[..., Trace],
    jobs: list[tuple],
    workers: int | None = None,
    cache: Path | None = None,
) -> list[Trace]:
    """Run campaign jobs, in ``workers`` spawned processes (default: one per core, at most
    two: the fits are single-threaded), reporting progress on stderr (stdout carries JSON).
    With ``cache`` (a folder), a job run before is read back and each new one is kept as it
    finishes (:mod:`coorch.benchmarks.trace_cache`)."""
    workers = workers or min(2, os.cpu_count() or 1)
    out, todo = trace_cache.split(fn, jobs, cache)
    t0 = time.perf_counter()

    def done(k: int, i: int, tr: Trace) -> None:
        trace_cache.store(fn, jobs[i], tr, cache)
        out[i] = tr
        err = ", ".join(f"{v:.3f}" for v in tr.rmse[-1])
        print(
            f"[{k + 1}/{len(todo)} {time.perf_counter() - t0:6.1f} s] {tr.policy} seed "
            f"{tr.seed}: final RMSE {err}",
            file=sys.stderr,
            flush=True,
        )

    if workers <= 1 or len(todo) <= 1:
        for k, i in enumerate(todo):
            done(k, i, fn(*jobs[i]))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, *jobs[i]): i for i in todo}
            for k, fut in enumerate(as_completed(futures)):
                done(k, futures[fut], fut.result())
    return [out[i] for i in range(len(jobs))]


def _seed_counts(policies: Sequence[str], seeds: int, baseline_seeds: int | None) -> dict:
    """Agent seeds per policy: ``seeds`` for co-orchestration, ``baseline_seeds`` (default the
    same) for every other policy."""
    other = seeds if baseline_seeds is None else baseline_seeds
    return {p: seeds if p == "coorchestrate" else other for p in policies}


# ---------------------------------------------------------------------------- digital twins
def _twins_job(
    library: str, policy: str, seed: int, budget: int, settings: Settings, score_every: int
) -> Trace:
    """One twin campaign of ``budget`` measurements, seeds included."""
    setup = twin_setup(library, seed)
    steps = max(budget - len(setup.problem.seeds), 0)
    return simulate(setup.problem, policy, seed, steps, twin_measure(setup), settings, score_every)


def run_twins(
    library: str = "smbfo",
    budget: int = 40,
    seeds: int = 10,
    policies: Sequence[str] = DEFAULT_POLICIES,
    *,
    settings: Settings | None = None,
    score_every: int = 2,
    workers: int | None = None,
    baseline_seeds: int | None = None,
    cache: Path | None = None,
) -> dict:
    """Every policy on the twins; normalised RMSE (RMSE / std of the truth over the held-out
    grid, per task, then mean over tasks) vs measurements and vs instrument-seconds, the
    instrument-seconds each policy needs to reach the error target (the median over seeds of
    the nRMSE the random policy reaches with the full budget), the :func:`final_figures` and
    the paired comparison with co-orchestration (seconds to the target and final nRMSE)."""
    settings = settings or Settings()
    setup = twin_setup(library, 0)
    scale = setup.problem.truth.std(0)
    counts = _seed_counts(policies, seeds, baseline_seeds)
    jobs = [
        (library, p, s, budget, settings, score_every) for p in policies for s in range(counts[p])
    ]
    traces = run_jobs(_twins_job, jobs, workers, cache)
    tasks = setup.problem.tasks
    curves = {p: twin_curve(_runs(traces, p), scale, tasks) for p in policies}
    reference = "random" if "random" in curves else policies[-1]
    target = float(np.median([c[-1] for c in curves[reference]["per_seed_nrmse"]]))
    for p in policies:
        curves[p]["to_target"] = seconds_to_target(curves[p], target)
        curves[p]["final"] = final_figures(_runs(traces, p), scale, tasks)
    seconds = {
        p: dict(zip(c["final"]["seeds"], c["to_target"]["per_seed_s"], strict=True))
        for p, c in curves.items()
    }
    return {
        "library": library,
        "budget": budget,
        "seeds": counts,
        "instruments": {
            i.name: {
                "modality": setup.problem.modalities[i.name],
                "cost_s": i.cost_s,
                "move_cost_s_per_mm": i.move_cost_s_per_mm,
            }
            for i in setup.problem.instruments
        },
        "target": {
            "nrmse": round(target, 4),
            "definition": f"median over seeds of {reference}'s final mean nRMSE",
        },
        "policies": curves,
        "paired": _with_savings(
            paired_comparison(_per_seed_nrmse(curves), seconds), curves, reference
        ),
    }


def _with_savings(paired: dict | None, curves: dict, target_from: str) -> dict | None:
    """``paired`` with the share of seconds to the target co-orchestration saves, per baseline
    and against the best, each with its interval (the target recomputed on every resample:
    :func:`~coorch.benchmarks.paired_intervals.seconds_savings`)."""
    if paired is None or not paired["baselines"]:
        return paired
    savings = intervals.seconds_savings(curves, paired["reference"], target_from)
    for b, row in paired["baselines"].items():
        row["seconds_saving"] = savings["baselines"][b]
    return {**paired, "against_best": savings["against_best"]}


def twin_curve(runs: list[Trace], scale: np.ndarray, tasks: Sequence[str]) -> dict:
    """Seed-mean learning curve of one policy: nRMSE per task and mean over tasks against the
    measurement count and the mean cumulative instrument-seconds at that count."""
    nrmse = np.array([np.asarray(t.rmse) / scale for t in runs])  # (S, steps, T)
    at = np.asarray(runs[0].scored_at)
    seconds = np.array([[t.seconds[n - 1] for n in t.scored_at] for t in runs])
    counts = {m: float(np.mean([t.instruments.count(m) for t in runs])) for m in tasks}
    return {
        "measurements": at.tolist(),
        "seconds": seconds.mean(0).round(1).tolist(),
        "nrmse": {m: nrmse[:, :, k].mean(0).round(4).tolist() for k, m in enumerate(tasks)},
        "mean_nrmse": nrmse.mean((0, 2)).round(4).tolist(),
        "per_seed_nrmse": nrmse.mean(2).round(4).tolist(),
        "per_seed_seconds": seconds.round(1).tolist(),
        "final_seconds": float(seconds[:, -1].mean()),
        "measured": counts,
    }


def seconds_to_target(curve: dict, target: float) -> dict:
    """Instrument-seconds at which each seed's mean nRMSE first reaches ``target``; the median
    over seeds (an unreached seed counts as infinitely slow, so the median is ``None`` when
    half or more never reach it) and how many seeds reached it."""
    hits = intervals.first_hits(
        np.asarray(curve["per_seed_nrmse"], float),
        np.asarray(curve["per_seed_seconds"], float),
        target,
    )
    med = float(np.median(hits))
    return {
        "median_s": None if not np.isfinite(med) else round(med, 1),
        "reached": int(np.isfinite(hits).sum()),
        "of": len(hits),
        "per_seed_s": [None if not np.isfinite(h) else round(float(h), 1) for h in hits],
    }


# ---------------------------------------------------------------------------- CLI
def bench_efficiency_command(
    dataset: Path | None = typer.Option(
        None, "--dataset", help="replay file shaped like raman_beps.nc; without it: the twins"
    ),
    library: str = typer.Option("smbfo", help="twins: the virtual library"),
    steps: int = typer.Option(30, min=1, help="decisions after the seed measurements"),
    seeds: int = typer.Option(10, min=1, help="agent seeds of co-orchestration"),
    baseline_seeds: int = typer.Option(0, min=0, help="seeds per baseline (0: as --seeds)"),
    cache: Path | None = typer.Option(
        None, help="keep each campaign's trace in this folder and reuse it on a re-run"
    ),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    plot: Path | None = typer.Option(None, help="save the learning curves to this PNG"),
    workers: int = typer.Option(0, help="processes (0: one per core, at most two)"),
    policy: list[str] = typer.Option(
        list(DEFAULT_POLICIES), "--policy", help="the policies to run (repeat the option)"
    ),
) -> None:
    """Map error vs measurements and instrument time: co-orchestration against the published
    max-uncertainty agent, single-task GPs, random and grid (progress on stderr)."""
    more = {
        "workers": workers or None,
        "baseline_seeds": baseline_seeds or None,
        "cache": cache,
        "policies": tuple(policy),
    }
    if dataset is not None:
        result = run_dataset(dataset, steps=steps, seeds=seeds, **more)
    else:
        budget = steps + 2 * len(TWIN_INSTRUMENTS)
        result = run_twins(library, budget=budget, seeds=seeds, **more)
    if plot is not None:
        print(f"learning curves: {plot_curves(result, plot)}", file=sys.stderr)
    if json_out:
        print(json.dumps(result))
    elif dataset is not None:
        print(format_dataset(result))
    else:
        print(format_twins(result))
