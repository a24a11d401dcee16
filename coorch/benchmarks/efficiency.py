"""``coorch bench efficiency``: how much instrument time each policy needs for the same map.

Two settings, one simulation loop (:func:`simulate`):

* **replay of real data** (:func:`run_dataset`): a file shaped like
  ``smbfo_coorchestration/raman_beps.nc`` (``descriptor(modality, position, latent)``, the
  published run's seeds and, optionally, its per-step errors). Every policy starts from the same
  seed measurements and takes ``steps`` more, one at a time, each answered with the stored
  descriptor, equal cost per modality as in the published run. The score is the RMSE of one
  latent component over every position, the published run's metric, so the published
  multi-task GP is a fair reference.
* **digital twins** (:func:`run_twins`): several instruments with different costs over a virtual
  library; the score is the normalised RMSE of each instrument's physics descriptor on a
  held-out grid against the twins' noiseless ground truth, against the number of measurements
  and against cumulative instrument-seconds (measurement plus stage moves).

Every policy's data are scored by the same procedure: MAP multi-task GP hyperparameters fitted
on that run's data, then the exact posterior mean. The comparison is therefore about *where*
data were taken, not about which model read them. Hyperparameters are refitted after every step
(synchronously: a simulation has no instrument to keep busy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import typer

from coorch.models.incremental import exact_posterior
from coorch.models.mtgp import MTGPHyperparameters, aspect, fit_hyperparameters
from coorch.models.policies import (
    BasePolicy,
    GPPolicy,
    InstrumentModel,
    Observation,
    farthest_point_order,
    log_tasks,
    make_policy,
)

DEFAULT_POLICIES = ("coorchestrate", "max_uncertainty", "single_task", "random", "grid")
TWIN_INSTRUMENTS = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"))


# ---------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class Settings:
    """How hyperparameters are fitted (for decisions and for scoring) and how the
    co-orchestration policy is configured.

    ``max_iter`` bounds the L-BFGS iterations (a benchmark refits ~1000 times; on these data
    the fits converge within 30: 30 and 100 gave the same hyperparameters).

    ``max_correlation`` caps |inter-task correlation| in the *decision* model of the coupled
    knowledge-gain policy: with a handful of points per task the MAP estimate of the task
    covariance runs to +-1, the knowledge gain then believes one modality fully determines the
    other and measures it too little (on raman_beps.nc without the cap and the weights below:
    Raman RMSE 1.147 against the published 1.027; docs/benchmarks.md, "Efficiency").
    ``None``: no cap.

    ``task_weights`` (per task) and ``weight_power`` weight the knowledge gain of each task by
    ``task_weights * y_scale ** weight_power`` (``y_scale``: the task's spread in its own units,
    from the last fit): power 0 counts every task equally in standardised units (right when the
    error is judged normalised, as on the twins), power 2 counts integrated variance in the
    targets' own units (right when, as on the replay file, the error is an RMSE in shared
    latent units, where the rougher Raman latent has ~3x the variance of the BEPS one).
    Only the ``coorchestrate`` policy uses these; the baselines run as published.
    """

    max_iter: int = 30
    max_correlation: float | None = 0.7
    task_weights: tuple[float, ...] | None = None  # coorchestrate's per-task weights
    weight_power: float = 0.0

    def policy_options(self, policy: str) -> dict:
        """Keyword arguments for :func:`make_policy` (only ``coorchestrate`` takes any)."""
        if policy != "coorchestrate":
            return {}
        opts = {"max_correlation": self.max_correlation, "weight_power": self.weight_power}
        if self.task_weights is not None:
            opts["task_weights"] = np.asarray(self.task_weights, float)
        return opts


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a campaign simulation needs, whatever answers the measurements.

    ``candidates`` (M, d) library coordinates the policies choose among; ``bounds`` (d, 2);
    ``query`` (Q, d) where the map is scored and ``truth`` (Q, T) its true values; ``seeds``
    (instrument, candidate index) measured first by every policy.
    """

    tasks: tuple[str, ...]
    instruments: tuple[InstrumentModel, ...]
    candidates: np.ndarray
    bounds: np.ndarray
    query: np.ndarray
    truth: np.ndarray
    seeds: tuple[tuple[str, int], ...]

    def unit(self, x: np.ndarray) -> np.ndarray:
        """Library coordinates -> the unit box the GP works in."""
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return (np.atleast_2d(x) - lo) / (hi - lo)


