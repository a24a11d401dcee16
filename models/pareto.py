"""Pareto fronts of competing properties.

Why: materials properties compete (a larger piezoresponse near the phase boundary comes with a
lower coercive field or higher leakage; in (Al,Sc,B)N more Sc raises the piezoelectric response
and lowers the breakdown field). There is no single best composition, only the Pareto front:
compositions no other composition beats on every property at once. All objectives are
maximised; negate any to be minimised.

The multi-objective campaign (qLogNEHVI over one GP per objective, each instrument measuring
its own objectives at its own positions) is :mod:`coorch.models.pareto_policy`; this module is
the front itself, over botorch's ``is_non_dominated``.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.utils.multi_objective.pareto import is_non_dominated

__all__ = ["pareto_front"]


def pareto_front(Y: np.ndarray) -> np.ndarray:
    """Boolean mask (n,) of the rows of ``Y`` (n, k) that no other row dominates (maximise).

    Identical non-dominated rows are all marked, so every non-dominated observation is kept.
    """
    y = np.asarray(Y, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError("Y must be shaped (n, k)")
    if len(y) == 0:
        return np.zeros(0, dtype=bool)
    return is_non_dominated(torch.as_tensor(y), maximize=True, deduplicate=False).numpy()
