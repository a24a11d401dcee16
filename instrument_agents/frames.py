"""Library <-> stage coordinates: one affine transform per (instrument, sample).

The decision agent thinks in library mm (from the library's fiducial origin); each instrument
moves its own stage. Mounting a sample rotates, shifts and (through stage calibration) slightly
scales it, which an affine map captures. It is fitted by least squares from >= 3 fiducials, and
the fit residual is kept so an operator can see a mis-clicked fiducial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AffineFrame:
    """``stage = matrix @ library + offset`` (mm)."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))
    residual_mm: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", np.asarray(self.matrix, float).reshape(2, 2))
        object.__setattr__(self, "offset", np.asarray(self.offset, float).reshape(2))
        if abs(np.linalg.det(self.matrix)) < 1e-12:
            raise ValueError("affine frame matrix is singular")

    @classmethod
    def identity(cls) -> AffineFrame:
        return cls()

    @classmethod
    def from_rotation(
        cls, angle_deg: float = 0.0, offset: Sequence[float] = (0.0, 0.0), scale: float = 1.0
    ) -> AffineFrame:
        """A rigid mount: rotate by ``angle_deg``, scale, then shift by ``offset``."""
        a = np.deg2rad(angle_deg)
        rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return cls(rot, np.asarray(offset, float))

    @classmethod
    def fit(
        cls, library_pts: Sequence[Sequence[float]], stage_pts: Sequence[Sequence[float]]
    ) -> AffineFrame:
        """Least-squares affine map from >= 3 fiducial pairs; ``residual_mm`` is the RMS miss."""
        lib = np.asarray(library_pts, float).reshape(-1, 2)
        stg = np.asarray(stage_pts, float).reshape(-1, 2)
        if lib.shape != stg.shape:
            raise ValueError("library and stage fiducials differ in number")
        if len(lib) < 3:
            raise ValueError("an affine frame needs at least 3 fiducials")
        design = np.hstack([lib, np.ones((len(lib), 1))])
        coef, *_ = np.linalg.lstsq(design, stg, rcond=None)
        if np.linalg.matrix_rank(design) < 3:
            raise ValueError("fiducials are collinear; the frame is undetermined")
        resid = stg - design @ coef
        rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
        return cls(coef[:2].T, coef[2], residual_mm=rms)

    def to_stage(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Library mm -> stage mm (scalars or arrays)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        m, b = self.matrix, self.offset
        sx, sy = m[0, 0] * x + m[0, 1] * y + b[0], m[1, 0] * x + m[1, 1] * y + b[1]
        return _unwrap(sx), _unwrap(sy)

    def to_library(self, sx: Any, sy: Any) -> tuple[Any, Any]:
        """Stage mm -> library mm (scalars or arrays)."""
        inv = np.linalg.inv(self.matrix)
        dx = np.asarray(sx, float) - self.offset[0]
        dy = np.asarray(sy, float) - self.offset[1]
        return _unwrap(inv[0, 0] * dx + inv[0, 1] * dy), _unwrap(inv[1, 0] * dx + inv[1, 1] * dy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix.tolist(),
            "offset": self.offset.tolist(),
            "residual_mm": self.residual_mm,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AffineFrame:
        return cls(
            np.asarray(d["matrix"]), np.asarray(d["offset"]), float(d.get("residual_mm", 0.0))
        )


def _unwrap(a: np.ndarray) -> Any:
    return float(a) if a.ndim == 0 else a
