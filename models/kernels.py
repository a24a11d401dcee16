"""The multi-task GP's covariance, written once for numpy and for torch.

Two paths evaluate it: the decision path in numpy (rank-one updates of the posterior at 40,000
candidate-tasks, :mod:`coorch.models.incremental`) and the hyperparameter fit in torch, inside a
gpytorch model that differentiates through it (:mod:`coorch.models.mtgp_fit`). Both call the
functions here. They use only what numpy arrays and torch tensors share (``@``, ``.sum``,
``.clip``, ``.T``, integer indexing) and take ``sqrt``, ``exp``, ``eye``, ``diag`` and ``ones``
from the arrays' own namespace (:func:`namespace`), so there is one definition to read and to
test, and the fitted hyperparameters mean in the decision path what they meant in the fit.

The covariance between (position ``x``, task ``i``) and (``x'``, ``j``) is a sum of components,
each a kernel over position times a task matrix (:func:`components`):

    k((x, i), (x', j)) = sum_q B_q[i, j] k_q(x, x')

* the shared part: a Matern with lengthscales ``l`` (d,) times the task covariance ``B``;
* each task's own part: a Matern with the task's own lengthscales, ``B_q = s_i`` at [i, i];
* each task's linear trend: :class:`LinearTrend` with slope variances ``w_i`` (d,) about the
  box's centre, ``B_q = 1`` at [i, i].

:mod:`coorch.models.mtgp` says why each part is there. Shapes: positions ``(n, d)``, task
indices ``(n,)`` (integers; ``int64`` tensors for torch), task matrices ``(T, T)``.

The Materns are 5/2 (twice differentiable maps) unless a model asks for 3/2 (``smoothness``:
once differentiable, rougher between the data at the same lengthscale); both parts of one
model share it.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np

#: A numpy array or a torch tensor; the functions here return the type they are given.
Array = Any

SQRT5 = 5.0**0.5
SQRT3 = 3.0**0.5
#: The Matern smoothness (nu) a model may have: 3/2 or 5/2.
SMOOTHNESS = (1.5, 2.5)
#: Squared distances are floored here before the square root: the Matern's derivative in the
#: distance is zero at zero, but sqrt's is infinite there, and autograd would multiply the two
#: into NaN for every pair of coincident points (gpytorch floors at the same value).
MIN_SQUARED_DISTANCE = 1e-30


def namespace(a: Array) -> ModuleType:
    """``torch`` for a tensor, else ``numpy``: where ``sqrt``, ``exp`` and the like come from.
    torch is imported only when a tensor arrives, so the numpy path never loads it."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _rows(a: Array) -> Array:
    return a[None] if a.ndim == 1 else a


def matern(a: Array, b: Array, lengthscale: Array, smoothness: float = 2.5) -> Array:
    """Matern correlation (n, m) of ``smoothness`` (:data:`SMOOTHNESS`) between positions
    ``a`` (n, d) and ``b`` (m, d)."""
    xp = namespace(a)
    a, b = _rows(a), _rows(b)
    mid = a.mean(0)  # about a's mean: fewer digits lost in the squared norms below
    a, b = (a - mid) / lengthscale, (b - mid) / lengthscale
    d2 = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
    r = xp.sqrt(d2.clip(min=MIN_SQUARED_DISTANCE))
    if smoothness == 1.5:
        return (1.0 + SQRT3 * r) * xp.exp(-SQRT3 * r)
    check_smoothness(smoothness)
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * xp.exp(-SQRT5 * r)


def check_smoothness(smoothness: float) -> None:
    """Raise ValueError unless ``smoothness`` is one of :data:`SMOOTHNESS`."""
    if smoothness not in SMOOTHNESS:
        raise ValueError(f"Matern smoothness {smoothness!r}: one of {SMOOTHNESS}")


