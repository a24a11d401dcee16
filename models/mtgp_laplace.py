"""Hyperparameter uncertainty of the multi-task GP: a Laplace approximation about the MAP.

Why: with a handful of values per task the MAP hyperparameters are one guess among many that
fit about as well (a long lengthscale and little noise, or a short one and more noise), and a
posterior conditioned on that guess alone claims more certainty than the data support. A
decision made on it starves the task whose fit happens to be confident (issue 15: on a second
real experiment one modality got 7 of 36 measurements and lost to grid by 46 %), and its
intervals cover less than they say. Integrating over the hyperparameters fixes both.

How: the posterior over the fit's unconstrained parameters ``theta`` (what L-BFGS optimises:
softplus-raw lengthscales and variances, the task covariance factor, the means) is
approximated by ``N(theta*, H^-1)``, ``H`` the Hessian of the negative log posterior (marginal
likelihood times the priors) at the MAP ``theta*``, and ``draws`` hyperparameter sets are drawn
from it. Directions the data and priors barely constrain (rotations of the task covariance
factor, a trend variance near zero) would get near-infinite variance: every eigenvalue of ``H``
is floored at ``1 / max_variance`` (at most one unit of variance in unconstrained units, a
factor of about e on a small positive parameter). Parameters the fit holds fixed stay fixed,
and so do the entries it masks (the task covariance factor's coupling mask, a declared noise):
the draws come from the posterior of the rest given them, the Hessian's free block.

Why not NUTS (as the published agent does in NumPyro): a benchmark refits after every
measurement, about 40,000 times per table, and the fit must land while a campaign decides. A
Laplace draw costs one Hessian (about 30 backward passes at n = 40) on top of the MAP fit the
campaign runs anyway; what it misses (a second mode) the two-start MAP fit
(:func:`coorch.models.mtgp_fit.best_of_starts`) partly covers. Calibration is measured, not
assumed: ``coorch bench efficiency`` reports the coverage of the 90 % intervals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from botorch.optim.closures import get_loss_closure
from gpytorch.mlls import ExactMarginalLogLikelihood

from coorch.models.mtgp import LAPLACE_DRAWS

#: Hyperparameter sets drawn per fit (:data:`coorch.models.mtgp.LAPLACE_DRAWS`).
DRAWS = LAPLACE_DRAWS
#: The most variance (unconstrained units) any direction of the Laplace posterior may have.
MAX_VARIANCE = 1.0


def hessian(mll: ExactMarginalLogLikelihood, params: list[torch.Tensor]) -> torch.Tensor:
    """Hessian (P, P) of the negative log posterior (summed, not per value as gpytorch's
    marginal likelihood reports it) with respect to the flattened ``params``."""
    mll.train()
    loss = get_loss_closure(mll)() * len(mll.model.train_targets)  # botorch's: what the fit saw
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for i in range(len(flat)):
        row = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if r is None else r).reshape(-1)
                    for r, p in zip(row, params, strict=True)
                ]
            )
        )
    h = torch.stack(rows).detach()
    return (h + h.T) / 2


def draw_offsets(
    h: np.ndarray, draws: int, rng: np.random.Generator, max_variance: float = MAX_VARIANCE
) -> np.ndarray:
    """``draws`` offsets (draws, P) from ``N(0, H^-1)`` with every eigenvalue of ``H`` floored
    at ``1 / max_variance`` (a saddle or a flat direction gets that variance, not infinity)."""
    lam, vec = np.linalg.eigh(h)
    lam = np.maximum(np.nan_to_num(lam, nan=0.0), 1.0 / max_variance)
    z = rng.standard_normal((draws, len(lam)))
    return (z / np.sqrt(lam)) @ vec.T


def laplace_draws(
    mll: ExactMarginalLogLikelihood,
    convert: Callable[[], object],
    *,
    draws: int = DRAWS,
    seed: int = 0,
    max_variance: float = MAX_VARIANCE,
) -> list:
    """``convert()`` (the model's hyperparameters as the caller wants them) at ``draws`` points
    of the Laplace posterior about the model's current (MAP) parameters; the model is left at
    the MAP. A draw that does not convert to finite values is dropped."""
    params = [p for p in mll.parameters() if p.requires_grad]
    masks = [getattr(p, "_coorch_mask", None) for p in params]
    start = [p.detach().clone() for p in params]
    try:
        h = hessian(mll, params).numpy()
    except (RuntimeError, ValueError):  # numerically singular at the MAP: no spread known
        return []
    free = np.concatenate(
        [
            np.ones(p.numel(), bool) if m is None else (m.expand_as(p) != 0).reshape(-1).numpy()
            for p, m in zip(params, masks, strict=True)
        ]
    )
    offsets = np.zeros((draws, len(free)))
    offsets[:, free] = draw_offsets(
        h[np.ix_(free, free)], draws, np.random.default_rng(seed), max_variance
    )
    out = []
    with torch.no_grad():
        for off in offsets:
            at = 0
            for p, p0 in zip(params, start, strict=True):
                step = torch.as_tensor(off[at : at + p.numel()], dtype=p.dtype).view_as(p)
                p.copy_(p0 + step)
                at += p.numel()
            h_k = convert()
            if all(np.isfinite(np.asarray(v, float)).all() for v in _arrays(h_k)):
                out.append(h_k)
        for p, p0 in zip(params, start, strict=True):
            p.copy_(p0)
    return out


def _arrays(h) -> list:
    import dataclasses

    return [v for v in dataclasses.asdict(h).values() if isinstance(v, np.ndarray)]
