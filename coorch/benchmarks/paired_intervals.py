"""How sure a paired comparison is: 95 % bootstrap intervals over the agent seeds.

A benchmark run on 10 seeds gives one median and one mean per policy, and a check such as
"30 % fewer instrument-seconds than the best baseline" is then decided by a figure whose
seed-to-seed spread can be larger than the margin (on the twins one seed reaches the target at
840 s, another at 1320 s). The intervals say how far the figure would move with other seeds.
Seeds are paired (the same seed gives every policy the same twin and the same seed
measurements), so the seeds are resampled together (``scipy.stats.bootstrap``, ``paired``),
and the percentile interval is used because the seconds' statistic is a ratio of medians that
may be infinite (a median seed that never reached the target), where BCa's jackknife breaks.
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


def seconds_saving(reference: Sequence[float | None], *baselines: Sequence[float | None]) -> dict:
    """``1 - median(reference) / median(best baseline)``, the share of instrument-seconds to
    the target the reference saves against the baseline with the lowest median (recomputed on
    every resample: which baseline is best is part of what varies), with its interval. None
    in a sequence: that seed never reached the target (infinitely slow). 1 when no baseline's
    median reaches it and the reference's does; ``-inf`` when the reference's does not."""
    data = tuple(_seconds(s) for s in (reference, *baselines))
    value = float(_saving(*data))
    return _summary(value, _interval(data, _saving))


def _seconds(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.inf if v is None else v for v in values], float)


def _mean_difference(r: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(r - b, axis=axis)


def _saving(r: np.ndarray, *baselines: np.ndarray, axis: int = -1) -> np.ndarray:
    mr = np.median(r, axis=axis)
    mb = np.min([np.median(b, axis=axis) for b in baselines], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - mr / mb
    return np.where(np.isinf(mr), -np.inf, out)


def _interval(data: tuple[np.ndarray, ...], statistic) -> tuple[float, float] | None:
    if len(data[0]) < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # the spread of an infinite draw
        ci = bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
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


def per_baseline_seconds(
    seconds: Mapping[str, Mapping[int, float | None]], reference: str, baseline: str
) -> dict:
    """:func:`seconds_saving` of ``reference`` against one ``baseline`` on the seeds both ran."""
    seeds = sorted(set(seconds[reference]) & set(seconds[baseline]))
    return seconds_saving(
        [seconds[reference][s] for s in seeds], [seconds[baseline][s] for s in seeds]
    )


def against_best(seconds: Mapping[str, Mapping[int, float | None]], reference: str) -> dict:
    """:func:`seconds_saving` of ``reference`` against the best of every other policy, on the
    seeds all of them ran, with the name of the best on the full sample."""
    others = [p for p in seconds if p != reference]
    seeds = sorted(set.intersection(*(set(seconds[p]) for p in seconds)))
    runs = {p: [seconds[p][s] for s in seeds] for p in seconds}
    best = min(others, key=lambda p: float(np.median(_seconds(runs[p]))))
    out = seconds_saving(runs[reference], *(runs[p] for p in others))
    return {"best": best, "seeds": len(seeds), **out}