def matern52(a: Array, b: Array, lengthscale: Array) -> Array:
    """Matern-5/2 correlation (n, m) between positions ``a`` (n, d) and ``b`` (m, d)."""
    return matern(a, b, lengthscale, 2.5)


def linear(a: Array, b: Array, weight: Array, centre: Array | float) -> Array:
    """``sum_d w_d (a_d - c_d)(b_d - c_d)`` (n, m): a linear function about ``centre`` whose
    slopes have prior variances ``weight`` (d,), integrated out."""
    return ((_rows(a) - centre) * weight) @ (_rows(b) - centre).T


@dataclasses.dataclass(frozen=True)
class Matern:
    """A Matern correlation over position: ``k(a, b)`` (n, m) and its diagonal (n,)."""

    lengthscale: Array  # (d,)
    smoothness: float = 2.5

    def __call__(self, a: Array, b: Array) -> Array:
        return matern(a, b, self.lengthscale, self.smoothness)

    def diag(self, a: Array) -> Array:
        return namespace(a).ones(_rows(a).shape[0], dtype=a.dtype)


@dataclasses.dataclass(frozen=True)
class LinearTrend:
    """The covariance of a linear mean about ``centre`` with slope variances ``weight`` (d,):
    ``k(a, b)`` (n, m) and its diagonal (n,). Centre 1/2: the unit box's."""

    weight: Array  # (d,)
    centre: Array | float = 0.5

    def __call__(self, a: Array, b: Array) -> Array:
        return linear(a, b, self.weight, self.centre)

    def diag(self, a: Array) -> Array:
        return ((_rows(a) - self.centre) ** 2 * self.weight).sum(-1)


Kernel = Matern | LinearTrend


def components(
    lengthscale: Array,
    task_covariance: Array,
    *,
    task_lengthscale: Array | None = None,
    task_variance: Array | None = None,
    trend_weight: Array | None = None,
    centre: Array | float = 0.5,
    smoothness: float = 2.5,
) -> list[tuple[Kernel, Array]]:
    """The covariance as ``[(kernel over position, B_q (T, T)), ...]``, summed over ``q``: the
    shared part first, then each task's own part (``task_lengthscale`` (T, d) and
    ``task_variance`` (T,), None: plain ICM) and each task's trend (``trend_weight`` (T, d),
    None: none; a task whose weights are all zero has none), about ``centre``; the Materns of
    ``smoothness``."""
    xp = namespace(task_covariance)
    eye = xp.eye(task_covariance.shape[0], dtype=task_covariance.dtype)
    out: list[tuple[Kernel, Array]] = [(Matern(lengthscale, smoothness), task_covariance)]
    if task_variance is not None:
        out += [
            (Matern(ls, smoothness), xp.diag(s * eye[i]))
            for i, (ls, s) in enumerate(zip(task_lengthscale, task_variance, strict=True))
        ]
    if trend_weight is not None:
        out += [
            (LinearTrend(w, centre), xp.diag(eye[i]))
            for i, w in enumerate(trend_weight)
            if (w != 0).any()
        ]
    return out


def covariance(
    parts: list[tuple[Kernel, Array]], xa: Array, ta: Array, xb: Array, tb: Array
) -> Array:
    """Prior covariance (n, m) between rows (``xa`` (n, d), tasks ``ta`` (n,)) and (``xb``
    (m, d), ``tb`` (m,)) of the components ``parts``; a component whose task matrix is zero
    on these tasks is not evaluated."""
    out = 0.0
    for k, b in parts:
        bq = b[ta][:, tb]
        if bq.any():
            out = out + bq * k(xa, xb)
    if isinstance(out, float):  # no component touches these tasks
        return namespace(xa).zeros((len(ta), len(tb)), dtype=xa.dtype)
    return out


def prior_diagonal(parts: list[tuple[Kernel, Array]], x: Array) -> Array:
    """Prior covariance between the tasks at each position ``x`` (n, d): (n, T, T)."""
    return sum(k.diag(x)[:, None, None] * b for k, b in parts)
