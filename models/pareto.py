"""Multi-objective Bayesian optimisation: Pareto fronts of competing properties.

Why: materials properties compete (a larger piezoresponse near the phase boundary comes with a
lower coercive field or higher leakage; in (Al,Sc,B)N more Sc raises the piezoelectric response
and lowers the breakdown field). There is no single best composition, only the Pareto front:
compositions no other composition beats on every property at once. Mapping that front with few
measurements is what multi-objective BO does: one GP per property over the design space, and an
acquisition that values a point by the expected increase of the hypervolume dominated by the
front (relative to a reference point of the worst acceptable values).

This module is glue over botorch: a multi-output ``SingleTaskGP`` (inputs normalised to the
unit cube from ``bounds``, outputs standardised), ``qLogNoisyExpectedHypervolumeImprovement``
(noise-aware, numerically stable in log space, handles batches ``q > 1`` and pending points),
optimised over the box or over a discrete candidate set (e.g. the library's measurable
positions), and ``is_non_dominated`` for the observed front. All objectives are maximised;
negate any to be minimised.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.acquisition.multi_objective.logei import (
    qLogNoisyExpectedHypervolumeImprovement,
)
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from gpytorch.mlls import ExactMarginalLogLikelihood

from ._threads import torch_scope

__all__ = ["fit_mobo_model", "pareto_front", "suggest_mobo"]

_MC_SAMPLES = 64
_DUPLICATE_TOL = 1e-6  # in unit-cube coordinates


def pareto_front(Y: np.ndarray) -> np.ndarray:
    """Boolean mask (n,) of the rows of ``Y`` (n, k) that no other row dominates (maximise).

    Identical non-dominated rows are all marked, so every non-dominated observation is kept.
    """
    y = np.asarray(Y, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError("Y must be shaped (n, k)")
    if len(y) == 0:
        return np.zeros(0, dtype=bool)
    return is_non_dominated(torch.as_tensor(y), maximize=True, deduplicate=False).numpy()


def fit_mobo_model(X: np.ndarray, Y: np.ndarray, bounds: np.ndarray) -> SingleTaskGP:
    """Fit one GP per objective (a batched multi-output SingleTaskGP) by marginal likelihood.

    ``bounds`` (2, d) normalises inputs to the unit cube; outputs are standardised per
    objective, so objectives in different units share one set of default priors.
    """
    x = torch.as_tensor(np.asarray(X, dtype=np.float64))
    y = torch.as_tensor(np.asarray(Y, dtype=np.float64))
    b = torch.as_tensor(np.asarray(bounds, dtype=np.float64))
    model = SingleTaskGP(
        x,
        y,
        input_transform=Normalize(d=x.shape[-1], bounds=b),
        outcome_transform=Standardize(m=y.shape[-1]),
    )
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def _too_close(points: torch.Tensor, others: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Which of ``points`` lie within the duplicate tolerance of any of ``others``."""
    if len(others) == 0:
        return torch.zeros(len(points), dtype=torch.bool)
    return (torch.cdist(points / scale, others / scale) < _DUPLICATE_TOL).any(dim=1)


