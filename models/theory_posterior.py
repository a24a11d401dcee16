"""What the experiment says about the theory's parameters: a weighted sample, and its maps.

Why a weighted sample and not a point: a dozen PFM loops along a library rarely pin an LGD
parameter down, and the co-navigation loop needs to know how unsure it still is: where the
plausible parameters disagree is where the next measurement teaches the most
(:meth:`ParameterPosterior.disagreement`), and the theory's variance at plausible parameters is
where the next simulations help (:mod:`coorch.models.theory_design`). With two or three
parameters a Sobol set of a few thousand points covers the box well enough that weights are
exact up to its resolution: no MCMC to tune or diagnose.

:func:`infer_parameters` makes one (Kennedy-O'Hagan calibration, below); the class says what it
answers. Units: the caller's outside (descriptor, mm, the parameters' own);
inside, the descriptor is divided by the surrogate's ``y_std`` and positions scaled to the unit
square, as the discrepancy's priors (:mod:`coorch.models.theory_discrepancy`) are stated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._threads import torch_scope
from .theory_discrepancy import (
    Discrepancy,
    fit_discrepancy,
    gaussian_log_likelihoods,
    grouped_log_likelihoods,
)
from .theory_space import ParameterSpace
from .theory_surrogate import TheorySurrogate

__all__ = ["ParameterPosterior", "infer_parameters", "weighted_quantile"]

_SUPPORT_RATIO = 1e-10  # weights below this times the largest are left out of mixtures
_MAX_SUPPORT = 1024
_VAR_REPRESENTATIVES = 16  # thetas over which the theory's own variance is averaged in predict
_ALTERNATIONS = 2  # discrepancy fit <-> weights
_ANCHORS = 256  # thetas whose surrogate variance is computed exactly before the weights are known
_PLAUSIBLE_MASS = 1.0 - 1e-6  # weight that must rest on exact variances in the end
_MAX_EXACT = 512
_ARGMAX_EXACT = 64  # exact thetas while alternating: enough to find the most probable

LogPrior = Callable[[np.ndarray], np.ndarray]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles ``q`` of a weighted sample: the inverse of the midpoint-interpolated weighted
    CDF (a sample of equal weights gives the usual "hazen" quantiles)."""
    order = np.argsort(values)
    v, w = values[order], weights[order] / weights.sum()
    cdf = np.cumsum(w) - 0.5 * w
    return np.interp(q, cdf, v)


