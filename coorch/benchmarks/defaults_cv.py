"""``coorch bench defaults``: co-orchestration's defaults chosen by cross-validation.

Why: a setting tuned on the one file it is then scored on wins there and nowhere else (issue
15: the correlation cap of 0.7, chosen on the shared replay file, came third on a second real
experiment). So each candidate setting is run on every problem (the smbfo and alscbn twins, and
the shared replay file, both of its modalities scored), and the setting is chosen leaving one
problem out: for each problem, the candidate with the best score on the *other* problems is
the one that would have been chosen without it, and its rank on the held-out problem says
whether the choice carries over. The default is the candidate chosen in the most folds (ties:
the better mean score over all problems); the benchmarks then run it and nothing else.

Score of one run: the mean over its learning curve of log(mean nRMSE over tasks), against
instrument-seconds up to a horizon every run of that problem reaches (twins) or against
measurements (the replay, equal costs): lower is better, and it rewards reaching a good map
early, which is what "fewer instrument-seconds to the target" asks. Scores are compared within
a problem only (each problem's scores minus their mean over candidates), so a hard problem
does not outvote an easy one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import typer

from coorch.benchmarks.efficiency import _dataset_job, _twins_job, run_jobs
from coorch.benchmarks.problems import load_replay, twin_setup
from coorch.benchmarks.simulate import Settings, Trace

#: The candidates: one change at a time from the plain setting (Laplace draws in every fit,
#: the sum of the tasks' normalised squared errors as the objective, the correlation cap of
#: earlier releases): the sum of normalised errors (RMSE, not squared: the benchmarks' score),
#: the worst task first, no cap.
CANDIDATES: dict[str, Settings] = {
    "sum": Settings(balance=0.0, max_correlation=0.7),
    "sum-rmse": Settings(balance=-0.5, max_correlation=0.7),
    "worst-first": Settings(balance=1.0, max_correlation=0.7),
    "sum-uncapped": Settings(balance=0.0, max_correlation=None),
}
TWINS = ("smbfo", "alscbn")


def curve_score(runs: Sequence[Trace], scale: np.ndarray, horizon: float | None) -> list[float]:
    """Per run: mean of log(mean nRMSE) over the curve, against instrument-seconds up to
    ``horizon`` (interpolated on 50 points), or over the scored steps when ``horizon`` is None."""
    out = []
    for t in runs:
        err = np.log(np.mean(np.asarray(t.rmse) / scale, axis=1))
        if horizon is None:
            out.append(float(err.mean()))
            continue
        sec = np.array([t.seconds[n - 1] for n in t.scored_at])
        grid = np.linspace(sec[0], horizon, 50)
        out.append(float(np.interp(grid, sec, err).mean()))
    return out


def _twin_scores(library: str, traces: dict[str, list[Trace]]) -> dict[str, list[float]]:
    scale = twin_setup(library, 0).problem.truth.std(0)
    horizon = min(t.seconds[-1] for runs in traces.values() for t in runs)
    return {c: curve_score(runs, scale, horizon) for c, runs in traces.items()}


def _replay_scores(path: str, traces: dict[str, list[Trace]]) -> dict[str, list[float]]:
    scale = load_replay(path, 1).values.std(0)
    return {c: curve_score(runs, scale, None) for c, runs in traces.items()}


def leave_one_out(scores: dict[str, dict[str, float]]) -> dict:
    """``scores[problem][candidate]`` (lower better) -> per held-out problem the candidate
    best on the others and its rank on the held-out one (1 = best), and the default."""
    problems = list(scores)
    cands = list(next(iter(scores.values())))
    centred = {
        p: {c: v - np.mean(list(s.values())) for c, v in s.items()} for p, s in scores.items()
    }
    folds = {}
    for held in problems:
        rest = [p for p in problems if p != held]
        chosen = min(cands, key=lambda c: np.mean([centred[p][c] for p in rest]))
        ranked = sorted(cands, key=lambda c: scores[held][c])
        folds[held] = {"chosen": chosen, "rank_on_held_out": ranked.index(chosen) + 1}
    overall = {c: float(np.mean([centred[p][c] for p in problems])) for c in cands}
    votes = {c: sum(f["chosen"] == c for f in folds.values()) for c in cands}
    default = max(cands, key=lambda c: (votes[c], -overall[c]))
    return {"folds": folds, "votes": votes, "mean_centred_score": overall, "default": default}


def run_cv(
    replay: str | Path | None,
    *,
    seeds: int = 5,
    budget: int = 40,
    steps: int = 30,
    candidates: dict[str, Settings] = CANDIDATES,
    workers: int | None = None,
    cache: Path | None = None,
) -> dict:
    """Every candidate on every problem, ``seeds`` agent seeds each (co-orchestration only:
    the baselines have no settings), the scores and the leave-one-problem-out choice."""
    twin_jobs = [
        (lib, "coorchestrate", s, budget, settings, 2)
        for settings in candidates.values()
        for lib in TWINS
        for s in range(seeds)
    ]
    replay_jobs = [
        (str(Path(replay).resolve()), 1, "coorchestrate", s, steps, settings, 1)
        for settings in candidates.values()
        for s in range(seeds)
        if replay is not None
    ]
    grouped: dict[str, dict[str, list[Trace]]] = {}
    names = [n for n in candidates for _ in TWINS for _ in range(seeds)]
    for job, name, tr in zip(
        twin_jobs, names, run_jobs(_twins_job, twin_jobs, workers, cache), strict=True
    ):
        grouped.setdefault(job[0], {}).setdefault(name, []).append(tr)
    names = [n for n in candidates for _ in range(seeds)] if replay is not None else []
    for name, tr in zip(names, run_jobs(_dataset_job, replay_jobs, workers, cache), strict=True):
        grouped.setdefault("replay", {}).setdefault(name, []).append(tr)
    per_seed = {
        p: (_replay_scores(str(replay), g) if p == "replay" else _twin_scores(p, g))
        for p, g in grouped.items()
    }
    scores = {p: {c: float(np.mean(v)) for c, v in s.items()} for p, s in per_seed.items()}
    return {
        "candidates": {c: dataclasses.asdict(s) for c, s in candidates.items()},
        "seeds": seeds,
        "scores": scores,
        "per_seed": per_seed,
        **leave_one_out(scores),
    }


def format_cv(result: dict) -> str:
    """A plain-text table: score per problem and candidate, each fold's choice, the default."""
    problems = list(result["scores"])
    lines = [f"{'candidate':<14}" + "".join(f"{p:>10}" for p in problems) + f"{'votes':>7}"]
    for c in result["votes"]:
        row = "".join(f"{result['scores'][p][c]:>10.3f}" for p in problems)
        lines.append(f"{c:<14}{row}{result['votes'][c]:>7}")
    for p, f in result["folds"].items():
        lines.append(f"without {p}: chosen {f['chosen']!r}, rank {f['rank_on_held_out']} on {p}")
    lines.append(f"default: {result['default']!r}")
    return "\n".join(lines)


def bench_defaults_command(
    dataset: Path | None = typer.Option(None, help="the replay file (raman_beps.nc)"),
    seeds: int = typer.Option(5, min=1, help="agent seeds per candidate and problem"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    workers: int = typer.Option(0, help="processes (0: one per core, at most two)"),
    cache: Path | None = typer.Option(
        None, help="keep each campaign's trace in this folder and reuse it on a re-run"
    ),
) -> None:
    """Choose co-orchestration's defaults by leave-one-problem-out cross-validation over the
    twins and the replay file (progress on stderr)."""
    result = run_cv(dataset, seeds=seeds, workers=workers or None, cache=cache)
    print(json.dumps(result) if json_out else format_cv(result))
    print(f"default: {result['default']}", file=sys.stderr)
