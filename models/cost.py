"""What a measurement costs: instrument-seconds, plus the stage move to get there.

Cost is kept apart from what a measurement is worth (``models/acquisition.py``), as botorch's
``InverseCostWeightedUtility`` keeps it: an agent divides one by the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class InstrumentCost:
    """An instrument as an agent sees it: the tasks it observes and what a measurement costs."""

    name: str
    tasks: tuple[int, ...]
    cost_s: float = 1.0
    move_cost_s_per_mm: float = 0.0
    log_scale: bool = False  # its tasks are amounts, modelled as their log (models/mtgp.py)
    #: standard deviation of one measurement's value at one spot, as the instrument's own
    #: repeat acquisitions show it (of the log, i.e. relative, for a ``log_scale`` task); None:
    #: unknown, the fits estimate it (:func:`noise_sd`)
    repeatability: float | None = None


def instrument_seconds(
    inst: InstrumentCost, candidates_mm: np.ndarray, here_mm: np.ndarray | None
) -> np.ndarray:
    """(M,) seconds to measure at each candidate: the modality's cost plus the stage move from
    ``here_mm`` (where the instrument is, or will be once its pending point is measured)."""
    if here_mm is None or inst.move_cost_s_per_mm == 0:
        return np.full(len(candidates_mm), inst.cost_s)
    dist = np.sqrt(((candidates_mm - here_mm) ** 2).sum(1))
    return inst.cost_s + inst.move_cost_s_per_mm * dist


def unit_cost(
    inst: InstrumentCost, candidates_mm: np.ndarray, here_mm: np.ndarray | None
) -> np.ndarray:
    """Every measurement costs the same (the published agent ignored cost)."""
    return np.ones(len(candidates_mm))


def log_tasks(instruments: Sequence[InstrumentCost]) -> np.ndarray:
    """(T,) bool over every task of ``instruments``: which are modelled as their logarithm."""
    out = np.zeros(1 + max(t for i in instruments for t in i.tasks), bool)
    for inst in instruments:
        out[list(inst.tasks)] = inst.log_scale
    return out


def noise_sd(instruments: Sequence[InstrumentCost]) -> np.ndarray | None:
    """(T,) each task's declared repeatability (``InstrumentCost.repeatability``; NaN where
    undeclared), or None when no instrument declares one. The fits then hold a task's noise at
    what its instrument declares instead of estimating it: from a handful of values a fit cannot
    tell noise from signal, and on the alscbn twins it read four WDS values as noise (0.7-1.9 of
    their variance, where repeat acquisitions put it at 0.003) and kept the Sc map unknown."""
    if all(i.repeatability is None for i in instruments):
        return None
    out = np.full(1 + max(t for i in instruments for t in i.tasks), np.nan)
    for inst in instruments:
        if inst.repeatability is not None:
            out[list(inst.tasks)] = inst.repeatability
    return out