def suggest_mobo(
    X: np.ndarray,
    Y: np.ndarray,
    bounds: np.ndarray,
    *,
    ref_point: np.ndarray | None = None,
    q: int = 1,
    candidates: np.ndarray | None = None,
    pending: np.ndarray | None = None,
    seed: int = 0,
    num_restarts: int = 4,
    raw_samples: int = 128,
) -> np.ndarray:
    """Next ``q`` points (q, d) to measure, by qLogNEHVI (all objectives maximised).

    Args:
        X: observed inputs (n, d), inside ``bounds``.
        Y: observed objectives (n, k), k >= 2.
        bounds: (2, d) lower and upper bounds of the design space.
        ref_point: (k,) worst acceptable value per objective; hypervolume counts only what
            dominates it. Default: botorch's ``infer_reference_point`` (the observed front's
            nadir, pushed out by 10 % of its range).
        q: batch size (e.g. one point per free instrument); points are chosen jointly.
        candidates: optional (m, d) discrete set (e.g. measurable library positions); if given,
            the points come from it (observed and pending ones excluded). Otherwise the
            acquisition is optimised over the box with multi-start L-BFGS.
        pending: (p, d) points chosen but not yet measured; the acquisition integrates over
            their unknown outcomes, so a busy instrument's point is not proposed again.
        seed: seeds the QMC sampler and the optimiser's random starts.
        num_restarts, raw_samples: continuous optimisation effort (kept small for speed).
    """
    x = np.asarray(X, dtype=np.float64)
    y = np.asarray(Y, dtype=np.float64)
    b = np.asarray(bounds, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError("X must be (n, d) and Y (n, k) with the same n >= 1")
    if y.shape[1] < 2:
        raise ValueError("multi-objective BO needs k >= 2 objectives")
    if b.shape != (2, x.shape[1]) or np.any(b[1] <= b[0]):
        raise ValueError("bounds must be (2, d) with lower < upper")
    if q < 1:
        raise ValueError("q must be >= 1")

    xt, yt, bt = (torch.as_tensor(a) for a in (x, y, b))
    scale = bt[1] - bt[0]
    x_pending = None
    if pending is not None and len(pending):
        x_pending = torch.as_tensor(np.asarray(pending, dtype=np.float64)).reshape(-1, x.shape[1])
    taken = xt if x_pending is None else torch.cat([xt, x_pending])
    pool = None
    if candidates is not None:
        pool = torch.as_tensor(np.asarray(candidates, dtype=np.float64)).reshape(-1, x.shape[1])
        pool = _excluding(pool, taken, scale, q)

    with torch_scope(seed=seed, threads=1):
        model = fit_mobo_model(x, y, b)
        if ref_point is None:
            ref = infer_reference_point(yt[is_non_dominated(yt)])
        else:
            ref = torch.as_tensor(np.asarray(ref_point, dtype=np.float64))
        acq = qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=ref.tolist(),
            X_baseline=xt,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([_MC_SAMPLES]), seed=seed),
            X_pending=x_pending,
            prune_baseline=True,
        )
        if pool is None:
            chosen, _ = optimize_acqf(
                acq,
                bounds=bt,
                q=q,
                num_restarts=num_restarts,
                raw_samples=raw_samples,
                options={"batch_limit": 8, "maxiter": 100},
                sequential=True,
            )
            chosen = torch.minimum(torch.maximum(chosen, bt[0]), bt[1])
            if not _has_duplicates(chosen, taken, scale):
                return chosen.detach().numpy()
            # Rare: the optimum sits on an observed point. Fall back to a quasi-random
            # candidate set, from which observed and pending points are excluded.
            sobol = torch.quasirandom.SobolEngine(x.shape[1], scramble=True, seed=seed)
            draws = sobol.draw(max(raw_samples, 8 * q), dtype=torch.float64)
            pool = _excluding(bt[0] + scale * draws, taken, scale, q)
        chosen, _ = optimize_acqf_discrete(acq, q=q, choices=pool, unique=True)
    return chosen.detach().numpy()


def _excluding(
    pool: torch.Tensor, taken: torch.Tensor, scale: torch.Tensor, q: int
) -> torch.Tensor:
    """Candidates that are not (near-)duplicates of observed or pending points."""
    pool = pool[~_too_close(pool, taken, scale)]
    if len(pool) < q:
        raise ValueError(f"fewer than q={q} candidates left after excluding observed points")
    return pool


def _has_duplicates(chosen: torch.Tensor, taken: torch.Tensor, scale: torch.Tensor) -> bool:
    """True if a chosen point repeats an observed/pending point or another chosen point."""
    if _too_close(chosen, taken, scale).any():
        return True
    d = torch.cdist(chosen / scale, chosen / scale) + torch.eye(len(chosen), dtype=chosen.dtype)
    return bool((d < _DUPLICATE_TOL).any())
