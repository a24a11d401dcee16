"""What an agent has been told: the observation log.

One row per (measurement, task): where (unit box), which task, the value (NaN while a VAE that
will encode it is still training: the position is known, the value not yet). The log replaces
the parallel lists each agent used to keep, so a background fit, a physics fit and a report all
read one public record instead of an agent's private state.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Observation:
    """A measured descriptor: ``values`` holds one number per task of ``instrument``."""

    instrument: str
    x: np.ndarray  # library coordinates (d,)
    values: np.ndarray
    measurement_id: str


class ObservationLog:
    """Rows of (unit position, task, value), grouped by measurement id.

    ``revision`` counts changes of values already logged (:meth:`relabel`), so a fit knows its
    training targets moved even when no row was added.
    """

    def __init__(self, dim: int, num_tasks: int) -> None:
        self.dim, self.num_tasks = dim, num_tasks
        self._x: list[np.ndarray] = []
        self._t: list[int] = []
        self._y: list[float] = []
        self.ids: list[str] = []  # measurement ids, in the order told
        self.rows: dict[str, list[int]] = {}  # measurement id -> its rows
        self.revision = 0

    def __contains__(self, measurement_id: str) -> bool:
        return measurement_id in self.rows

    def __len__(self) -> int:
        """Number of measurements logged."""
        return len(self.ids)

    def add(
        self, measurement_id: str, u: np.ndarray, tasks: tuple[int, ...], values: np.ndarray
    ) -> None:
        """Log one measurement of ``tasks`` at unit position ``u``."""
        rows = []
        for task, value in zip(tasks, np.atleast_1d(values), strict=True):
            rows.append(len(self._y))
            self._x.append(np.asarray(u, float))
            self._t.append(int(task))
            self._y.append(float(value))
        self.ids.append(measurement_id)
        self.rows[measurement_id] = rows

    def relabel(self, values: dict[str, np.ndarray]) -> None:
        """Replace the values of logged measurements (a retrained VAE re-encodes its signals)."""
        for mid, vals in values.items():
            for row, v in zip(self.rows[mid], np.atleast_1d(vals), strict=True):
                self._y[row] = float(v)
        self.revision += 1

    def data(
        self, *, known: bool = True, tasks: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x unit box (n, d), task (n,), y (n,)); ``known``: only rows with a value;
        ``tasks``: only rows of these tasks."""
        x = np.asarray(self._x, float).reshape(-1, self.dim)
        t, y = np.asarray(self._t, int), np.asarray(self._y, float)
        keep = np.isfinite(y) if known else np.ones(len(y), bool)
        if tasks is not None:
            keep &= np.isin(t, tasks)
        return x[keep], t[keep], y[keep]

    def counts(self) -> np.ndarray:
        """(T,) number of values (finite) per task."""
        y = np.asarray(self._y, float)
        return np.bincount(np.asarray(self._t, int)[np.isfinite(y)], minlength=self.num_tasks)

    def distinct_positions(self) -> np.ndarray:
        """(T,) number of distinct positions with a value, per task."""
        x, t, _ = self.data()
        return np.array([len(np.unique(x[t == k], axis=0)) for k in range(self.num_tasks)])
