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
        if not (np.isfinite(self.matrix).all() and np.isfinite(self.offset).all()):
            raise ValueError("affine frame is not finite (fiducials too far apart or too large)")
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
        if not (np.isfinite(lib).all() and np.isfinite(stg).all()):
            raise ValueError("fiducials must be finite numbers")
        design = np.hstack([lib, np.ones((len(lib), 1))])
        with np.errstate(all="ignore"):
            try:
                coef, *_ = np.linalg.lstsq(design, stg, rcond=None)
                rank = np.linalg.matrix_rank(design)
            except np.linalg.LinAlgError as exc:  # overflow inside the SVD
                raise ValueError(f"fiducials give no frame: {exc}") from None
        if rank < 3:
            raise ValueError("fiducials are collinear; the frame is undetermined")
        resid = stg - design @ coef
        with np.errstate(all="ignore"):
            rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
        if not np.isfinite(rms):
            raise ValueError("fiducials give no finite frame (values too large)")
        return cls(coef[:2].T, coef[2], residual_mm=rms)

    def check_maps(self, x_range: Sequence[float], y_range: Sequence[float]) -> None:
        """Raise ``ValueError`` unless the stage box ``x_range`` x ``y_range`` maps to finite
        library coordinates and back: an agent must never answer a position it cannot write
        as JSON, and a frame fitted from absurd fiducials can overflow."""
        (x0, x1), (y0, y1) = x_range, y_range
        sx, sy = np.array([x0, x1, x0, x1], float), np.array([y0, y0, y1, y1], float)
        with np.errstate(all="ignore"):
            lx, ly = self.to_library(sx, sy)
            bx, by = self.to_stage(lx, ly)
        if not all(np.isfinite(a).all() for a in (lx, ly, bx, by)):
            raise ValueError("the frame maps this stage to non-finite library coordinates")

    def to_stage(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Library mm -> stage mm (scalars or arrays)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        m, b = self.matrix, self.offset
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is inf: out of any limit
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