@dataclass
class ParameterPosterior:
    """Posterior over the theory's parameters as weights on a set of parameter vectors.

    Attributes:
        names: parameter names, one per column of ``thetas``.
        thetas: (S, k) parameter vectors; ``weights`` (S,) their normalised posterior weights.
        log_likelihood: (S,) log marginal likelihood of the observations at each theta.
        surrogate: the theory surrogate the weights were computed with.
        hyper: the discrepancy's fitted hyperparameters (scaled units).
        z_obs: (n, 2) observed positions in the unit square; ``s_obs``, ``y_obs`` (n,) their
            compositions and descriptors; ``bounds_mm`` (2, 2) the library box,
            ``[[x_low, x_high], [y_low, y_high]]``.
        alpha: (n, S) ``C_theta^-1 (y - eta_theta)`` per theta (scaled): the discrepancy's
            posterior mean at theta is ``k(x, z_obs) @ alpha[:, j]``.
        theta_map: (k,) the parameters with the largest weight; ``cov_map`` (n, n) the
            surrogate's scaled covariance at the observations there, which conditions the
            discrepancy's posterior variance.
    """

    names: tuple[str, ...]
    thetas: np.ndarray
    weights: np.ndarray
    log_likelihood: np.ndarray
    surrogate: TheorySurrogate
    hyper: Discrepancy
    z_obs: torch.Tensor
    s_obs: np.ndarray
    y_obs: np.ndarray
    bounds_mm: np.ndarray
    alpha: np.ndarray
    theta_map: np.ndarray
    cov_map: np.ndarray

    # -- the parameters ------------------------------------------------------------------
    @property
    def effective_samples(self) -> float:
        """Kish's effective sample size ``1 / sum(w^2)``: how many thetas carry the weight.
        A handful means the parameter set is too coarse for this posterior."""
        return float(1.0 / np.sum(self.weights**2))

    def mean(self) -> np.ndarray:
        """Posterior mean of the parameters (k,)."""
        return self.weights @ self.thetas

    def interval(self, level: float = 0.9) -> np.ndarray:
        """Equal-tailed credible interval per parameter (k, 2): weighted quantiles at
        ``(1 - level) / 2`` and ``(1 + level) / 2``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        q = np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        return np.array([weighted_quantile(col, self.weights, q) for col in self.thetas.T])

    def summary(self, level: float = 0.9) -> dict[str, dict[str, float]]:
        """``{name: {"mean", "lo", "hi"}}`` with the ``level`` interval, for logs and reports."""
        mean, ci = self.mean(), self.interval(level)
        return {
            name: {"mean": float(mean[i]), "lo": float(ci[i, 0]), "hi": float(ci[i, 1])}
            for i, name in enumerate(self.names)
        }

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` parameter vectors drawn by weight (with replacement), (n, k)."""
        return self.thetas[rng.choice(len(self.weights), size=n, p=self.weights)]

    def _support(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the thetas that carry weight (at most 1024, the largest) and their
        renormalised weights: the mixtures below sum over these only."""
        order = np.argsort(-self.weights)[:_MAX_SUPPORT]
        idx = order[self.weights[order] > _SUPPORT_RATIO * self.weights[order[0]]]
        return idx, self.weights[idx] / self.weights[idx].sum()

    def _representatives(self) -> tuple[np.ndarray, np.ndarray]:
        """A few thetas standing for the posterior (systematic resampling, deterministic):
        indices and weights, for averages too costly to take over the whole support."""
        idx, w = self._support()
        points = (np.arange(_VAR_REPRESENTATIVES) + 0.5) / _VAR_REPRESENTATIVES
        picks = np.minimum(np.searchsorted(np.cumsum(w), points), len(idx) - 1)
        uniq, counts = np.unique(picks, return_counts=True)
        return idx[uniq], counts / counts.sum()

    # -- maps over the library -----------------------------------------------------------
    def _unit_positions(self, x: np.ndarray) -> torch.Tensor:
        xa = np.asarray(x, dtype=np.float64)
        if xa.ndim != 2 or xa.shape[1] != 2:
            raise ValueError(f"x must be (m, 2) library positions in mm, got {xa.shape}")
        lo, hi = self.bounds_mm[:, 0], self.bounds_mm[:, 1]
        return torch.as_tensor((xa - lo) / (hi - lo))

    def _delta(self, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Discrepancy at ``x`` (m, 2) mm: per-theta posterior means (m, len(idx)) and the
        posterior variance at ``theta_map`` (m,), scaled units."""
        zx = self._unit_positions(x)
        with torch_scope(), torch.no_grad():
            kx = self.hyper.kernel(zx, self.z_obs)
            cov = self.hyper.covariance(self.z_obs) + torch.as_tensor(self.cov_map)
            chol = torch.linalg.cholesky(cov)
            v = torch.linalg.solve_triangular(chol, kx.T, upper=False)
            var = (self.hyper.variance - (v**2).sum(0)).clamp_min(0.0).numpy()
        return kx.numpy() @ self.alpha[:, idx], var

    def discrepancy(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (m,) of ``delta`` at ``x`` (m, 2) mm, averaged
        over the parameters: what the theory misses, and where, in descriptor units."""
        idx, w = self._support()
        means, var = self._delta(x, idx)
        mean = means @ w
        spread = ((means - mean[:, None]) ** 2) @ w
        c = self.surrogate.y_std
        return mean * c, np.sqrt(var + spread) * c

    def disagreement(self, s: np.ndarray) -> np.ndarray:
        """Variance over the posterior of the surrogate's mean at compositions ``s`` (m,):
        large where plausible parameters predict different descriptors, i.e. where a
        measurement would teach the parameters most. Descriptor units squared."""
        idx, w = self._support()
        means = self.surrogate.mean_grid(np.asarray(s, dtype=np.float64).ravel(), self.thetas[idx])
        centre = means @ w
        return ((means - centre[:, None]) ** 2) @ w

    def predict(self, x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The theory-informed map of the experiment at positions ``x`` (m, 2) mm with
        compositions ``s`` (m,): mean and variance (m,) of ``eta(s, theta) + delta(x)``.

        Mixture over the posterior: the mean averages theory plus discrepancy over theta; the
        variance is the spread of those means plus the theory's own variance (averaged over a
        few representative thetas) plus the discrepancy's (at ``theta_map``). Latent: no
        measurement noise. Caller's units.
        """
        sa = np.asarray(s, dtype=np.float64)
        if sa.ndim != 1 or len(sa) != len(np.atleast_2d(x)):
            raise ValueError(f"s must be (m,) with one composition per row of x, got {sa.shape}")
        idx, w = self._support()
        c = self.surrogate.y_std
        delta, delta_var = self._delta(x, idx)
        total = self.surrogate.mean_grid(sa, self.thetas[idx]) / c + delta
        mean = total @ w
        spread = ((total - mean[:, None]) ** 2) @ w
        rep, rep_w = self._representatives()
        theory_var = self.surrogate.var_grid(sa, self.thetas[rep]) @ rep_w / c**2
        return mean * c, (spread + theory_var + delta_var) * c**2


def _checked_observations(
    x_obs: np.ndarray, s_obs: np.ndarray, y_obs: np.ndarray, bounds_mm: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Positions in the unit square (n, 2), ``s`` and ``y`` (n,), the box (2, 2); or a
    ValueError that says which argument has which wrong shape."""
    x = np.asarray(x_obs, dtype=np.float64)
    s = np.asarray(s_obs, dtype=np.float64)
    y = np.asarray(y_obs, dtype=np.float64)
    b = np.asarray(bounds_mm, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x_obs must be (n, 2) library positions in mm, got {x.shape}")
    if s.shape != (len(x),) or y.shape != (len(x),):
        raise ValueError(
            f"s_obs and y_obs must be ({len(x)},) like x_obs' rows, got {s.shape} and {y.shape}"
        )
    if len(x) < 1:
        raise ValueError("need at least one observation")
    if b.shape != (2, 2) or not np.all(b[:, 1] > b[:, 0]):
        raise ValueError(f"bounds_mm must be [[x_low, x_high], [y_low, y_high]], got {b.tolist()}")
    if not all(np.all(np.isfinite(a)) for a in (x, s, y)):
        raise ValueError("x_obs, s_obs and y_obs must be finite")
    return torch.as_tensor((x - b[:, 0]) / (b[:, 1] - b[:, 0])), s, y, b


def _parameter_set(space: ParameterSpace, n_theta: int | np.ndarray, seed: int) -> np.ndarray:
    """``n_theta`` Sobol points in the box, or the caller's own set (S, k)."""
    if isinstance(n_theta, int | np.integer):
        if n_theta < 2:
            raise ValueError(f"n_theta must be >= 2, got {n_theta}")
        return space.sobol(int(n_theta), seed)
    thetas = space.checked(n_theta)
    if len(thetas) < 2 or not np.all(np.isfinite(thetas)):
        raise ValueError("a parameter set needs at least 2 finite rows")
    return thetas


def _log_prior(space: ParameterSpace, thetas: np.ndarray, prior: LogPrior | None) -> np.ndarray:
    """Uniform over the box (``-inf`` outside it), times the caller's ``prior`` if given."""
    lp = np.where(space.contains(thetas), 0.0, -np.inf)
    if prior is not None:
        extra = np.asarray(prior(thetas), dtype=np.float64)
        if extra.shape != (len(thetas),):
            raise ValueError(f"prior must return ({len(thetas)},) log densities, got {extra.shape}")
        lp = lp + np.nan_to_num(extra, nan=-np.inf)
    return lp


def _farthest_points(points: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` rows of ``points`` spread out (greedy farthest-point order)."""
    chosen = [0]
    dist = np.sum((points - points[0]) ** 2, axis=1)
    for _ in range(1, min(m, len(points))):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.sum((points - points[chosen[-1]]) ** 2, axis=1))
    return np.array(chosen)


class _TheoryCovariance:
    """The surrogate's scaled covariance across the observed compositions at every theta:
    exact (n, n) at a spread-out set of anchors and wherever :meth:`make_exact` is asked.

    For screening, every theta belongs to its nearest anchor (nearest in the surrogate's
    lengthscales) and shares that anchor's covariance, its diagonal raised to the largest
    variance any member sees among its three nearest anchors (:attr:`group_cov`).

    Why: the exact covariances cost O(S n_obs n_sim^2) and a factorisation each, ~1.5 s at
    100 x 2048 x 100 on one core, and only the thetas that carry weight need them; erring
    large elsewhere only flattens the screened weights, so a theta is rarely ruled out by an
    underestimate before it is computed exactly.
    """

    def __init__(self, surrogate: TheorySurrogate, s: np.ndarray, thetas: np.ndarray) -> None:
        self.surrogate, self.s, self.thetas = surrogate, s, thetas
        self.slot = np.full(len(thetas), -1)  # index into self.store, or -1
        self.count = 0  # rows of self.store in use; it grows by doubling
        self.store = torch.zeros(_ANCHORS, len(s), len(s), dtype=torch.float64)
        scaled = surrogate.space.to_unit(thetas) / surrogate.hyper["lengthscale"][1:].numpy()
        anchors = _farthest_points(scaled, _ANCHORS)
        self.make_exact(anchors)
        d = np.sum((scaled[:, None, :] - scaled[None, anchors, :]) ** 2, axis=-1)
        near = np.argsort(d, axis=1)[:, :3]  # (S, 3) positions among the anchors
        self.group = near[:, 0]
        base = self.store[torch.as_tensor(self.slot[anchors])]  # (A, n, n)
        diag = torch.diagonal(base, dim1=-2, dim2=-1)
        var = diag[torch.as_tensor(near)].amax(dim=1)  # (S, n)
        raise_by = np.zeros(tuple(diag.shape))
        np.maximum.at(raise_by, self.group, (var - diag[self.group]).clamp_min(0.0).numpy())
        self.group_cov = base + torch.diag_embed(torch.as_tensor(raise_by))

    def make_exact(self, idx: np.ndarray) -> np.ndarray:
        """Compute the exact covariance for thetas ``idx``; returns those that were not yet."""
        idx = np.asarray(idx, dtype=int)
        idx = np.unique(idx[self.slot[idx] < 0])
        if len(idx):
            c = self.surrogate.covariance_grid(self.s, self.thetas[idx])
            end = self.count + len(idx)
            if end > len(self.store):
                grown = torch.zeros(max(end, 2 * len(self.store)), *self.store.shape[1:])
                grown[: self.count] = self.store[: self.count]
                self.store = grown.double()
            self.store[self.count : end] = torch.as_tensor(c / self.surrogate.y_std**2)
            self.slot[idx] = self.count + np.arange(len(idx))
            self.count = end
        return idx

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        """Exact covariances (B, n, n) of thetas ``idx`` (computed first where missing)."""
        self.make_exact(idx)
        return self.store[torch.as_tensor(self.slot[np.asarray(idx, dtype=int)])]


def _normalised(log_post: np.ndarray) -> np.ndarray:
    """Weights from log posteriors, normalised by log-sum-exp."""
    top = np.max(log_post)
    if not np.isfinite(top):
        raise ValueError("no parameter vector has a finite posterior (prior or fit failed)")
    w = np.exp(log_post - top)
    return w / w.sum()


def _plausible(log_post: np.ndarray) -> np.ndarray:
    """The thetas holding all but 1e-6 of the weight (at most 512, the heaviest)."""
    w = _normalised(log_post)
    order = np.argsort(-w)
    keep = np.searchsorted(np.cumsum(w[order]), _PLAUSIBLE_MASS) + 1
    return order[: min(keep, _MAX_EXACT)]


def _weigh(
    theory: _TheoryCovariance,
    cov: torch.Tensor,
    resid: torch.Tensor,
    log_prior: np.ndarray,
    limit: int = _MAX_EXACT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log likelihoods (S,) and solves (n, S) at every theta: screened with the groups'
    covariances, then exact wherever the weight rests (at most ``limit`` thetas, the
    heaviest; repeated while that set grows)."""
    ll, alpha = grouped_log_likelihoods(cov, resid, theory.group_cov, theory.group)
    done = np.zeros(len(ll), dtype=bool)
    for _ in range(4):
        todo = _plausible(ll.numpy() + log_prior)[:limit]
        todo = todo[~done[todo]]
        if not len(todo):
            break
        ll[todo], alpha[:, todo] = gaussian_log_likelihoods(
            cov, resid[:, todo], lambda cols, todo=todo: theory(todo[cols])
        )
        done[todo] = True
    return ll, alpha


def infer_parameters(
    surrogate: TheorySurrogate,
    x_obs: np.ndarray,
    s_obs: np.ndarray,
    y_obs: np.ndarray,
    *,
    bounds_mm: np.ndarray,
    n_theta: int | np.ndarray = 2048,
    seed: int = 0,
    prior: LogPrior | None = None,
) -> ParameterPosterior:
    """Kennedy-O'Hagan calibration: weights over parameter vectors given the experiment.

    Model: ``y_i = eta(s_i, theta) + delta(x_i) + noise``, ``delta`` a GP over library position
    (:mod:`coorch.models.theory_discrepancy`), plus the surrogate's own uncertainty about
    ``eta(., theta)`` at the observed compositions (its full covariance across them, not only
    its variance: see :meth:`TheorySurrogate.covariance_grid`). ``delta``'s hyperparameters
    are fitted by MAP at the most probable theta, alternating twice with the weights.

    Args:
        surrogate: the fitted theory surrogate.
        x_obs: (n, 2) observed library positions, mm.
        s_obs: (n,) their nominal compositions (the campaign's gradient).
        y_obs: (n,) the measured descriptors (the theory's units).
        bounds_mm: (2, 2) the library, ``[[x_low, x_high], [y_low, y_high]]``.
        n_theta: number of Sobol parameter vectors over the box, or a (S, k) set (a grid).
        seed: the Sobol scramble.
        prior: optional log density over parameters, (S, k) -> (S,), on top of uniform.

    Returns:
        A :class:`ParameterPosterior`.
    """
    with torch_scope():
        return _calibrate(surrogate, x_obs, s_obs, y_obs, bounds_mm, n_theta, seed, prior)


def _calibrate(
    surrogate: TheorySurrogate,
    x_obs: np.ndarray,
    s_obs: np.ndarray,
    y_obs: np.ndarray,
    bounds_mm: np.ndarray,
    n_theta: int | np.ndarray,
    seed: int,
    prior: LogPrior | None,
) -> ParameterPosterior:
    """:func:`infer_parameters`' body, run under one torch thread."""
    z, s, y, bounds = _checked_observations(x_obs, s_obs, y_obs, bounds_mm)
    thetas = _parameter_set(surrogate.space, n_theta, seed)
    log_prior = _log_prior(surrogate.space, thetas, prior)
    c = surrogate.y_std
    resid = torch.as_tensor(y[:, None] / c - surrogate.mean_grid(s, thetas) / c)
    theory = _TheoryCovariance(surrogate, s, thetas)
    hyper = Discrepancy.default()
    for _ in range(_ALTERNATIONS):
        ll, alpha = _weigh(theory, hyper.covariance(z), resid, log_prior, limit=_ARGMAX_EXACT)
        best = int(np.argmax(ll.numpy() + log_prior))
        hyper = fit_discrepancy(z, resid[:, best].numpy(), theory([best])[0].numpy(), hyper)
    ll, alpha = _weigh(theory, hyper.covariance(z), resid, log_prior)
    weights = _normalised(ll.numpy() + log_prior)
    best = int(np.argmax(weights))
    return ParameterPosterior(
        names=surrogate.space.names,
        thetas=thetas,
        weights=weights,
        log_likelihood=ll.numpy(),
        surrogate=surrogate,
        hyper=hyper,
        z_obs=z,
        s_obs=s,
        y_obs=y,
        bounds_mm=bounds,
        alpha=alpha.numpy(),
        theta_map=thetas[best],
        cov_map=theory([best])[0].numpy(),
    )
