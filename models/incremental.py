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

A new model (fitted hyperparameters) means a new state on every row conditioned so far. Row by
row that is n rank-one updates, each a memory-bound O(n M T) pass over ``V``: 1.9 s at n = 500,
27 s at n = 2000, 227 s at n = 5000 (4 tasks, 10,000 candidates, 2 cores). :meth:`extend`
builds the same state in blocks instead: one Cholesky of the rows' covariance and one
triangular solve (BLAS-3) for every candidate at once (``coorch bench decision`` times both),
its kernel evaluations (in torch) and element-wise sums by chunks of candidates, a thread per
core: alone, each runs on one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve, cholesky, solve_triangular
from scipy.linalg.blas import get_blas_funcs

from coorch.models.kernels import Kernel
from coorch.models.mtgp import MTGPHyperparameters

JITTER = 1e-8

#: Bytes one chunk of candidates may take in :meth:`IncrementalPosterior.extend` (per temporary).
CHUNK_BYTES = 64 * 2**20


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

    def _grow(self, cap: int | None = None) -> None:
        """Reallocate to ``cap`` rows (default: double), keeping the first ``n``."""
        cap = 2 * len(self.t) if cap is None else cap
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

    def extend(self, x: np.ndarray, tasks: np.ndarray) -> None:
        """Condition on the rows (``x`` (b, d), ``tasks`` (b,)) at once.

        The state (``L``, ``V``, ``V_ref``, ``C``, capacity) is the one :meth:`add` reaches
        adding the same rows one by one in this order, to rounding (about 1e-14 relative in
        float64; tests/test_models_incremental_rebuild.py), in BLAS-3 instead of b memory-bound
        passes over ``V``: 2000 rows at 10,000 candidates x 4 tasks in seconds, not 27 s. Below
        ``n`` conditioned rows the new ones are a block of the Cholesky factor:
        ``L21 = K21 L11^-T``, ``L22 = chol(K22 + N - L21 L21^T)``, ``V2 = L22^-1 (K2,cand -
        L21 V1)``; from ``n = 0`` that is one Cholesky and one triangular solve.

        Memory: the right-hand side ``K2,cand - L21 V1`` is (b, M*T), 320 MB in float32 at
        b = 2000, M = 10,000, T = 4 (640 MB in float64; 0.8 and 1.6 GB at b = 5000). It is
        written straight into ``V``'s new rows and solved there in place, so it costs nothing
        beyond ``V`` itself (capacity x M x T, 640 MB in float32 at capacity 4000); the kernel
        evaluations that fill it go by chunks of candidates whose temporaries stay under
        ``CHUNK_BYTES`` each (64 MiB: 1,000 candidates at b = 2000, 400 at b = 5000). One
        solve for all candidates is also faster than one per chunk: 3.2 s against 3.9 s at
        b = 2000 on 2 cores (measured here, load 0.8).

        A pivot below ``JITTER`` (a numerically singular block: noise near zero and repeated
        rows) is one :meth:`add` clamps; such a block is added row by row instead, so the state
        stays the one :meth:`add` makes.
        """
        x = np.atleast_2d(np.asarray(x, float))
        tasks = np.asarray(tasks, int).reshape(-1)
        b, n = len(tasks), self.n
        if b == 0:
            return
        cap = max(len(self.t), 1)
        while cap < n + b:  # the doublings add() would make
            cap *= 2
        if cap != len(self.t):
            self._grow(cap)
        factor = self._factor_block(x, tasks)
        if factor is None:
            for xi, ti in zip(x, tasks, strict=True):
                self._add_row(xi, int(ti))
            return
        l21, l22 = factor
        new = slice(n, n + b)
        self.L[new, :n], self.L[new, new] = l21, l22
        self.x[new], self.t[new] = x, tasks
        step = max(1, CHUNK_BYTES // (8 * b * self.num_tasks))
        chunks = [slice(s, s + step) for s in range(0, len(self.candidates), step)]
        l21 = l21.astype(self.dtype)
        each_chunk = _on_every_core if len(chunks) > 1 else _in_turn
        each_chunk(lambda cols: self._right_hand_side(cols, x, tasks, l21), chunks)
        # X L22^T = B^T on the transpose: V's C-ordered rows are the Fortran matrix BLAS
        # wants, solved in place (solve_triangular would copy them first)
        trsm = get_blas_funcs("trsm", dtype=self.dtype)
        rows = self.V[new].reshape(b, -1)
        out = trsm(1.0, l22.astype(self.dtype), rows.T, side=1, lower=1, trans_a=1, overwrite_b=1)
        if not np.shares_memory(out, rows):
            rows[...] = out.T
        each_chunk(lambda cols: self._downdate(cols, new), chunks)
        self.V_ref[new] = self.V[new][:, self.reference]
        self.n += b

    def _factor_block(
        self, x: np.ndarray, tasks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(L21, L22)``: the Cholesky factor's rows for ``(x, tasks)`` below the ``n``
        conditioned ones, or None where a pivot falls below ``JITTER`` (:meth:`extend`)."""
        h, n = self.hyper, self.n
        k22 = self._row_covariance(x, tasks, x, tasks)
        prior = h.prior_diagonal(x)[np.arange(len(tasks)), tasks, tasks]  # as add() has it
        k22[np.diag_indices_from(k22)] = prior + h.noise[tasks] + JITTER
        l21 = np.zeros((len(tasks), n))
        if n:
            k12 = self._row_covariance(self.x[:n], self.t[:n], x, tasks)  # (n, b)
            l21 = solve_triangular(self.L[:n, :n], k12, lower=True, check_finite=False).T
            k22 -= l21 @ l21.T
        try:
            l22 = cholesky(k22, lower=True, check_finite=False)
        except LinAlgError:
            return None
        if (np.diag(l22) ** 2 < JITTER).any():
            return None
        return l21, l22

    def _row_covariance(
        self, xa: np.ndarray, ta: np.ndarray, xb: np.ndarray, tb: np.ndarray
    ) -> np.ndarray:
        """``hyper.covariance`` (na, nb), each component evaluated only on the rows and columns
        its task matrix touches: a task's own part and trend on that task's rows. Evaluated in
        full, the 1 + 2T components of a fitted model cost 2.5 s at n = 2000 (4 tasks, 2
        loaded cores); this way, about two components' worth."""
        out = np.zeros((len(ta), len(tb)))
        for kernel, bq in self.hyper.components():
            ra, rb = np.flatnonzero(bq[ta].any(1)), np.flatnonzero(bq[:, tb].any(0))
            if not len(ra) or not len(rb):
                continue
            if len(ra) == len(ta) and len(rb) == len(tb):
                out += bq[ta][:, tb] * kernel(xa, xb)
            else:
                out[np.ix_(ra, rb)] += bq[ta[ra]][:, tb[rb]] * kernel(xa[ra], xb[rb])
        return out

    def _right_hand_side(
        self, cols: slice, x: np.ndarray, tasks: np.ndarray, l21: np.ndarray
    ) -> None:
        """``K2,cand - L21 V1`` at the candidates ``cols`` into ``V``'s rows for the new rows
        ``(x, tasks)`` (:meth:`extend`)."""
        n, b = self.n, len(tasks)
        out = self.V[n : n + b, cols]  # (b, mc, T)
        self._prior_cross(x, tasks, self.candidates[cols], out)
        if n:
            flat = out.reshape(b, -1)  # a view: each row's (mc, T) is contiguous
            flat -= l21 @ self.V[:n, cols].reshape(n, -1)

    def _downdate(self, cols: slice, new: slice) -> None:
        """``C`` at the candidates ``cols`` less the new rows' ``v v^T`` (:meth:`extend`),
        summed in float64, where products of float32 entries are exact: no less accurate than
        :meth:`add`'s rank-one updates."""
        v = self.V[new, cols]  # (b, mc, T)
        for p in range(self.num_tasks):
            for q in range(p, self.num_tasks):
                vv = np.einsum("im,im->m", v[:, :, p], v[:, :, q], dtype=float)
                self.C[cols, p, q] -= vv
                if q != p:
                    self.C[cols, q, p] -= vv

    def _prior_cross(
        self, x: np.ndarray, tasks: np.ndarray, cand: np.ndarray, out: np.ndarray
    ) -> None:
        """Prior covariance (b, mc, T) between the rows ``(x, tasks)`` and every task at
        ``cand`` into ``out``, summed in ``dtype`` as :meth:`add` sums it. A component is
        evaluated only on the rows and task columns its task matrix touches
        (:meth:`_row_covariance`). The kernels are evaluated in torch, float64 as in numpy,
        about twice as fast on one thread (1.2 against 2.3 s at n = 2000, 2026-12-05). The
        sums stay numpy's, rounded once per component: summed in float32 in torch they were
        ~0.5 s faster, but most of ``V`` moved by an ulp, and ties between candidates broke
        otherwise than before (docs/benchmarks.md, 2026-12-05)."""
        import torch

        out[...] = 0.0
        xt, ct = torch.from_numpy(x), torch.from_numpy(cand)
        for kernel, bq in _torch_components(self.hyper):
            w = bq[tasks]  # (b, T)
            rows = np.flatnonzero(w.any(1))
            if not len(rows):
                continue
            sel = slice(None) if len(rows) == len(tasks) else rows
            k = kernel(xt[sel], ct).numpy()  # (r, mc)
            for j in np.flatnonzero(w[sel].any(0)):
                out[sel, :, j] += k * w[sel, j][:, None]

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


def _in_turn(work: Callable[[slice], None], chunks: list[slice]) -> None:
    for cols in chunks:
        work(cols)


def _on_every_core(work: Callable[[slice], None], chunks: list[slice]) -> None:
    """``work`` on each chunk of candidates, one thread per core. The chunks write disjoint
    columns of ``V`` and ``C`` and each is computed exactly as in turn, so the state is the same
    to the last bit (tests/test_models_incremental_rebuild.py); numpy's element-wise passes and
    torch's kernels release the GIL, and alone they use one core: 2.5 of 6.5 s at n = 2000."""
    with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
        list(pool.map(work, chunks))  # re-raises a chunk's error here


def _torch_components(hyper: MTGPHyperparameters) -> list[tuple[Kernel, np.ndarray]]:
    """``hyper.components()`` with each kernel's parameters as float64 torch tensors, so the
    kernels evaluate on tensors (:mod:`coorch.models.kernels` serves both)."""
    import torch

    def on_torch(kernel: Kernel) -> Kernel:
        arrays = {
            f.name: torch.from_numpy(np.asarray(getattr(kernel, f.name), dtype=np.float64))
            for f in dataclasses.fields(kernel)
            if isinstance(getattr(kernel, f.name), np.ndarray)
        }
        return dataclasses.replace(kernel, **arrays)

    return [(on_torch(k), b) for k, b in hyper.components()]


def exact_posterior(
    hyper: MTGPHyperparameters,
    x: np.ndarray,
    tasks: np.ndarray,
    y: np.ndarray,
    query: np.ndarray,
    *,
    modelled: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and latent variance (Q, T) at ``query`` in the targets' own units
    (for a task modelled as its log: the log-normal's mean and variance), or with
    ``modelled`` in the units the GP models (the log's, where it is Gaussian).

    The reporting path: one Cholesky of the observed rows, run after a campaign or per report,
    never per decision.
    """
    h = hyper
    x, tasks, y = np.atleast_2d(x), np.asarray(tasks, int), np.asarray(y, float)
    q, t_all = len(query), np.arange(h.num_tasks)
    prior_var = np.einsum("qtt->qt", h.prior_diagonal(np.atleast_2d(query)))
    out = h.modelled if modelled else h.unwarped
    if len(y) == 0:
        return out(np.broadcast_to(h.task_mean, (q, h.num_tasks)), prior_var)
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
    return out(mean, var)
