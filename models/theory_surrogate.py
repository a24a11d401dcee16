"""Theory surrogate: a GP over (composition, simulator parameters) -> the simulated descriptor.

Why: a simulation (an LGD loop at one Sm fraction ``s`` and one parameter vector ``theta``) costs
seconds to minutes on a cluster, and calibrating ``theta`` against the experiment needs the
theory's descriptor at every observed composition for thousands of candidate ``theta``. The
surrogate interpolates the finished simulations and says how unsure it is between them, so the
calibration (:mod:`coorch.models.theory_posterior`) can count that uncertainty as noise and the
design (:mod:`coorch.models.theory_design`) can send the next simulations where it is largest
(Kennedy and O'Hagan 2001; Slautin et al. 2024, Bayesian co-navigation).

The model: inputs scaled to the unit box (``s`` by the campaign's composition range, ``theta``
by the parameter bounds), the output standardised, a constant mean and a covariance
``outputscale * M52(s) * M52_ARD(theta)``: a product of a Matern 5/2 over composition and an
ARD Matern 5/2 over the parameters, with a Gaussian noise term floored at 1e-6 (simulations are
nearly deterministic; the floor keeps the factorisation stable). Hyperparameters are MAP
(gpytorch's exact marginal likelihood plus Gamma priors on the lengthscales), found by L-BFGS
from two starts.

The product form is chosen for speed, not only fit: the calibration asks for the mean at every
(observed ``s``) x (candidate ``theta``) pair, and with a product kernel that grid is one
matrix product, ``(K_s * alpha) @ K_theta^T``, instead of ``m * S`` kernel rows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import gpytorch
import numpy as np
import torch
from gpytorch.constraints import GreaterThan
from gpytorch.priors import GammaPrior, LogNormalPrior

from ._threads import torch_scope
from .theory_space import ParameterSpace

__all__ = ["TheorySurrogate", "matern52"]

_NOISE_FLOOR = 1e-6  # standardised units
_STARTS = (0.2, 0.6)  # initial lengthscales (unit box) of the two starts
_LBFGS_ITERS = 100
_BLOCK = 1 << 21  # entries of one (pairs x n) block in var_grid: 16 MB of float64
_SQRT5 = math.sqrt(5.0)


def matern52(a: torch.Tensor, b: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matern 5/2 correlation of rows of ``a`` (m, d) with rows of ``b`` (n, d), ARD (d,)."""
    r = torch.cdist(a / lengthscale, b / lengthscale, compute_mode="donot_use_mm_for_euclid_dist")
    return (1.0 + _SQRT5 * r + (5.0 / 3.0) * r**2) * torch.exp(-_SQRT5 * r)


class _ExactGP(gpytorch.models.ExactGP):
    """The surrogate as gpytorch fits it: constant mean, scale * M52(s) * M52_ARD(theta)."""

    def __init__(self, u: torch.Tensor, y: torch.Tensor) -> None:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=GreaterThan(_NOISE_FLOOR),
            noise_prior=LogNormalPrior(math.log(1e-3), 2.0),
        )
        super().__init__(u, y, likelihood)
        k = u.shape[1] - 1
        self.mean_module = gpytorch.means.ConstantMean()
        kern_s = gpytorch.kernels.MaternKernel(
            nu=2.5, active_dims=(0,), lengthscale_prior=GammaPrior(2.0, 6.0)
        )
        kern_t = gpytorch.kernels.MaternKernel(
            nu=2.5,
            ard_num_dims=k,
            active_dims=tuple(range(1, k + 1)),
            lengthscale_prior=GammaPrior(2.0, 4.0),
        )
        self.covar_module = gpytorch.kernels.ScaleKernel(kern_s * kern_t)

    def forward(self, u: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(u), self.covar_module(u))

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """Fitted values, detached: constant, outputscale, lengthscale (1+k,), noise."""
        kern_s, kern_t = self.covar_module.base_kernel.kernels
        return {
            "constant": self.mean_module.constant.detach().reshape(()),
            "outputscale": self.covar_module.outputscale.detach().reshape(()),
            "lengthscale": torch.cat(
                [kern_s.lengthscale.detach().reshape(-1), kern_t.lengthscale.detach().reshape(-1)]
            ),
            "noise": self.likelihood.noise.detach().reshape(()),
        }