@dataclasses.dataclass
class Trace:
    """One campaign: cumulative instrument-seconds after each measurement and the map error
    (RMSE per task, truth units) at the scored steps (measurement counts, seeds included)."""

    policy: str
    seed: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    instruments: list[str] = dataclasses.field(default_factory=list)
    scored_at: list[int] = dataclasses.field(default_factory=list)
    rmse: list[list[float]] = dataclasses.field(default_factory=list)


Measure = Callable[[str, np.ndarray], tuple[float, float]]  # (instrument, x) -> (value, seconds)


# ---------------------------------------------------------------------------- fitting, scoring
def fit(problem: Problem, x: np.ndarray, t: np.ndarray, y: np.ndarray, settings: Settings,
        *, seed: int, coupled: bool = True) -> MTGPHyperparameters:
    """MAP hyperparameters with one torch thread (two threads fight over two busy cores)."""
    from coorch.models._threads import torch_scope

    with torch_scope(seed, threads=1):
        return fit_hyperparameters(x, t, y, len(problem.tasks), coupled=coupled,
                                   aspect=aspect(problem.bounds),
                                   log_tasks=log_tasks(problem.instruments),
                                   max_iter=settings.max_iter, seed=seed)


def map_rmse(problem: Problem, h: MTGPHyperparameters, x: np.ndarray, t: np.ndarray,
             y: np.ndarray) -> np.ndarray:
    """RMSE per task (T,) of the posterior mean against the truth at the scored positions."""
    mean, _ = exact_posterior(h, x, t, y, problem.unit(problem.query))
    return np.sqrt(((mean - problem.truth) ** 2).mean(0))


# ---------------------------------------------------------------------------- the campaign
def _observe(policy: BasePolicy, trace: Trace, instrument: str, x: np.ndarray,
             measure: Measure, measurement_id: str) -> None:
    """Measure, tell the policy, and book the instrument time."""
    value, seconds = measure(instrument, x)
    policy.tell([Observation(instrument, x, np.array([value]), measurement_id)])
    trace.seconds.append((trace.seconds[-1] if trace.seconds else 0.0) + seconds)
    trace.instruments.append(instrument)


