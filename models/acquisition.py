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
    """(M,) the largest predictive variance among ``tasks``, each over its prior variance (the
    published agent's acquisition: measure where the map is least sure)."""
    return (post.variance()[:, tasks] / post.hyper.prior_variance[tasks]).max(1)
