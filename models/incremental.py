"""The decision path's posterior: multi-task GP covariance at fixed candidates, updated
incrementally (DESIGN.md, "Performance: the decision path is incremental").

Why by hand: gpytorch recomputes the predictive covariance at all candidates on every call
(0.7-1.4 s at n = 500, 40,000 candidate-tasks, measured here), fantasies included. But the
integrated variance reduction needs only posterior *covariances*, and those do not depend on the
measured values: conditioning on one more (position, task) row changes every candidate's
covariance by a rank-one term ``v v^T`` with ``v = (k_new - l^T V) / d``, O(n*M*T). Pending points
(chosen, not yet measured) therefore enter the state the moment they are decided, which is
exactly what stops two busy instruments from being sent to the same place.

State, for n conditioned rows and M candidate positions x T tasks:
``L`` (n, n) Cholesky of K_SS + N; ``V`` (n, M, T) = L^-1 K_S,cand; ``C`` (M, T, T) posterior
cross-task covariance at each candidate position.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from coorch.models.mtgp import MTGPHyperparameters

JITTER = 1e-8


class IncrementalPosterior:
    """Posterior covariance of an ICM GP at ``candidates`` (M, d, unit box), conditioned on
    rows added one at a time by :meth:`add`. Values ``y`` never enter: see module docstring."""

    def __init__(
        self,
        candidates: np.ndarray,
        hyper: MTGPHyperparameters,
        *,
        reference: np.ndarray | None = None,
        capacity: int = 256,
        dtype: type = np.float32,
    ) -> None:
        self.candidates = np.ascontiguousarray(candidates, dtype=float)
        self.hyper = hyper
        self.dtype = dtype
        m, t = len(self.candidates), hyper.num_tasks
        self.reference = np.arange(m) if reference is None else np.asarray(reference, int)
        self.n = 0
        self.x = np.zeros((capacity, self.candidates.shape[1]))
        self.t = np.zeros(capacity, dtype=int)
        self.L = np.zeros((capacity, capacity))
        self.V = np.zeros((capacity, m, t), dtype=dtype)
        # V at the reference positions, kept contiguous for the variance-reduction GEMM
        self.V_ref = np.zeros((capacity, len(self.reference), t), dtype=dtype)
        self.C = hyper.prior_diagonal(self.candidates).astype(float)  # (M, T, T)

    @property
    def num_tasks(self) -> int:
        return self.hyper.num_tasks

    def _grow(self) -> None:
        cap = 2 * len(self.t)
        for name in ("x", "t", "V", "V_ref"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        big = np.zeros((cap, cap))
        big[: self.n, : self.n] = self.L[: self.n, : self.n]
        self.L = big

    def add(self, x: np.ndarray, tasks: list[int] | np.ndarray) -> None:
        """Condition on observing ``tasks`` at position ``x`` (values not needed)."""
        for task in np.atleast_1d(tasks):
            self._add_row(np.asarray(x, float), int(task))

    def _add_row(self, x: np.ndarray, task: int) -> None:
        if self.n == len(self.t):
            self._grow()
        n, h = self.n, self.hyper
        if n:
            k_s = h.covariance(x[None], [task], self.x[:n], self.t[:n])[0]
            l_vec = solve_triangular(self.L[:n, :n], k_s, lower=True, check_finite=False)
        else:
            l_vec = np.zeros(0)
        prior = h.prior_diagonal(x[None])[0, task, task]
        d2 = prior + h.noise[task] + JITTER - l_vec @ l_vec
        d = np.sqrt(max(d2, JITTER))
        v = np.zeros((len(self.candidates), h.num_tasks), dtype=self.dtype)  # prior cov.
        for k, b in h.components():
            if b[task].any():
                v += np.multiply.outer(k(x, self.candidates)[0], b[task]).astype(self.dtype)
        if n:
            v -= np.tensordot(l_vec.astype(self.dtype), self.V[:n], axes=1)
        v /= d
        self.L[n, :n], self.L[n, n] = l_vec, d
        self.x[n], self.t[n], self.V[n], self.V_ref[n] = x, task, v, v[self.reference]
        self.C -= v[:, :, None] * v[:, None, :]
        self.n += 1

    def variance(self) -> np.ndarray:
        """Posterior variance (M, T) of the latent function, standardised units."""
        return np.maximum(np.einsum("mtt->mt", self.C), 0.0)

    def cross_covariance(self, idx: np.ndarray, tasks: list[int]) -> np.ndarray:
        """Posterior covariance between (candidates[idx], tasks) and every task at the
        reference positions: shape (K, |tasks|, R, T). One GEMM, n x K|tasks| x R*T."""
        h, ref = self.hyper, self.reference
        prior = np.zeros((len(idx), len(tasks), len(ref), h.num_tasks))
        for kernel, b in h.components():
            if b[tasks].any():
                k = kernel(self.candidates[idx], self.candidates[ref])  # (K, R)
                prior += k[:, None, :, None] * b[tasks][None, :, None, :]
        if self.n == 0:
            return prior
        n = self.n
        vp = self.V[:n, idx][:, :, tasks].reshape(n, -1)  # (n, K*O)
        vr = self.V_ref[:n].reshape(n, -1)  # (n, R*T)
        return prior - (vp.T @ vr).reshape(prior.shape)


def exact_posterior(
    hyper: MTGPHyperparameters, x: np.ndarray, tasks: np.ndarray, y: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and latent variance (Q, T) at ``query`` in the targets' own units
    (for a task modelled as its log: the log-normal's mean and variance).

    The reporting path: one Cholesky of the observed rows, run after a campaign or per report,
    never per decision.
    """
    h = hyper
    x, tasks, y = np.atleast_2d(x), np.asarray(tasks, int), np.asarray(y, float)
    q, t_all = len(query), np.arange(h.num_tasks)
    prior_var = np.einsum("qtt->qt", h.prior_diagonal(np.atleast_2d(query)))
    if len(y) == 0:
        return h.unwarped(np.broadcast_to(h.task_mean, (q, h.num_tasks)), prior_var)
    ys = h.standardised(y, tasks) - h.task_mean[tasks]
    k_ss = h.covariance(x, tasks, x, tasks)
    k_ss[np.diag_indices_from(k_ss)] += h.noise[tasks] + JITTER
    factor = cho_factor(k_ss, lower=True, check_finite=False)
    alpha = cho_solve(factor, ys, check_finite=False)
    mean = np.empty((q, h.num_tasks))
    var = np.empty((q, h.num_tasks))
    for t in t_all:
        kt = h.covariance(query, np.full(q, t), x, tasks)  # (Q, n)
        mean[:, t] = h.task_mean[t] + kt @ alpha
        w = solve_triangular(factor[0], kt.T, lower=True, check_finite=False)
        var[:, t] = np.maximum(prior_var[:, t] - (w * w).sum(0), 0.0)
    return h.unwarped(mean, var)