def _data(policy: BasePolicy, problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everything measured so far, unit box, whatever the policy (random/grid keep it too)."""
    d = problem.candidates.shape[1]
    return (np.asarray(policy.obs_x).reshape(-1, d), np.asarray(policy.obs_t, int),
            np.asarray(policy.obs_y, float))


def _refit(policy: BasePolicy, problem: Problem, settings: Settings, seed: int, *,
           score: bool, decide: bool) -> MTGPHyperparameters | None:
    """Refit after a step: the scoring model (coupled MAP fit, every policy alike) if
    ``score``, and the decision model of a GP policy if ``decide``. One coupled fit serves both
    where they coincide; the single-task policy gets its own decoupled fit."""
    x, t, y = _data(policy, problem)
    gp = policy if isinstance(policy, GPPolicy) and decide else None
    h = None
    if score or (gp is not None and gp.coupled):
        h = fit(problem, x, t, y, settings, seed=seed)
    if gp is not None and gp.coupled:
        gp.set_hyperparameters(h)  # its own options (cap, weights) apply inside
    elif gp is not None:
        gp.set_hyperparameters(fit(problem, x, t, y, settings, seed=seed, coupled=False))
    return h


def simulate(problem: Problem, policy_name: str, seed: int, steps: int, measure: Measure,
             settings: Settings, score_every: int = 1) -> Trace:
    """Seeds, then ``steps`` one-at-a-time decisions ``policy.ask(None)``, refitting after each
    step and scoring every ``score_every`` steps and after the last."""
    policy = make_policy(policy_name, problem.candidates, problem.bounds, problem.instruments,
                         seed=seed, **settings.policy_options(policy_name))
    trace = Trace(policy_name, seed)
    for i, (inst, c) in enumerate(problem.seeds):
        _observe(policy, trace, inst, problem.candidates[c], measure, f"seed-{i}")
    for step in range(steps + 1):
        last = step == steps
        score = last or step % score_every == 0
        h = _refit(policy, problem, settings, seed, score=score, decide=not last)
        if score:
            trace.scored_at.append(len(trace.seconds))
            trace.rmse.append(map_rmse(problem, h, *_data(policy, problem)).tolist())
        if last:
            break
        s = policy.ask(None)
        _observe(policy, trace, s.instrument, s.x, measure, s.measurement_id)
    if isinstance(policy, GPPolicy):
        policy.close()
    return trace


# ---------------------------------------------------------------------------- real data
REPLAY_SETTINGS = Settings(max_correlation=0.7, weight_power=2.0)  # error judged in latent units
@dataclasses.dataclass(frozen=True)
class Replay:
    """A replay file reduced to what the benchmark needs: ``values`` (P, T) of one latent
    component per position and modality, the published seeds and published final errors."""

    problem: Problem
    values: np.ndarray
    published: dict[str, dict[str, float]]


def load_replay(path: str | Path, component: int = 1) -> Replay:
    """Read a ``descriptor(modality, position, latent)`` file. Positions are their index along
    the library (1-D: the published run's composition axis); every position is a candidate and
    is scored; one task per modality, equal cost (the published agent ignored cost)."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        ds = ds.load()
    desc = ds["descriptor"].transpose("modality", "position", ...)
    modalities = tuple(str(m) for m in desc["modality"].values)
    values = np.asarray(desc.values, float).reshape(len(modalities), desc.sizes["position"], -1)
    values = values[:, :, component].T  # (P, T)
    n = len(values)
    candidates = np.arange(n, dtype=float)[:, None]
    instruments = tuple(InstrumentModel(m, (k,), cost_s=1.0) for k, m in enumerate(modalities))
    seeds = tuple((modalities[int(m)], int(p)) for p, m in
                  zip(ds["seed_position"].values, ds["seed_modality"].values, strict=True))
    problem = Problem(tasks=modalities, instruments=instruments, candidates=candidates,
                      bounds=np.array([[0.0, max(n - 1.0, 1.0)]]), query=candidates,
                      truth=values, seeds=seeds)
    return Replay(problem, values, published_errors(ds, modalities))


def published_errors(ds, modalities: Sequence[str]) -> dict[str, dict[str, float]]:
    """The file's published RMSE after its last step, per model and modality (task index =
    modality index), only for the variables the file has."""
    out: dict[str, dict[str, float]] = {}
    for key, var in (("mtgp", "published_rmse_mtgp"), ("gp", "published_rmse_gp")):
        if var in ds.data_vars:
            last = np.asarray(ds[var].values, float)[-1]
            out[key] = {m: float(last[k]) for k, m in enumerate(modalities) if k < len(last)}
    return out


def replay_measure(replay: Replay) -> Measure:
    """Answer a measurement with the stored value at the nearest position, one second each."""
    tasks = list(replay.problem.tasks)
    cand = replay.problem.candidates

    def measure(instrument: str, x: np.ndarray) -> tuple[float, float]:
        p = int(np.argmin(((cand - np.atleast_2d(x)) ** 2).sum(1)))
        return float(replay.values[p, tasks.index(instrument)]), 1.0

    return measure


def _dataset_job(path: str, component: int, policy: str, seed: int, steps: int,
                 settings: Settings, score_every: int) -> Trace:
    """One replay campaign (top-level so that a process pool can run it)."""
    replay = load_replay(path, component)
    return simulate(replay.problem, policy, seed, steps, replay_measure(replay), settings,
                    score_every)


def run_dataset(path: str | Path, steps: int = 30, seeds: int = 5, component: int = 1,
                policies: Sequence[str] = DEFAULT_POLICIES, *,
                settings: Settings | None = None, score_every: int = 1,
                workers: int | None = None) -> dict:
    """Every policy on a replay file, ``seeds`` agent seeds each; RMSE and nRMSE (RMSE / std of
    the component over all positions) per modality after the last step, mean over seeds, the
    published figures where the file has them, and the learning curves under ``curves``."""
    settings = settings or REPLAY_SETTINGS
    replay = load_replay(path, component)
    jobs = [(str(path), component, p, s, steps, settings, score_every)
            for p in policies for s in range(seeds)]
    traces = run_jobs(_dataset_job, jobs, workers)
    scale = replay.values.std(0)
    tasks = replay.problem.tasks
    out: dict = {"policies": {}, "published": replay.published, "curves": {}}
    for p in policies:
        runs = [t for t in traces if t.policy == p]
        rmse = np.mean([t.rmse for t in runs], axis=0)  # (scored steps, T)
        out["policies"][p] = {"rmse": _per_task(tasks, rmse[-1]),
                              "nrmse": _per_task(tasks, rmse[-1] / scale)}
        out["curves"][p] = {"measurements": runs[0].scored_at,
                            "rmse": {m: rmse[:, k].round(4).tolist() for k, m in
                                     enumerate(tasks)},
                            "rmse_final_per_seed": [_per_task(tasks, np.asarray(t.rmse[-1]))
                                                    for t in runs],
                            "measured": {m: float(np.mean([t.instruments.count(m) for t in runs]))
                                         for m in tasks}}
    return out


def _per_task(tasks: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {m: round(float(v), 4) for m, v in zip(tasks, values, strict=True)}


def run_jobs(fn: Callable[..., Trace], jobs: list[tuple], workers: int | None = None
             ) -> list[Trace]:
    """Run campaign jobs, in ``workers`` spawned processes (default: one per core, at most
    two: the fits are single-threaded), reporting progress on stderr (stdout carries JSON)."""
    workers = workers or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()

    def done(i: int, tr: Trace) -> None:
        err = ", ".join(f"{v:.3f}" for v in tr.rmse[-1])
        print(f"[{i + 1}/{len(jobs)} {time.perf_counter() - t0:6.1f} s] {tr.policy} seed "
              f"{tr.seed}: final RMSE {err}", file=sys.stderr, flush=True)

    if workers <= 1 or len(jobs) <= 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(fn(*job))
            done(i, out[-1])
        return out
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        out = []
        for i, fut in enumerate(futures):
            out.append(fut.result())
            done(i, out[-1])
        return out


# ---------------------------------------------------------------------------- digital twins
TWIN_GRIDS = {"smbfo": ((25, 3), (60, 3)), "alscbn": ((9, 9), (20, 20))}  # candidates, truth
#: Modalities modelled as their log, per library, as a campaign declares them
#: (``InstrumentConfig.log_scale``): how the library was made. alscbn's Sc comes from a sputter
#: gun and falls off exponentially away from it; smbfo's Sm is a linear wedge from ~0 at.%,
#: whose log the trend cannot follow (tried: WDS nRMSE 0.21 against 0.10 as is).
TWIN_LOG_SCALE = {"alscbn": ("wds",)}


@dataclasses.dataclass
class TwinSetup:
    """Twins of the instruments over one library, the problem they pose and the modality each
    is scored on."""

    problem: Problem
    twins: dict[str, object]
    modalities: dict[str, str]


def twin_setup(library: str = "smbfo", seed: int = 0,
               instruments: Sequence[tuple[str, str]] = TWIN_INSTRUMENTS) -> TwinSetup:
    """Twins seeded by the agent seed (their noise differs per seed; the truth does not).
    Candidates are grid nodes, the truth grid is cell centres (held out); each instrument is
    seeded at the two farthest-apart candidates. Cost = the modality's measurement time from
    ``describe()`` plus the twin's stage-move time."""
    from coorch.instrument_agents.twins import make_twin
    from coorch.tasks.report import ground_truth

    twins = {kind: make_twin(kind, library, seed=seed + k) for k, (kind, _) in
             enumerate(instruments)}
    modalities = dict(instruments)
    extent = np.asarray(next(iter(twins.values())).library.extent, float)
    cand_shape, truth_shape = TWIN_GRIDS.get(library, ((15, 15), (20, 20)))
    candidates = grid_nodes(extent, cand_shape)
    truth = ground_truth(twins, modalities, extent, truth_shape)
    models = tuple(
        InstrumentModel(kind, (k,), cost_s=twins[kind].describe().modality(mod).cost_s,
                        move_cost_s_per_mm=twins[kind].move_cost_s_per_mm,
                        log_scale=mod in TWIN_LOG_SCALE.get(library, ()))
        for k, (kind, mod) in enumerate(instruments))
    ends = farthest_point_order(candidates)[:2]
    seeds = tuple((kind, int(c)) for kind, _ in instruments for c in ends)
    problem = Problem(tasks=tuple(twins), instruments=models, candidates=candidates,
                      bounds=extent, query=truth.grid, truth=truth.values, seeds=seeds)
    return TwinSetup(problem, twins, modalities)


def grid_nodes(extent: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A regular grid of ``shape`` nodes inset from the library's edges, (nx * ny, 2) mm."""
    (x0, x1), (y0, y1) = extent
    nx, ny = shape
    inset = lambda a, b, n: np.linspace(a + (b - a) / (2 * n), b - (b - a) / (2 * n), n)  # noqa: E731
    gx, gy = np.meshgrid(inset(x0, x1, nx), inset(y0, y1, ny))
    return np.column_stack([gx.ravel(), gy.ravel()])


def twin_measure(setup: TwinSetup) -> Measure:
    """Move the twin (in its stage frame), measure (noise, drift and all), reduce the signal to
    its physics descriptor; the seconds are the measurement's cost plus the move's."""
    from coorch.models.descriptors import describe

    costs = {i.name: i for i in setup.problem.instruments}
    extent = setup.problem.bounds
    where = {name: extent.mean(1) for name in setup.twins}  # twins start at the centre

    def measure(instrument: str, x: np.ndarray) -> tuple[float, float]:
        twin, mod = setup.twins[instrument], setup.modalities[instrument]
        x = np.asarray(x, float).reshape(-1)
        twin.move(*twin.frame.to_stage(x[0], x[1]))
        signal = twin.measure(mod, {})
        inst = costs[instrument]
        seconds = inst.cost_s + inst.move_cost_s_per_mm * float(np.hypot(*(x - where[instrument])))
        where[instrument] = x
        return float(describe(mod, signal)[0]), seconds

    return measure


def _twins_job(library: str, policy: str, seed: int, budget: int, settings: Settings,
               score_every: int) -> Trace:
    """One twin campaign of ``budget`` measurements, seeds included."""
    setup = twin_setup(library, seed)
    steps = max(budget - len(setup.problem.seeds), 0)
    return simulate(setup.problem, policy, seed, steps, twin_measure(setup), settings,
                    score_every)


def run_twins(library: str = "smbfo", budget: int = 40, seeds: int = 5,
              policies: Sequence[str] = DEFAULT_POLICIES, *, settings: Settings | None = None,
              score_every: int = 2, workers: int | None = None) -> dict:
    """Every policy on the twins; normalised RMSE (RMSE / std of the truth over the held-out
    grid, per task, then mean over tasks) vs measurements and vs instrument-seconds, and the
    instrument-seconds each policy needs to reach the error target: the median over seeds of
    the nRMSE the random policy reaches with the full budget."""
    settings = settings or Settings()
    setup = twin_setup(library, 0)
    scale = setup.problem.truth.std(0)
    jobs = [(library, p, s, budget, settings, score_every) for p in policies
            for s in range(seeds)]
    traces = run_jobs(_twins_job, jobs, workers)
    tasks = setup.problem.tasks
    curves = {p: twin_curve([t for t in traces if t.policy == p], scale, tasks)
              for p in policies}
    reference = "random" if "random" in curves else policies[-1]
    target = float(np.median([c[-1] for c in curves[reference]["per_seed_nrmse"]]))
    for p in policies:
        curves[p]["to_target"] = seconds_to_target(curves[p], target)
    return {"library": library, "budget": budget, "seeds": seeds,
            "instruments": {i.name: {"modality": setup.modalities[i.name], "cost_s": i.cost_s,
                                     "move_cost_s_per_mm": i.move_cost_s_per_mm}
                            for i in setup.problem.instruments},
            "target": {"nrmse": round(target, 4),
                       "definition": f"median over seeds of {reference}'s final mean nRMSE"},
            "policies": curves}


def twin_curve(runs: list[Trace], scale: np.ndarray, tasks: Sequence[str]) -> dict:
    """Seed-mean learning curve of one policy: nRMSE per task and mean over tasks against the
    measurement count and the mean cumulative instrument-seconds at that count."""
    nrmse = np.array([np.asarray(t.rmse) / scale for t in runs])  # (S, steps, T)
    at = np.asarray(runs[0].scored_at)
    seconds = np.array([[t.seconds[n - 1] for n in t.scored_at] for t in runs])
    counts = {m: float(np.mean([t.instruments.count(m) for t in runs])) for m in tasks}
    return {"measurements": at.tolist(),
            "seconds": seconds.mean(0).round(1).tolist(),
            "nrmse": {m: nrmse[:, :, k].mean(0).round(4).tolist() for k, m in enumerate(tasks)},
            "mean_nrmse": nrmse.mean((0, 2)).round(4).tolist(),
            "per_seed_nrmse": nrmse.mean(2).round(4).tolist(),
            "per_seed_seconds": seconds.round(1).tolist(),
            "final_seconds": float(seconds[:, -1].mean()),
            "measured": counts}


def seconds_to_target(curve: dict, target: float) -> dict:
    """Instrument-seconds at which each seed's mean nRMSE first reaches ``target``; the median
    over seeds (an unreached seed counts as infinitely slow, so the median is ``None`` when
    half or more never reach it) and how many seeds reached it."""
    hits = []
    for err, sec in zip(curve["per_seed_nrmse"], curve["per_seed_seconds"], strict=True):
        idx = np.flatnonzero(np.asarray(err) <= target)
        hits.append(sec[idx[0]] if len(idx) else np.inf)
    med = float(np.median(hits))
    return {"median_s": None if not np.isfinite(med) else round(med, 1),
            "reached": int(np.isfinite(hits).sum()), "of": len(hits),
            "per_seed_s": [None if not np.isfinite(h) else round(float(h), 1) for h in hits]}


# ---------------------------------------------------------------------------- plot, CLI
def plot_curves(result: dict, path: Path) -> Path:
    """Save the learning curves of :func:`run_dataset` (RMSE per modality vs measurements, the
    published final errors as dashed lines) or of :func:`run_twins` (mean nRMSE vs
    measurements and vs instrument-seconds, the target dotted) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    twins = "target" in result
    tasks = (["mean"] if twins else
             list(next(iter(result["policies"].values()))["rmse"]))
    fig, axes = plt.subplots(1, 2 if twins else len(tasks), figsize=(12, 4.5), squeeze=False)
    if twins:
        _plot_twins(result, axes[0])
    else:
        _plot_dataset(result, axes[0], tasks)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_dataset(result: dict, axes, tasks: list[str]) -> None:
    for ax, m in zip(axes, tasks, strict=True):
        for p, c in result["curves"].items():
            ax.plot(c["measurements"], c["rmse"][m], label=p)
        for k, (model, style) in enumerate((("mtgp", "--"), ("gp", ":"))):
            if m in result["published"].get(model, {}):
                ax.axhline(result["published"][model][m], ls=style, color=f"C{7 + k}",
                           label=f"published {model} (final)")
        ax.set(title=f"{m}: RMSE vs measurements", xlabel="measurements (seeds included)",
               ylabel="RMSE (latent units)")
        ax.legend(fontsize=8)


def _plot_twins(result: dict, axes) -> None:
    for p, c in result["policies"].items():
        axes[0].plot(c["measurements"], c["mean_nrmse"], label=p)
        axes[1].plot(c["seconds"], c["mean_nrmse"], label=p)
    for ax, xlabel in zip(axes, ("measurements (seeds included)", "instrument-seconds"),
                          strict=True):
        ax.axhline(result["target"]["nrmse"], ls=":", color="k", label="target")
        ax.set(title=f"{result['library']}: mean nRMSE vs {xlabel.split(' (')[0]}",
               xlabel=xlabel, ylabel="normalised RMSE (mean over tasks)", yscale="log")
        ax.legend(fontsize=8)


def bench_efficiency_command(
    dataset: Path | None = typer.Option(
        None, "--dataset", help="replay file shaped like raman_beps.nc; without it: the twins"),
    library: str = typer.Option("smbfo", help="twins: the virtual library"),
    steps: int = typer.Option(30, min=1, help="decisions after the seed measurements"),
    seeds: int = typer.Option(5, min=1, help="agent seeds per policy"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    plot: Path | None = typer.Option(None, help="save the learning curves to this PNG"),
    workers: int = typer.Option(0, help="processes (0: one per core, at most two)"),
) -> None:
    """Map error vs measurements and instrument time: co-orchestration against the published
    max-uncertainty agent, single-task GPs, random and grid (progress on stderr)."""
    if dataset is not None:
        result = run_dataset(dataset, steps=steps, seeds=seeds, workers=workers or None)
    else:
        budget = steps + 2 * len(TWIN_INSTRUMENTS)
        result = run_twins(library, budget=budget, seeds=seeds, workers=workers or None)
    if plot is not None:
        print(f"learning curves: {plot_curves(result, plot)}", file=sys.stderr)
    if json_out:
        print(json.dumps(result))
    elif dataset is not None:
        print(format_dataset(result))
    else:
        print(format_twins(result))


def format_dataset(result: dict) -> str:
    """A plain-text table of final RMSE (nRMSE) per policy and modality."""
    tasks = list(next(iter(result["policies"].values()))["rmse"])
    lines = [f"{'policy':<18}" + "".join(f"{m:>28}" for m in tasks)]
    for p, v in result["policies"].items():
        lines.append(f"{p:<18}" + "".join(
            f"{v['rmse'][m]:>18.3f} ({v['nrmse'][m]:.3f})" for m in tasks))
    for model, v in result["published"].items():
        lines.append(f"{'published ' + model:<18}" + "".join(
            f"{v.get(m, float('nan')):>28.3f}" for m in tasks))
    return "\n".join(lines)


def format_twins(result: dict) -> str:
    """A plain-text table: final nRMSE, instrument-seconds spent, seconds to the target."""
    t = result["target"]
    lines = [f"target nRMSE {t['nrmse']:.3f} ({t['definition']})",
             f"{'policy':<18}{'final nRMSE':>12}{'seconds used':>14}{'s to target':>13}"
             f"{'reached':>9}"]
    for p, c in result["policies"].items():
        tt = c["to_target"]
        med = "never" if tt["median_s"] is None else f"{tt['median_s']:.0f}"
        lines.append(f"{p:<18}{c['mean_nrmse'][-1]:>12.3f}{c['final_seconds']:>14.0f}"
                     f"{med:>13}{tt['reached']:>6}/{tt['of']}")
    return "\n".join(lines)
