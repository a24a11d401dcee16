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

from coorch.models.incremental import exact_posterior
from coorch.models.mtgp import MTGPHyperparameters

#: The most a task's integrated variance may be inflated for hyperparameter uncertainty: one
#: wild draw must not make a task look unknowable.
MAX_INFLATION = 10.0


def marginal_posterior(
    h: MTGPHyperparameters,
    x: np.ndarray,
    tasks: np.ndarray,
    y: np.ndarray,
    query: np.ndarray,
    *,
    modelled: bool = False,
    noise: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Mixture mean and variance (Q, T) at ``query`` over ``h``'s draws (``h`` itself when it
    has none); units as :func:`exact_posterior` gives them (``modelled``: the GP's own).
    ``noise``: the variance of a new measurement rather than of the map (modelled units)."""
    members = h.samples or (h,)
    means, variances = [], []
    for m in members:
        mean, var = exact_posterior(m, x, tasks, y, query, modelled=modelled or noise)
        if noise:
            var = var + m.noise * m.y_scale**2
        means.append(mean)
        variances.append(var)
    means = np.stack(means)
    return means.mean(0), np.stack(variances).mean(0) + means.var(0)


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
