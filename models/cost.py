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
