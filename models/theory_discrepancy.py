"""The model discrepancy of a calibration: a GP over library position, and its likelihood.

Why: no simulation is the sample. The LGD theory knows composition but not the film's
thickness, strain or electrodes, which also vary over a library; forcing the theory to match
the data anyway drags its parameters to wrong values with false confidence. Kennedy and O'Hagan
(2001) write the experiment as ``y(x) = eta(s(x), theta) + delta(x) + noise``: the theory at
the position's composition plus a smooth discrepancy over position. ``delta`` here is a zero-mean
GP over both library axes (ARD Matern 5/2 on the library scaled to the unit square) with
amplitude, lengthscales and noise fitted by MAP to the residuals of a few parameter vectors
drawn from the current posterior (an EM step; the calibration alternates it with the weights
over ``theta``, :mod:`coorch.models.theory_posterior`).

Priors (descriptor scaled by the theory's spread, positions in the unit square): the amplitude
``LogNormal(log 0.05, 1.5)`` (a discrepancy a priori smaller than the theory's own variation, so
``delta`` does not explain away what the parameters should), lengthscales
``LogNormal(log 0.3, 0.7)`` (smooth across the library: a sharp feature is the theory's job) and
noise ``LogNormal(log 0.01, 2)``.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._threads import torch_scope
from .theory_surrogate import matern52

__all__ = ["Discrepancy", "fit_discrepancy"]

_PRIORS = {  # (log-median, log-sd) of each hyperparameter, scaled units
    "variance": (math.log(0.05), 1.5),
    "lengthscale": (math.log(0.3), 0.7),
    "noise": (math.log(0.01), 2.0),
}
_NOISE_FLOOR = 1e-6
_LBFGS_ITERS = 60


@dataclass(frozen=True)
class Discrepancy:
    """Hyperparameters of ``delta`` plus observation noise (scaled descriptor, unit library).

    Attributes:
        variance: amplitude of the discrepancy GP.
        lengthscale: (2,) along library x and y (unit square).
        noise: observation-noise variance.
    """

    variance: float
    lengthscale: np.ndarray
    noise: float

    @classmethod
    def default(cls) -> Discrepancy:
        """The priors' medians: where the alternation starts."""
        return cls(
            math.exp(_PRIORS["variance"][0]),
            np.full(2, math.exp(_PRIORS["lengthscale"][0])),
            math.exp(_PRIORS["noise"][0]),
        )

    def kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Covariance of ``delta`` between unit positions ``a`` (m, 2) and ``b`` (p, 2)."""
        return self.variance * matern52(a, b, torch.as_tensor(self.lengthscale))

    def covariance(self, z: torch.Tensor) -> torch.Tensor:
        """Covariance of the observations' discrepancy plus noise at ``z`` (n, 2), (n, n)."""
        return self.kernel(z, z) + self.noise * torch.eye(len(z), dtype=z.dtype)


def _log_prior(raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the LogNormal priors' log densities, in terms of the log parameters (up to a
    constant; the Jacobian of the log transform cancels the LogNormal's ``-log x``)."""
    total = torch.zeros((), dtype=torch.float64)
    for name, value in raw.items():
        mu, sd = _PRIORS[name]
        total = total - (0.5 * ((value - mu) / sd) ** 2).sum()
    return total


def fit_discrepancy(
    z: torch.Tensor,
    resid: np.ndarray,
    extra_cov: np.ndarray,
    weights: np.ndarray,
    init: Discrepancy | None = None,
) -> Discrepancy:
    """MAP hyperparameters of ``delta`` at unit positions ``z`` (n, 2), given the
    observations' residuals ``resid`` (n, K) from the theory and the surrogate's covariances
    ``extra_cov`` (K, n, n) at K parameter vectors drawn from the current posterior, weighted
    by ``weights`` (K,): the expected log marginal likelihood (an EM step, theta the latent).

    Why not the residual of the single most probable theta: hyperparameters fitted to it
    explain that theta's residual best and so favour it further. On the LGD check
    (``coorch.benchmarks.theory_calibration``, 10 seeds) the co-navigated arm's ``depol``
    intervals held the truth in 7 of 10 seeds at 50-80 simulations that way, 10 of 10 with
    this step.

    L-BFGS over log parameters from ``init`` (else the priors' medians). A failed fit (a step
    to a singular matrix) returns ``init`` unchanged: the alternation then keeps what it had.
    """
    start = init or Discrepancy.default()
    r = torch.as_tensor(np.asarray(resid, dtype=np.float64)).T[..., None]  # (K, n, 1)
    d = torch.as_tensor(np.asarray(extra_cov, dtype=np.float64))
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64) / np.sum(weights))
    raw = {
        "variance": torch.tensor(math.log(start.variance), dtype=torch.float64),
        "lengthscale": torch.as_tensor(np.log(start.lengthscale), dtype=torch.float64).clone(),
        "noise": torch.tensor(math.log(max(start.noise, 2 * _NOISE_FLOOR)), dtype=torch.float64),
    }
    for v in raw.values():
        v.requires_grad_(True)
    eye = torch.eye(len(z), dtype=torch.float64)

    def loss() -> torch.Tensor:
        k = torch.exp(raw["variance"]) * matern52(z, z, torch.exp(raw["lengthscale"]))
        noise = torch.exp(raw["noise"]) + _NOISE_FLOOR
        chol = torch.linalg.cholesky(k + noise * eye + d)
        a = torch.cholesky_solve(r, chol)
        logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        nll = 0.5 * (r * a).sum((-2, -1)) + logdet
        return w @ nll - _log_prior(raw)

    opt = torch.optim.LBFGS(
        list(raw.values()), lr=1.0, max_iter=_LBFGS_ITERS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch_scope():
        try:
            opt.step(closure)
            final = float(loss().detach())
        except (torch.linalg.LinAlgError, RuntimeError):
            return start
    if not math.isfinite(final):
        return start
    with torch.no_grad():
        return Discrepancy(
            float(torch.exp(raw["variance"])),
            torch.exp(raw["lengthscale"]).numpy().copy(),
            float(torch.exp(raw["noise"])) + _NOISE_FLOOR,
        )
