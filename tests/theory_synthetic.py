"""A synthetic co-navigation problem with a known answer, for the theory models' tests.

A stand-in for the LGD simulator (:mod:`coorch.lgd`) with its shape: a ferroelectric response
that sets in below the Sm fraction ``s_c`` as ``max(s_c - s, 0)^2`` and is damped by the
depolarisation ``depol``; a library 10 x 2 mm whose Sm fraction rises 0 -> 0.2 along x; and a
"twin" whose truth is the theory at hidden parameters times a thickness factor that varies along
y, which the theory lacks (the discrepancy).
"""

from __future__ import annotations

import numpy as np

from coorch.models.theory_space import ParameterSpace

SPACE = ParameterSpace(("s_c", "depol"), np.array([[0.08, 0.20], [0.0, 0.6]]))
HIDDEN = np.array([0.135, 0.25])
S_RANGE = (0.0, 0.2)
BOUNDS_MM = np.array([[0.0, 10.0], [0.0, 2.0]])
NOISE_SD = 1.0  # descriptor units; the response at s = 0 is ~50


def eta(s: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The stand-in theory at compositions ``s`` (n,) and parameters ``theta`` (n, 2)."""
    theta = np.atleast_2d(theta)
    s_c, depol = theta[:, 0], theta[:, 1]
    return 4000.0 * (1.0 - 0.9 * depol) / (1.0 + depol) * np.maximum(s_c - s, 0.0) ** 2


def composition(x_mm: np.ndarray) -> np.ndarray:
    """The library's nominal Sm fraction along x."""
    lo, hi = S_RANGE
    return lo + (hi - lo) * (x_mm - BOUNDS_MM[0, 0]) / (BOUNDS_MM[0, 1] - BOUNDS_MM[0, 0])


def discrepancy(x: np.ndarray) -> np.ndarray:
    """What the twin has and the theory lacks: the response scales with thickness along y."""
    s = composition(x[:, 0])
    return 0.3 * (x[:, 1] - 1.0) * eta(s, np.broadcast_to(HIDDEN, (len(x), 2)))


def truth(x: np.ndarray) -> np.ndarray:
    """The twin's noise-free descriptor at library positions ``x`` (n, 2) mm."""
    s = composition(x[:, 0])
    return eta(s, np.broadcast_to(HIDDEN, (len(x), 2))) + discrepancy(x)


def observe(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` noisy observations spread over the library: positions (n, 2), s (n,), y (n,)."""
    u = (np.arange(n) + rng.uniform(size=n)) / n  # stratified along x
    x = np.column_stack([BOUNDS_MM[0, 1] * u, rng.uniform(*BOUNDS_MM[1], size=n)])
    return x, composition(x[:, 0]), truth(x) + rng.normal(0.0, NOISE_SD, n)


def simulate(design: np.ndarray) -> np.ndarray:
    """The stand-in simulator on rows ``(s, s_c, depol)``."""
    return eta(design[:, 0], design[:, 1:])
