"""What the experiment says about the theory's parameters: a weighted sample, and its maps.

Why a weighted sample and not a point: a dozen PFM loops along a library rarely pin an LGD
parameter down, and the co-navigation loop needs to know how unsure it still is: where the
plausible parameters disagree is where the next measurement teaches the most
(:meth:`ParameterPosterior.disagreement`), and the theory's variance at plausible parameters is
where the next simulations help (:mod:`coorch.models.theory_design`). With two or three
parameters a Sobol set of a few thousand points covers the box well enough that weights are
exact up to its resolution, and where the posterior is narrow against that resolution a second
set drawn where it sits refines it: no MCMC to tune or diagnose.

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
from .theory_discrepancy import Discrepancy, fit_discrepancy
from .theory_likelihood import TheoryCovariance, normalised, weigh
from .theory_space import ParameterSpace
from .theory_surrogate import TheorySurrogate

__all__ = ["ParameterPosterior", "infer_parameters", "weighted_quantile"]

_SUPPORT_RATIO = 1e-10  # weights below this times the largest are left out of mixtures
_MAX_SUPPORT = 1024
_VAR_REPRESENTATIVES = 16  # thetas over which the theory's own variance is averaged in predict
_ALTERNATIONS = 2  # discrepancy fit <-> weights
_ARGMAX_EXACT = 64  # exact thetas while alternating (the heaviest)
_EM_THETAS = 8  # posterior draws whose residuals the discrepancy's hyperparameters are fitted to
_REFINE_ESS = 100.0  # below this many effective samples a second, narrower set is drawn
_REFINE_SDS = 4.0
_ANCHORS = 256  # thetas whose surrogate covariance screens the rest: over the whole box
_REFINE_ANCHORS = 64  # ... over the refined box, where it varies less

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
        picks, counts = _systematic(w, _VAR_REPRESENTATIVES)
        return idx[picks], counts / counts.sum()

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


def _systematic(weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Systematic resampling with a fixed offset (deterministic): ``n`` draws from
    ``weights``, returned as distinct indices and how many draws each got."""
    points = (np.arange(n) + 0.5) / n
    picks = np.minimum(np.searchsorted(np.cumsum(weights), points), len(weights) - 1)
    return np.unique(picks, return_counts=True)


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
    are fitted by MAP to the residuals of 8 draws from the weights (an EM step,
    :func:`~coorch.models.theory_discrepancy.fit_discrepancy`), alternating twice.

    Args:
        surrogate: the fitted theory surrogate.
        x_obs: (n, 2) observed library positions, mm.
        s_obs: (n,) their nominal compositions (the campaign's gradient).
        y_obs: (n,) the measured descriptors (the theory's units).
        bounds_mm: (2, 2) the library, ``[[x_low, x_high], [y_low, y_high]]``.
        n_theta: number of Sobol parameter vectors over the box (plus half as many again
            where the posterior sits when it is narrow: see :func:`_calibrate`), or a
            (S, k) set (a grid), used as given.
        seed: the Sobol scramble.
        prior: optional log density over parameters, (S, k) -> (S,), on top of uniform.

    Returns:
        A :class:`ParameterPosterior`.
    """
    with torch_scope():
        return _calibrate(surrogate, x_obs, s_obs, y_obs, bounds_mm, n_theta, seed, prior)


def _stage(
    surrogate: TheorySurrogate,
    obs: tuple[torch.Tensor, np.ndarray, np.ndarray],
    thetas: np.ndarray,
    log_prior: np.ndarray,
    hyper: Discrepancy | None,
) -> tuple[Discrepancy, np.ndarray, np.ndarray]:
    """Log likelihoods (S,) and solves (n, S) at ``thetas``; with ``hyper`` None (the first
    set), the discrepancy's hyperparameters are first fitted, alternating with the weights."""
    z, s, y = obs
    c = surrogate.y_std
    resid = torch.as_tensor(y[:, None] / c - surrogate.mean_grid(s, thetas) / c)
    theory = TheoryCovariance(surrogate, s, thetas, _ANCHORS if hyper is None else _REFINE_ANCHORS)
    if hyper is None:
        hyper = Discrepancy.default()
        for _ in range(_ALTERNATIONS):
            cov = hyper.covariance(z)
            ll, _ = weigh(theory, cov, resid, log_prior, limit=_ARGMAX_EXACT)
            picks, counts = _systematic(normalised(ll.numpy() + log_prior), _EM_THETAS)
            extra = theory(picks).numpy()
            hyper = fit_discrepancy(z, resid[:, picks].numpy(), extra, counts, hyper)
    ll, alpha = weigh(theory, hyper.covariance(z), resid, log_prior)
    return hyper, ll.numpy(), alpha.numpy()


def _refined_box(space: ParameterSpace, thetas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(k, 2): the posterior's mean +- 4 sd per parameter (at least +- 2 spacings of the
    first set), inside the prior box."""
    mean = weights @ thetas
    sd = np.sqrt(weights @ (thetas - mean) ** 2)
    spacing = space.width / len(thetas) ** (1.0 / space.k)
    half = np.maximum(_REFINE_SDS * sd, 2.0 * spacing)
    lo = np.maximum(mean - half, space.bounds[:, 0])
    return np.column_stack([lo, np.minimum(mean + half, space.bounds[:, 1])])


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
    """:func:`infer_parameters`' body, run under one torch thread.

    When the first set leaves fewer than 100 effective samples (the posterior is narrow
    against its spacing), half as many Sobol points again are drawn in the box the posterior
    occupies; the union is a sample of the mixture of the two uniform densities, so each
    weight is divided by that mixture's density there (deterministic-mixture importance
    weights), which keeps the weights exact over the whole box.
    """
    z, s, y, bounds = _checked_observations(x_obs, s_obs, y_obs, bounds_mm)
    space, obs = surrogate.space, (z, s, y)
    thetas = _parameter_set(space, n_theta, seed)
    log_prior = _log_prior(space, thetas, prior)
    hyper, ll, alpha = _stage(surrogate, obs, thetas, log_prior, None)
    weights = normalised(ll + log_prior)
    if isinstance(n_theta, int | np.integer) and 1.0 / np.sum(weights**2) < _REFINE_ESS:
        box = _refined_box(space, thetas, weights)
        inner = ParameterSpace(space.names, box).sobol(max(len(thetas) // 2, 2), seed + 1)
        inner_prior = _log_prior(space, inner, prior)
        _, ll_inner, alpha_inner = _stage(surrogate, obs, inner, inner_prior, hyper)
        outer = len(thetas) / np.prod(space.width)  # density of the first set's points
        inner_density = len(inner) / np.prod(box[:, 1] - box[:, 0])
        thetas = np.vstack([thetas, inner])
        inside = np.all((thetas >= box[:, 0]) & (thetas <= box[:, 1]), axis=1)
        log_q = np.log(outer + np.where(inside, inner_density, 0.0))
        ll, alpha = np.concatenate([ll, ll_inner]), np.hstack([alpha, alpha_inner])
        log_prior = np.concatenate([log_prior, inner_prior])
        weights = normalised(ll + log_prior - log_q)
    best = int(np.argmax(weights))
    cov_map = surrogate.covariance_grid(s, thetas[best][None])[0] / surrogate.y_std**2
    return ParameterPosterior(
        names=space.names,
        thetas=thetas,
        weights=weights,
        log_likelihood=ll,
        surrogate=surrogate,
        hyper=hyper,
        z_obs=z,
        s_obs=s,
        y_obs=y,
        bounds_mm=bounds,
        alpha=alpha,
        theta_map=thetas[best],
        cov_map=cov_map,
    )
