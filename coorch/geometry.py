"""The library's geometry, once: its bounds, the unit box the models work in, grids over it.

A record every layer may use (DESIGN.md, "Layers"): the campaign runtime builds its candidate
grid with it, the agents map library millimetres to the unit box with it, the benchmarks lay
their held-out grids with it. Positions are library coordinates in mm from the fiducial origin.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class LibraryGeometry:
    """A rectangular library: ``bounds`` (d, 2) in mm, one ``(low, high)`` row per axis."""

    bounds: np.ndarray

    def __post_init__(self) -> None:
        b = np.atleast_2d(np.asarray(self.bounds, float))
        if b.ndim != 2 or b.shape[1] != 2 or not (b[:, 1] > b[:, 0]).all():
            raise ValueError(
                f"bounds must be (d, 2) rows of (low, high) with low < high, got {self.bounds!r}"
            )
        object.__setattr__(self, "bounds", b)

    @property
    def dim(self) -> int:
        return len(self.bounds)

    @property
    def span(self) -> np.ndarray:
        """(d,) side lengths in mm."""
        return self.bounds[:, 1] - self.bounds[:, 0]

    @property
    def centre(self) -> np.ndarray:
        return self.bounds.mean(1)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Library mm (n, d) -> the unit box (n, d)."""
        return (np.atleast_2d(np.asarray(x, float)) - self.bounds[:, 0]) / self.span

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """The unit box (n, d) -> library mm (n, d)."""
        return self.bounds[:, 0] + np.atleast_2d(np.asarray(u, float)) * self.span

    def grid(self, shape: tuple[int, ...]) -> np.ndarray:
        """Nodes of a regular grid from edge to edge, ``prod(shape)`` rows, x fastest."""
        axes = [np.linspace(lo, hi, n) for (lo, hi), n in zip(self.bounds, shape, strict=True)]
        return np.column_stack([a.ravel() for a in np.meshgrid(*axes)])

    def cell_centres(self, shape: tuple[int, ...]) -> np.ndarray:
        """Centres of a regular grid of cells, inset from the edges: held-out scoring grids."""
        axes = [
            np.linspace(lo + (hi - lo) / (2 * n), hi - (hi - lo) / (2 * n), n)
            for (lo, hi), n in zip(self.bounds, shape, strict=True)
        ]
        return np.column_stack([a.ravel() for a in np.meshgrid(*axes)])