def _map_fit(u: torch.Tensor, y: torch.Tensor, start: float) -> tuple[float, _ExactGP]:
    """MAP hyperparameters from lengthscales ``start``: (negative log posterior, model)."""
    model = _ExactGP(u, y).double()
    model.covar_module.base_kernel.kernels[0].lengthscale = start
    model.covar_module.base_kernel.kernels[1].lengthscale = start
    model.covar_module.outputscale = 1.0
    model.likelihood.noise = 1e-3
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=_LBFGS_ITERS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -mll(model(u), y)
        loss.backward()
        return loss

    try:
        with gpytorch.settings.cholesky_max_tries(6):
            opt.step(closure)
            loss = float(-mll(model(u), y).detach())
    except (torch.linalg.LinAlgError, RuntimeError):
        loss = math.inf
    return (loss if math.isfinite(loss) else math.inf), model


def _checked(
    s: np.ndarray, theta: np.ndarray, space: ParameterSpace, y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``s`` (n,), ``theta`` (n, k) as float arrays (and ``y`` (n,) matching), or a ValueError."""
    sa = np.asarray(s, dtype=np.float64)
    if sa.ndim != 1:
        raise ValueError(f"s must be (n,), got {sa.shape}")
    ta = space.checked(theta)
    if len(ta) != len(sa):
        raise ValueError(f"s {sa.shape} and theta {ta.shape} must have the same length")
    if y is not None and np.shape(y) != sa.shape:
        raise ValueError(f"y must be {sa.shape} like s, got {np.shape(y)}")
    if not (np.all(np.isfinite(sa)) and np.all(np.isfinite(ta))):
        raise ValueError("s and theta must be finite")
    return sa, ta


@dataclass
class TheorySurrogate:
    """A fitted theory surrogate; caller's units outside, unit box and standardised inside.

    Attributes:
        space: the parameters' names and box (the theta scaling).
        s_range: (low, high) composition range that scales ``s``.
        u: (n, 1+k) training inputs in the unit box (``s`` first).
        y: (n,) training descriptors, caller's units.
        hyper: fitted hyperparameters (standardised units): constant, outputscale,
            lengthscale (1+k,), noise.
        chol: lower Cholesky factor of ``K + noise I`` (n, n).
        alpha: ``(K + noise I)^{-1} (y_std - constant)`` (n,).
        y_mean, y_std: the output standardisation.
        version: a content hash of data and hyperparameters, to tell refits apart.
    """

    space: ParameterSpace
    s_range: tuple[float, float]
    u: torch.Tensor
    y: np.ndarray
    hyper: dict[str, torch.Tensor]
    chol: torch.Tensor
    alpha: torch.Tensor
    y_mean: float
    y_std: float
    version: str

    @classmethod
    def fit(
        cls,
        s: np.ndarray,
        theta: np.ndarray,
        y: np.ndarray,
        space: ParameterSpace,
        s_range: tuple[float, float],
        seed: int = 0,
    ) -> TheorySurrogate:
        """Fit from scratch to simulations: ``s`` (n,), ``theta`` (n, k), descriptors ``y`` (n,).

        ``s_range`` is the campaign's composition range (not the data's), so a refit with
        more simulations scales inputs the same way. Needs n >= 3 and finite values.
        """
        sa, ta = _checked(s, theta, space, y)
        ya = np.asarray(y, dtype=np.float64)
        if len(sa) < 3 or not np.all(np.isfinite(ya)):
            raise ValueError(f"need n >= 3 finite simulations, got n={len(sa)}")
        lo, hi = float(s_range[0]), float(s_range[1])
        if not hi > lo:
            raise ValueError(f"s_range must be (low, high) with low < high, got {s_range}")
        u = torch.as_tensor(np.column_stack([(sa - lo) / (hi - lo), space.to_unit(ta)]))
        y_mean, y_std = float(ya.mean()), float(ya.std())
        y_std = y_std if y_std > 1e-12 else 1.0
        yt = torch.as_tensor((ya - y_mean) / y_std)
        with torch_scope(seed):
            fits = [_map_fit(u, yt, start) for start in _STARTS]
        loss, model = min(fits, key=lambda f: f[0])
        if not math.isfinite(loss):
            raise ValueError("the theory surrogate's fit failed from every start")
        hyper = model.hyperparameters()
        return cls._from_hyper(space, (lo, hi), u, ya, hyper, y_mean, y_std)

    @classmethod
    def _from_hyper(
        cls,
        space: ParameterSpace,
        s_range: tuple[float, float],
        u: torch.Tensor,
        y: np.ndarray,
        hyper: dict[str, torch.Tensor],
        y_mean: float,
        y_std: float,
    ) -> TheorySurrogate:
        """The fitted surrogate: factorise ``K + noise I`` once for every later prediction."""
        k = hyper["outputscale"] * _kernel(u, u, hyper["lengthscale"])
        k = k + (hyper["noise"] + 1e-9) * torch.eye(len(u), dtype=u.dtype)
        chol = torch.linalg.cholesky(k)
        yt = torch.as_tensor((y - y_mean) / y_std)
        alpha = torch.cholesky_solve((yt - hyper["constant"])[:, None], chol)[:, 0]
        digest = hashlib.sha1(u.numpy().tobytes() + y.tobytes())
        for v in hyper.values():
            digest.update(v.numpy().tobytes())
        version = f"theory-gp/n={len(y)}/{digest.hexdigest()[:12]}"
        return cls(space, s_range, u, y, hyper, chol, alpha, y_mean, y_std, version)

    @property
    def n(self) -> int:
        """Number of simulations the surrogate was fitted to."""
        return len(self.y)

    @property
    def noise(self) -> float:
        """Fitted noise variance of one simulation's descriptor, caller's units."""
        return float(self.hyper["noise"]) * self.y_std**2

    def unit_inputs(self, s: np.ndarray, theta: np.ndarray) -> torch.Tensor:
        """Pairs ``(s_i, theta_i)`` as unit-box inputs (m, 1+k)."""
        sa, ta = _checked(s, theta, self.space)
        lo, hi = self.s_range
        return torch.as_tensor(np.column_stack([(sa - lo) / (hi - lo), self.space.to_unit(ta)]))

    def _unit_s(self, s: np.ndarray) -> torch.Tensor:
        lo, hi = self.s_range
        return torch.as_tensor((np.asarray(s, dtype=np.float64).reshape(-1, 1) - lo) / (hi - lo))

    def _factors(self, s: np.ndarray, thetas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlations of ``s`` (m,) and of ``thetas`` (S, k) with the training inputs."""
        ls = self.hyper["lengthscale"]
        ks = matern52(self._unit_s(s), self.u[:, :1], ls[:1])
        kt = matern52(torch.as_tensor(self.space.to_unit(thetas)), self.u[:, 1:], ls[1:])
        return ks, kt

    def predict(self, s: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (m,) of the latent theory at pairs ``s`` (m,), ``theta`` (m, k).

        The variance is of the noise-free simulator output (what the calibration must count
        as the surrogate's own error), caller's units.
        """
        x = self.unit_inputs(s, theta)
        h = self.hyper
        with torch_scope(), torch.no_grad():
            kx = h["outputscale"] * _kernel(x, self.u, h["lengthscale"])
            mean = h["constant"] + kx @ self.alpha
            v = torch.linalg.solve_triangular(self.chol, kx.T, upper=False)
            var = (h["outputscale"] - (v**2).sum(0)).clamp_min(0.0)
        return mean.numpy() * self.y_std + self.y_mean, var.numpy() * self.y_std**2

    def mean_grid(self, s: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """Mean at every pair of ``s`` (m,) and ``thetas`` (S, k): (m, S), caller's units."""
        h = self.hyper
        with torch_scope(), torch.no_grad():
            ks, kt = self._factors(s, thetas)
            mean = h["constant"] + h["outputscale"] * (ks * self.alpha) @ kt.T
        return mean.numpy() * self.y_std + self.y_mean

    @cached_property
    def _linv(self) -> torch.Tensor:
        """``L^-1`` (n, n): the grids below are GEMMs with it (faster than n-column solves)."""
        eye = torch.eye(self.n, dtype=torch.float64)
        return torch.linalg.solve_triangular(self.chol, eye, upper=False)

    def var_grid(self, s: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """Latent variance at every pair of ``s`` (m,) and ``thetas`` (S, k): (m, S).

        ``outputscale - ||L^-1 k||^2`` per pair: O(m S n^2); computed in blocks of rows so
        memory stays ~16 MB.
        """
        scale = self.hyper["outputscale"]
        with torch_scope(), torch.no_grad():
            ks, kt = self._factors(s, thetas)
            m, n_s, n = len(ks), len(kt), self.n
            out = torch.empty(m, n_s, dtype=torch.float64)
            rows = max(1, _BLOCK // max(n_s * n, 1))
            for i in range(0, m, rows):
                block = (ks[i : i + rows, None, :] * kt[None]).reshape(-1, n)
                q = ((block @ self._linv.T) ** 2).sum(1).reshape(-1, n_s)
                out[i : i + rows] = scale - scale**2 * q
        return out.clamp_min(0.0).numpy() * self.y_std**2

    def covariance_grid(self, s: np.ndarray, thetas: np.ndarray) -> np.ndarray:
        """Latent covariance across the compositions ``s`` (m,) at each of ``thetas`` (S, k):
        (S, m, m), caller's units squared.

        Why the whole matrix: the surrogate's error at one theta is smooth in ``s`` (too low
        at one composition, too low at its neighbours), so a calibration that counted it as
        independent per observation would average it away and grow overconfident when the
        simulations are few. O(S (m n^2 + m^2 n)).
        """
        scale, us = self.hyper["outputscale"], self._unit_s(s)
        with torch_scope(), torch.no_grad():
            ks, kt = self._factors(s, thetas)
            m, n_s, n = len(ks), len(kt), self.n
            prior = scale * matern52(us, us, self.hyper["lengthscale"][:1])
            out = torch.empty(n_s, m, m, dtype=torch.float64)
            rows = max(1, _BLOCK // max(m * n, 1))
            for j in range(0, n_s, rows):
                w = scale * (ks[None] * kt[j : j + rows, None, :]) @ self._linv.T  # (B, m, n)
                out[j : j + rows] = prior - w @ w.transpose(1, 2)
        return out.numpy() * self.y_std**2

    def prior_covariance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Prior covariance between unit inputs ``a`` (m, 1+k) and ``b`` (p, 1+k), standardised."""
        h = self.hyper
        return h["outputscale"] * _kernel(a, b, h["lengthscale"])

    def whitened(self, a: torch.Tensor) -> torch.Tensor:
        """``L^-1 k(X, a)`` (n, m) for unit inputs ``a`` (m, 1+k): the posterior covariance is
        ``prior_covariance(a, b) - whitened(a).T @ whitened(b)``, so a design that compares
        many candidates with a few chosen points pays the O(m n^2) solve once."""
        return torch.linalg.solve_triangular(
            self.chol, self.prior_covariance(self.u, a), upper=False
        )

    def covariance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Posterior covariance of the latent theory between unit inputs ``a`` (m, 1+k) and
        ``b`` (p, 1+k), standardised units (m, p)."""
        return self.prior_covariance(a, b) - self.whitened(a).T @ self.whitened(b)


def _kernel(a: torch.Tensor, b: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """The surrogate's correlation ``M52(s) * M52_ARD(theta)`` between unit inputs (no scale)."""
    return matern52(a[:, :1], b[:, :1], lengthscale[:1]) * matern52(
        a[:, 1:], b[:, 1:], lengthscale[1:]
    )
