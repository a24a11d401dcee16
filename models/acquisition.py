"""Acquisitions on the incremental posterior: pure scores over the candidates.

The integrated variance reduction of measuring instrument ``i`` (observing its tasks ``O``) at
position ``x`` (the "knowledge gain" of the co-orchestration papers; botorch's
``qNegIntegratedPosteriorVariance``) is the expected reduction of integrated posterior variance
over the library, summed over all tasks with weights ``w`` (by default 1 / prior variance, so
each modality counts equally):

    G(x, O) = mean_r sum_t w_rt  c_rt^T (C_OO(x) + N_O)^-1 c_rt,   c_rt = Cov[f_t(r), f_O(x)]

It is the variance a measurement removes everywhere, including from the *other* modalities
through the task covariance: the mechanism by which one instrument speeds up the others.
The weights may vary with position (``w`` (M, T) over the candidates): a task the GP models as
its logarithm is judged in its own units, where a unit of log-variance is worth more where the
amount is large (``MTGPAgent``, "value scale").
Two stages keep it fast: a local score (the reduction at x itself, O(M T^2) from the maintained
cross-task covariance) picks the top-k positions, then the integrated gain over a reference set
of R positions ranks those k with one GEMM.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from coorch.models.incremental import IncrementalPosterior


def local_variance_reduction(
    post: IncrementalPosterior, tasks: list[int], weights: np.ndarray
) -> np.ndarray:
    """Weighted variance reduction at each candidate's own position, shape (M,);
    ``weights`` (M, T)."""
    c = post.C  # (M, T, T)
    if len(tasks) == 1:  # the common case, without a batched solve
        o = tasks[0]
        return (c[:, :, o] ** 2 * weights).sum(1) / (c[:, o, o] + post.hyper.noise[o])
    c_oo = c[:, tasks][:, :, tasks] + np.diag(post.hyper.noise[tasks])[None]
    c_to = c[:, :, tasks]  # (M, T, O)
    sol = np.linalg.solve(c_oo, np.swapaxes(c_to, 1, 2))  # (M, O, T)
    return np.einsum("mto,mot,mt->m", c_to, sol, weights)


def integrated_variance_reduction_at(
    post: IncrementalPosterior, idx: np.ndarray, tasks: list[int], weights: np.ndarray
) -> np.ndarray:
    """Weighted integrated variance reduction over the posterior's reference positions for
    candidates ``idx``, shape (K,); ``weights`` (M, T) over all candidates."""
    cov = post.cross_covariance(idx, tasks)  # (K, O, R, T)
    ref = post.reference
    c = post.C[idx][:, tasks][:, :, tasks] + np.diag(post.hyper.noise[tasks])[None]
    sol = np.linalg.solve(c, cov.reshape(len(idx), len(tasks), -1))  # (K, O, R*T)
    red = (cov.reshape(sol.shape) * sol).sum(1).reshape(len(idx), len(ref), -1)  # (K, R, T)
    return (red * weights[ref][None]).sum(2).mean(1)


def integrated_variance_reduction(
    post: IncrementalPosterior,
    tasks: list[int],
    weights: np.ndarray,
    *,
    top_k: int = 32,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate indices (k,) and their integrated gain (k,), best first; ``weights`` (M, T)
    per candidate and task, or (T,) the same everywhere."""
    weights = np.broadcast_to(weights, post.C.shape[:2])
    score = local_variance_reduction(post, tasks, weights)
    if exclude is not None and len(exclude):
        score[exclude] = -np.inf
    k = min(top_k, len(score))
    idx = np.argpartition(-score, k - 1)[:k]
    gain = integrated_variance_reduction_at(post, idx, tasks, weights)
    order = np.argsort(-gain)
    return idx[order], gain[order]


def max_variance(post: IncrementalPosterior, tasks: list[int]) -> np.ndarray:
    """(M,) the largest predictive variance among ``tasks``, each over its map's prior variance
    over the library (:meth:`~coorch.models.mtgp.MTGPHyperparameters.map_variance`; the
    published agent's acquisition: measure where the map is least sure)."""
    scale = post.hyper.map_variance(post.candidates[post.reference])
    return (post.variance()[:, tasks] / scale[tasks]).max(1)


def blend(knowledge: np.ndarray, reward: np.ndarray, weight: float) -> np.ndarray:
    """One value per candidate (M,) to maximise: ``(1 - weight) * K + weight * R``.

    Args:
        knowledge: (M,) what measuring each candidate teaches (per second); ``-inf`` (or NaN)
            marks a candidate that must not be chosen, and it stays ``-inf`` in the result.
        reward: (M,) what operators are predicted to value there (the surrogate's mean, or an
            optimistic bound on it), in score units.
        weight: 0 seeks knowledge only (the result orders candidates as ``knowledge`` does),
            1 only what operators score.

    Why the normalisations. ``K`` is the *rank* of knowledge among the choosable candidates,
    scaled to [0, 1] (ties share their average rank). Knowledge per second spans orders of
    magnitude across a library (an unexplored corner with a cheap instrument against a spot
    next to ten measurements), so min-max of the raw values puts all but the few best
    candidates near 0, and any weight above 0 hands every other choice to the reward. Min-max
    of the log keeps ratios but needs positive values and is set by the extremes: one
    candidate with a near-zero gain (an already measured spot) stretches the range and squeezes
    every candidate worth considering together at the top. The rank is free of units, sign and
    outliers, and it says what the knowledge term should say in a blend: how this candidate
    stands against the others. ``R`` is min-max of the reward over the choosable candidates:
    scores are on a bounded, linear scale, so their differences mean what they say and a
    plateau of good scores stays a plateau (a rank would spread it over half the range).
    A constant term (no spread, or one candidate) is 0.5 everywhere, so it orders nothing.
    """
    k = np.asarray(knowledge, dtype=float).reshape(-1)
    r = np.asarray(reward, dtype=float).reshape(-1)
    if k.shape != r.shape:
        raise ValueError(f"knowledge {k.shape} and reward {r.shape} differ in length")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    out = np.full(k.shape, -np.inf)
    ok = ~(np.isnan(k) | np.isneginf(k))
    if ok.any():
        out[ok] = (1.0 - weight) * _rank01(k[ok]) + weight * _minmax01(r[ok])
    return out


def _rank01(v: np.ndarray) -> np.ndarray:
    """Average ranks of ``v`` scaled to [0, 1] (+inf ranks last, like any largest value)."""
    if len(v) < 2:
        return np.full(len(v), 0.5)
    return (rankdata(v, method="average") - 1.0) / (len(v) - 1)


def _minmax01(v: np.ndarray) -> np.ndarray:
    """``v`` min-max scaled to [0, 1] over its finite entries; NaN or -inf count as the least
    valued (0) and +inf as the most (1), so the result has no NaN."""
    fin = np.isfinite(v)
    out = np.where(np.isposinf(v), 1.0, 0.0)
    if not fin.any():
        return out
    lo, hi = v[fin].min(), v[fin].max()
    span = hi - lo
    if span <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        out[fin] = 0.5
    else:
        out[fin] = (v[fin] - lo) / span
    return out
