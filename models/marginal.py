"""The multi-task GP's posterior integrated over its hyperparameters' uncertainty.

A fit with Laplace draws (``MTGPHyperparameters.samples``, :mod:`coorch.models.mtgp_laplace`)
stands for a mixture of GPs, one per draw. Its predictive mean is the draws' average, its
variance the draws' average variance plus the variance of their means: where the plausible
hyperparameters disagree about the map, the map is uncertain even where each one alone is sure.
That disagreement is what a fit from a handful of values hides, and what starves a task when
decisions trust it (issue 15). A fit without draws is its own posterior.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from coorch.models import kernels
from coorch.models.incremental import JITTER, exact_posterior
from coorch.models.mtgp import MTGPHyperparameters

#: The most a task's integrated variance may be inflated for hyperparameter uncertainty: one
#: wild draw must not make a task look unknowable.
MAX_INFLATION = 10.0
#: The most one value's squared leave-one-out z-score counts in :func:`local_loo_scale`: a
#: single wild value (a spike, a bad spectrum) must not pull every measurement to itself.
MAX_Z2 = 25.0


def marginal_posterior(
    h: MTGPHyperparameters,
    x: np.ndarray,
    tasks: np.ndarray,
    y: np.ndarray,
    query: np.ndarray,
    *,
    modelled: bool = False,
    noise: bool = False,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mixture mean and variance (Q, T) at ``query`` over ``h``'s draws (``h`` itself when it
    has none); units as :func:`exact_posterior` gives them (``modelled``: the GP's own).
    ``noise``: the variance of a new measurement rather than of the map (modelled units).
    ``scale`` (T,): each task's variance times this (:func:`loo_scale`)."""
    members = h.samples or (h,)
    means, variances = [], []
    for m in members:
        mean, var = exact_posterior(m, x, tasks, y, query, modelled=modelled or noise)
        if noise:
            var = var + m.noise * m.y_scale**2
        means.append(mean)
        variances.append(var)
    means = np.stack(means)
    var = np.stack(variances).mean(0) + means.var(0)
    return means.mean(0), var if scale is None else var * scale


def task_inflation(
    h: MTGPHyperparameters, data: tuple[np.ndarray, np.ndarray, np.ndarray], reference: np.ndarray
) -> np.ndarray:
    """(T,) how many times more integrated variance each task has under the mixture than under
    ``h`` alone, over the ``reference`` positions (unit box), in the GP's own units; 1 without
    draws or data, at most :data:`MAX_INFLATION`."""
    if not h.samples or data is None or not len(data[2]):
        return np.ones(h.num_tasks)
    _, plug_in = exact_posterior(h, *data, reference, modelled=True)
    _, mixed = marginal_posterior(h, *data, reference, modelled=True)
    ratio = mixed.mean(0) / np.maximum(plug_in.mean(0), 1e-12)
    return np.clip(np.nan_to_num(ratio, nan=1.0), 1.0, MAX_INFLATION)


def loo_scale(
    h: MTGPHyperparameters, x: np.ndarray, tasks: np.ndarray, y: np.ndarray, min_values: int = 3
) -> np.ndarray:
    """(T,) how much wider each task's errors are than ``h`` says, measured on its own data:
    the mean squared leave-one-out z-score of the task's values (:func:`loo_z2`), at least 1,
    at most :data:`MAX_INFLATION`; 1 for a task with fewer than ``min_values`` values.

    Why: a fit can be confidently wrong in a way no draw about its mode reveals: a linear
    wedge with a bend read as a straight line, a rough map read as a smooth one plus noise.
    Its own held-out residuals are then larger than its predictive spread, and the task looks
    known while its map is not (on the smbfo twins, the WDS map's 90 % intervals covered 60 %
    and WDS got 7 of 40 measurements)."""
    x, tasks, y = np.atleast_2d(x), np.asarray(tasks, int), np.asarray(y, float)
    out = np.ones(h.num_tasks)
    z2 = loo_z2(h, x, tasks, y) if len(y) >= min_values else None
    if z2 is None:
        return out
    for t in range(h.num_tasks):
        rows = tasks == t
        if rows.sum() >= min_values:
            out[t] = np.clip(np.nan_to_num(z2[rows].mean(), nan=1.0), 1.0, MAX_INFLATION)
    return out


def local_loo_scale(
    h: MTGPHyperparameters,
    x: np.ndarray,
    tasks: np.ndarray,
    y: np.ndarray,
    unit: np.ndarray,
    reference: np.ndarray,
    min_values: int = 3,
) -> np.ndarray:
    """(M, T) where in the library each task's fit is wrong by more than it says: its values'
    squared leave-one-out z-scores (:func:`loo_z2`, each at most :data:`MAX_Z2`) averaged
    about each candidate ``unit`` (M, d) with the task's own correlation over position as
    weights, plus one pseudo-value at 1 (what a right model expects, so that a position far
    from the data stays at 1), then scaled to mean 1 over the ``reference`` candidates. 1 for
    a task with fewer than ``min_values`` values.

    Why: a stationary GP's variance does not depend on the measured values, so between refits
    its gain can at best place points as a space-filling design would. A map is rarely
    equally rough everywhere (a phase boundary, a jump in polarisation), and there the fit's
    held-out residuals are larger than its spread: its error is larger than its variance by
    about this ratio. :func:`loo_scale` says how much per task; this says where, with the
    task's total left to it (mean 1)."""
    x, tasks, y = np.atleast_2d(x), np.asarray(tasks, int), np.asarray(y, float)
    out = np.ones((len(unit), h.num_tasks))
    z2 = loo_z2(h, x, tasks, y) if len(y) >= min_values else None
    if z2 is None:
        return out
    z2 = np.clip(z2, 0, MAX_Z2)
    for t in range(h.num_tasks):
        rows = tasks == t
        if rows.sum() < min_values:
            continue
        ls = h.lengthscale if h.task_lengthscale is None else h.task_lengthscale[t]
        near = kernels.matern(unit, x[rows], ls, h.smoothness)  # (M, n_t)
        s = (near @ z2[rows] + 1.0) / (near.sum(1) + 1.0)
        out[:, t] = s / s[reference].mean()
    return out


def loo_z2(
    h: MTGPHyperparameters, x: np.ndarray, tasks: np.ndarray, y: np.ndarray
) -> np.ndarray | None:
    """(n,) each value's squared leave-one-out z-score under ``h``: its residual from the
    posterior on the others over that posterior's predictive spread, in closed form from the
    inverse covariance (Rasmussen & Williams 2006, sec. 5.4.2); None where the covariance
    does not factor."""
    r = h.standardised(y, tasks) - h.task_mean[tasks]
    k = h.covariance(x, tasks, x, tasks)
    k[np.diag_indices_from(k)] += h.noise[tasks] + JITTER
    try:
        inv = cho_solve(cho_factor(k, lower=True, check_finite=False), np.eye(len(y)))
    except (LinAlgError, ValueError):
        return None
    return (inv @ r) ** 2 / np.maximum(np.diag(inv), 1e-300)
