"""The calibration's likelihood over thousands of parameter vectors, made affordable.

Per parameter vector ``theta_j`` the observations are Gaussian,
``y ~ N(eta_j, C_delta + Sigma_j)``: the surrogate's mean ``eta_j`` at the observed compositions,
the discrepancy plus noise ``C_delta`` (shared) and the surrogate's own covariance ``Sigma_j``
across those compositions (its own per theta). Exactly, that is one (n x n) factorisation and
one ``Sigma_j`` (O(n n_sim^2)) per theta: ~1.5 s at 100 observations x 2048 thetas x 100
simulations on one core. Most thetas carry no weight, so:

* :class:`TheoryCovariance` computes ``Sigma_j`` exactly at a few hundred spread-out anchors and
  lets every other theta borrow its nearest anchor's, with the diagonal raised to the largest
  variance among its three nearest anchors (erring large only flattens a screened weight);
* :func:`grouped_log_likelihoods` screens every theta with one factorisation per anchor group;
* :func:`weigh` then recomputes exactly (:func:`gaussian_log_likelihoods`) the thetas holding
  all but 1e-4 of the weight, repeating while that set grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ._threads import torch_scope
from .theory_surrogate import TheorySurrogate

__all__ = [
    "TheoryCovariance",
    "gaussian_log_likelihoods",
    "grouped_log_likelihoods",
    "normalised",
    "plausible",
    "weigh",
]

_CHUNK = 256  # thetas per batched Cholesky
_ANCHORS = 256  # thetas whose surrogate covariance is computed before the weights are known
_PLAUSIBLE_MASS = 1.0 - 1e-4  # weight that must rest on exact covariances in the end
_MAX_EXACT = 512
_STORE_BYTES = 256 * 2**20  # memory for the exact (n, n) covariances kept at once, about


def _capped(count: int, n_obs: int) -> int:
    """``count`` covariances, or fewer (at least 32) with many observations: anchors plus
    exact ones, stored with doubling, stay near ``_STORE_BYTES`` (the caps bite from
    ~180 observations on: 256 anchors of 180 x 180 doubles are 66 MB)."""
    return int(np.clip(_STORE_BYTES // (8 * n_obs * n_obs * 4), 32, count))


def gaussian_log_likelihoods(
    cov: torch.Tensor, resid: torch.Tensor, extra: Callable[[np.ndarray], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log N(resid[:, j]; 0, cov + extra([j])[0])`` for every column j, and the solves
    ``(cov + extra_j)^-1 resid[:, j]``.

    Args:
        cov: (n, n) covariance shared by all columns (the discrepancy plus noise).
        resid: (n, S) residuals, one column per parameter vector.
        extra: column indices (B,) -> their own covariances (B, n, n) (the surrogate's
            covariance at each theta), asked for a chunk at a time to bound memory.

    Returns:
        (S,) log likelihoods, and (n, S) solves (what the discrepancy's posterior mean needs).
        A column whose matrix cannot be factorised gets ``-inf`` and zero solves.
    """
    n, n_s = resid.shape
    ll = torch.full((n_s,), -math.inf, dtype=torch.float64)
    alpha = torch.zeros(n, n_s, dtype=torch.float64)
    const = n * math.log(2.0 * math.pi)
    chunk = int(np.clip(_STORE_BYTES // (32 * n * n), 8, _CHUNK))  # a chunk's two (B, n, n)
    with torch_scope(), torch.no_grad():
        for j in range(0, n_s, chunk):
            cols = np.arange(j, min(j + chunk, n_s))
            chol, info = torch.linalg.cholesky_ex(cov + extra(cols))
            ok = info == 0
            r = resid[:, cols].T[ok][..., None]
            a = torch.cholesky_solve(r, chol[ok])[..., 0]
            logdet = 2.0 * torch.log(torch.diagonal(chol[ok], dim1=-2, dim2=-1)).sum(-1)
            idx = torch.as_tensor(cols)[ok]
            ll[idx] = -0.5 * ((r[..., 0] * a).sum(-1) + logdet + const)
            alpha[:, idx] = a.T
    return ll, alpha


def grouped_log_likelihoods(
    cov: torch.Tensor, resid: torch.Tensor, group_cov: torch.Tensor, group: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`gaussian_log_likelihoods`, but column j's own covariance is that of its
    group, ``group_cov[group[j]]`` (G, n, n): one factorisation per group instead of per
    column, so thousands of columns cost little more than a few hundred groups."""
    n, n_s = resid.shape
    ll = torch.full((n_s,), -math.inf, dtype=torch.float64)
    alpha = torch.zeros(n, n_s, dtype=torch.float64)
    const = n * math.log(2.0 * math.pi)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(group_cov) + 1))
    with torch_scope(), torch.no_grad():
        chol, info = torch.linalg.cholesky_ex(cov + group_cov)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        for g in np.flatnonzero((info == 0).numpy() & (np.diff(starts) > 0)):
            cols = torch.as_tensor(order[starts[g] : starts[g + 1]])
            a = torch.cholesky_solve(resid[:, cols], chol[g])
            ll[cols] = -0.5 * ((resid[:, cols] * a).sum(0) + logdet[g] + const)
            alpha[:, cols] = a
    return ll, alpha


def _farthest_points(points: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` rows of ``points`` spread out (greedy farthest-point order)."""
    chosen = [0]
    dist = np.sum((points - points[0]) ** 2, axis=1)
    for _ in range(1, min(m, len(points))):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.sum((points - points[chosen[-1]]) ** 2, axis=1))
    return np.array(chosen)


class TheoryCovariance:
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

    def __init__(
        self,
        surrogate: TheorySurrogate,
        s: np.ndarray,
        thetas: np.ndarray,
        anchors: int = _ANCHORS,
    ) -> None:
        self.surrogate, self.s, self.thetas = surrogate, s, thetas
        self.slot = np.full(len(thetas), -1)  # index into self.store, or -1
        self.count = 0  # rows of self.store in use; it grows by doubling
        self.store = torch.zeros(0, len(s), len(s), dtype=torch.float64)
        scaled = surrogate.space.to_unit(thetas) / surrogate.hyper["lengthscale"][1:].numpy()
        anchors = _farthest_points(scaled, _capped(anchors, len(s)))
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
                self.store = grown.double()  # amortised: doubling, not one copy per call
            self.store[self.count : end] = torch.as_tensor(c / self.surrogate.y_std**2)
            self.slot[idx] = self.count + np.arange(len(idx))
            self.count = end
        return idx

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        """Exact covariances (B, n, n) of thetas ``idx`` (computed first where missing)."""
        self.make_exact(idx)
        return self.store[torch.as_tensor(self.slot[np.asarray(idx, dtype=int)])]


def normalised(log_post: np.ndarray) -> np.ndarray:
    """Weights from log posteriors, normalised by log-sum-exp."""
    top = np.max(log_post)
    if not np.isfinite(top):
        raise ValueError("no parameter vector has a finite posterior (prior or fit failed)")
    w = np.exp(log_post - top)
    return w / w.sum()


def plausible(log_post: np.ndarray) -> np.ndarray:
    """The thetas holding all but 1e-4 of the weight, heaviest first (the rest keep their
    screened weights: enough for 5 % and 95 % quantiles)."""
    w = normalised(log_post)
    order = np.argsort(-w)
    return order[: np.searchsorted(np.cumsum(w[order]), _PLAUSIBLE_MASS) + 1]


def weigh(
    theory: TheoryCovariance,
    cov: torch.Tensor,
    resid: torch.Tensor,
    log_prior: np.ndarray,
    limit: int = _MAX_EXACT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log likelihoods (S,) and solves (n, S) at every theta: screened with the groups'
    covariances, then exact wherever the weight rests (at most ``limit`` thetas, the
    heaviest, fewer with many observations: :func:`_capped`; repeated while that set
    grows)."""
    limit = _capped(limit, len(resid))
    ll, alpha = grouped_log_likelihoods(cov, resid, theory.group_cov, theory.group)
    done = np.zeros(len(ll), dtype=bool)
    for _ in range(4):
        todo = plausible(ll.numpy() + log_prior)[:limit]
        todo = todo[~done[todo]]
        if not len(todo):
            break
        ll[todo], alpha[:, todo] = gaussian_log_likelihoods(
            cov, resid[:, todo], lambda cols, todo=todo: theory(todo[cols])
        )
        done[todo] = True
    return ll, alpha
