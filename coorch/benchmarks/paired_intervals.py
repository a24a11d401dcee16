"""How sure a paired comparison is: 95 % bootstrap intervals over the agent seeds.

A benchmark run on 10 seeds gives one median and one mean per policy, and a check such as
"30 % fewer instrument-seconds than the best baseline" is then decided by a figure whose
seed-to-seed spread can be larger than the margin (on the twins one seed reaches the target at
840 s, another at 1320 s). The intervals say how far the figure would move with other seeds.
Seeds are paired (the same seed gives every policy the same twin and the same seed
measurements), so the seeds are resampled together (``scipy.stats.bootstrap``: ``paired``, or
the seed indices resampled when the statistic reads whole learning curves), and everything the
figure is made of is recomputed on each resample, the twins' error target included. The
percentile interval is used because the seconds' statistic is a ratio of medians that may be
infinite (a median seed that never reached the target), where BCa's jackknife breaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import bootstrap

#: The interval's coverage.
CONFIDENCE = 0.95
#: Bootstrap resamples; fixed generator seed, so a table is the same on every run.
RESAMPLES = 9999


def mean_difference(reference: Sequence[float], baseline: Sequence[float]) -> dict:
    """Mean over seeds of ``reference - baseline`` (below 0: the reference is lower, i.e.
    better for an error), with its interval (``low``, ``high``; None under 2 seeds)."""
    r, b = np.asarray(reference, float), np.asarray(baseline, float)
    return _summary(float(np.mean(r - b)), _interval((r, b), _mean_difference))


def _mean_difference(r: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(r - b, axis=axis)


def _interval(
    data: tuple[np.ndarray, ...], statistic, vectorized: bool = True
) -> tuple[float, float] | None:
    if len(data[0]) < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # the spread of an infinite draw
        ci = bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=vectorized,
            method="percentile",
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            rng=np.random.default_rng(0),
        ).confidence_interval
    return float(ci.low), float(ci.high)


def _summary(value: float, interval: tuple[float, float] | None) -> dict:
    low, high = interval if interval is not None else (None, None)
    return {"value": _rounded(value), "low": _rounded(low), "high": _rounded(high)}


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def seconds_savings(curves: Mapping[str, dict], reference: str, target_from: str) -> dict:
    """The share of instrument-seconds to the error target ``reference`` saves, against each
    other policy and against the best of them (the lowest median; recomputed on every
    resample: which baseline is best is part of what varies), each with its interval.

    ``curves``: per policy, the seeds it ran (``final.seeds``) and per seed the mean nRMSE and
    cumulative seconds at each scored step (``per_seed_nrmse``, ``per_seed_seconds``). The
    target is the median final mean nRMSE of ``target_from`` and is recomputed on every
    resample too: it is a figure of the same seeds (on smbfo it moved from 0.111 to 0.129
    between 10 and 20 seeds). A seed that never reaches the target is infinitely slow, so a
    saving is 1 when the reference's median seed reaches it and the baseline's does not, and
    ``-inf`` when the reference's does not. Seeds: those every policy ran.
    """
    seeds = sorted(set.intersection(*(set(c["final"]["seeds"]) for c in curves.values())))
    err, sec = {}, {}
    for p, c in curves.items():
        rows = [c["final"]["seeds"].index(s) for s in seeds]
        err[p] = np.asarray(c["per_seed_nrmse"], float)[rows]
        sec[p] = np.asarray(c["per_seed_seconds"], float)[rows]
    others = [p for p in curves if p != reference]

    def saving(idx: np.ndarray, against: Sequence[str]) -> float:
        idx = np.asarray(idx, int)
        target = np.median(err[target_from][idx, -1])
        med = {
            p: np.median(first_hits(err[p][idx], sec[p][idx], target))
            for p in (reference, *against)
        }
        best = min(med[b] for b in against)
        if np.isinf(med[reference]):
            return -np.inf
        return 1.0 - med[reference] / best if np.isfinite(best) else 1.0

    def summary(against: Sequence[str]) -> dict:
        index = np.arange(len(seeds))
        value = saving(index, against)
        return _summary(value, _interval((index,), lambda i: saving(i, against), False))

    target = np.median(err[target_from][:, -1])
    best = min(others, key=lambda p: np.median(first_hits(err[p], sec[p], target)))
    return {
        "baselines": {b: summary([b]) for b in others},
        "against_best": {"best": best, "seeds": len(seeds), **summary(others)},
    }


def first_hits(err: np.ndarray, sec: np.ndarray, target: float) -> np.ndarray:
    """(S,) seconds at each seed's first scored step at or below ``target``, inf if none
    (``err``, ``sec``: (S, steps) per seed; the rule of ``seconds_to_target`` too)."""
    reached = err <= target
    first = reached.argmax(1)
    return np.where(reached.any(1), sec[np.arange(len(sec)), first], np.inf)
