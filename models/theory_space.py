"""The box of a simulator's parameters: names, bounds, unit scaling, space-filling draws.

Why a record of its own: the theory surrogate (:mod:`coorch.models.theory_surrogate`), the
calibration (:mod:`coorch.models.theory_posterior`) and the design of simulations
(:mod:`coorch.models.theory_design`) all scale parameters to the unit box and draw Sobol points
in it; one definition keeps them agreeing on which column is which parameter and on the box the
uniform prior covers. The LGD simulator (:mod:`coorch.lgd`) declares its parameters as
``Parameter(name, low, high, unit, meaning)``; :meth:`ParameterSpace.from_lgd` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ParameterSpace", "sobol_unit"]


def sobol_unit(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` scrambled Sobol points in the unit cube ``[0, 1]^d``, (n, d).

    torch's engine, which (unlike scipy's) draws any ``n`` without a balance warning; the
    first ``n`` points of a scrambled sequence fill the cube evenly for any ``n``.
    """
    if n < 0 or d < 1:
        raise ValueError(f"need n >= 0 and d >= 1, got n={n}, d={d}")
    engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=int(seed))
    return engine.draw(n, dtype=torch.float64).numpy()


@dataclass(frozen=True)
class ParameterSpace:
    """Named simulator parameters with a box of plausible values.

    Attributes:
        names: the parameters' names, one per column of every ``theta`` array (k,).
        bounds: (k, 2) array, ``bounds[i] = (low, high)`` of parameter ``names[i]``; the
            uniform prior of the calibration covers this box.
    """

    names: tuple[str, ...]
    bounds: np.ndarray

    def __post_init__(self) -> None:
        b = np.asarray(self.bounds, dtype=np.float64)
        if b.ndim != 2 or b.shape != (len(self.names), 2):
            raise ValueError(f"bounds must be ({len(self.names)}, 2), got {b.shape}")
        if not np.all(np.isfinite(b)) or not np.all(b[:, 1] > b[:, 0]):
            raise ValueError(f"every bound needs finite low < high, got {b.tolist()}")
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"names must be distinct and non-empty, got {self.names}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "bounds", b)

    @classmethod
    def from_lgd(cls) -> ParameterSpace:
        """The LGD simulator's parameters (:data:`coorch.lgd.PARAMETERS`), in its order."""
        from coorch import lgd

        params = tuple(lgd.PARAMETERS)
        return cls(tuple(p.name for p in params), np.array([[p.low, p.high] for p in params]))

    @property
    def k(self) -> int:
        """Number of parameters."""
        return len(self.names)

    @property
    def width(self) -> np.ndarray:
        """``high - low`` per parameter (k,)."""
        return self.bounds[:, 1] - self.bounds[:, 0]

    def checked(self, theta: np.ndarray) -> np.ndarray:
        """``theta`` as a float (n, k) array, or a ValueError naming the expected shape."""
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim == 1 and self.k == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[1] != self.k:
            raise ValueError(f"theta must be (n, {self.k}) for {self.names}, got {t.shape}")
        return t

    def to_unit(self, theta: np.ndarray) -> np.ndarray:
        """Parameters (n, k) to the unit box: ``(theta - low) / (high - low)``."""
        return (self.checked(theta) - self.bounds[:, 0]) / self.width

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Unit-box points (n, k) back to parameters: ``low + u * (high - low)``."""
        return self.bounds[:, 0] + self.checked(u) * self.width

    def contains(self, theta: np.ndarray) -> np.ndarray:
        """Whether each row of ``theta`` (n, k) lies in the box (n,) bool."""
        t = self.checked(theta)
        return np.all((t >= self.bounds[:, 0]) & (t <= self.bounds[:, 1]), axis=1)

    def sobol(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` scrambled Sobol points spread over the box (n, k)."""
        return self.from_unit(sobol_unit(n, self.k, seed))
