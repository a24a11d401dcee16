"""Which simulations to run next: where the theory surrogate is unsure at plausible parameters.

Why: simulations are the co-navigation's other instrument. Spread evenly over the whole
(composition x parameters) box they are mostly wasted once the experiment has ruled most
parameters out; run only at the current best guess, the surrogate never learns whether a
neighbouring guess would fit better. So most of a batch goes where the surrogate's variance is
largest among parameters the posterior still finds plausible (its weighted sample, jittered by
its own spread), and a fraction explores the whole box, in case the posterior is wrong early
(Slautin et al. 2024, Bayesian co-navigation).

A batch is chosen greedily. After each pick the candidates' variances are conditioned on it as
if it had been run (a fantasy: the variance of a GP needs no outcome), which is one step of a
pivoted Cholesky of the candidates' posterior covariance. Simulations already submitted
(``pending``) are conditioned on first, so a new batch neither repeats them nor piles up where
they will land. Plausible picks maximise the integrated variance reduction over the plausible
candidates (botorch's ``qNegIntegratedPosteriorVariance`` idea, greedy), exploring picks the
largest variance.
"""

from __future__ import annotations

import numpy as np
import torch

from ._threads import torch_scope
from .theory_posterior import ParameterPosterior
from .theory_space import ParameterSpace, sobol_unit
from .theory_surrogate import TheorySurrogate

__all__ = ["ParameterSpace", "initial_design", "next_simulations"]  # the space, for callers

_POSTERIOR_THETAS = 32  # posterior-sampled parameter vectors per batch's candidates
_PRIOR_THETAS = 16  # parameter vectors drawn from the whole box
_S_PER_THETA = 32  # compositions per parameter vector, at most
_JITTER = 0.5  # posterior samples jittered by this times the posterior's sd per parameter
_MIN_JITTER = 1e-3  # ... at least this much of the box's width


def initial_design(
    space: ParameterSpace, s_range: tuple[float, float], n: int, seed: int = 0
) -> np.ndarray:
    """``n`` scrambled Sobol rows ``(s, theta...)`` over the composition range and the
    parameter box, (n, 1+k): the space-filling start before any data exists."""
    lo, hi = float(s_range[0]), float(s_range[1])
    if not hi > lo:
        raise ValueError(f"s_range must be (low, high) with low < high, got {s_range}")
    u = sobol_unit(n, 1 + space.k, seed)
    return np.column_stack([lo + u[:, 0] * (hi - lo), space.from_unit(u[:, 1:])])


def _candidate_thetas(
    posterior: ParameterPosterior, space: ParameterSpace, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior-sampled (jittered, in the box) and prior-sampled parameter vectors."""
    draws = space.to_unit(posterior.sample(_POSTERIOR_THETAS, rng))
    centred = space.to_unit(posterior.thetas) - space.to_unit(posterior.mean()[None])
    sd = np.sqrt(posterior.weights @ centred**2)
    draws = draws + rng.normal(size=draws.shape) * np.maximum(_JITTER * sd, _MIN_JITTER)
    plausible = space.from_unit(np.clip(draws, 0.0, 1.0))
    prior = space.from_unit(rng.uniform(size=(_PRIOR_THETAS, space.k)))
    return plausible, prior


def _pairs(s_grid: np.ndarray, thetas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows ``(s, theta...)``: each theta with every ``s`` (or a random 32 of them)."""
    rows = []
    for theta in thetas:
        s = s_grid if len(s_grid) <= _S_PER_THETA else rng.choice(s_grid, _S_PER_THETA, False)
        rows.append(np.column_stack([s, np.broadcast_to(theta, (len(s), len(theta)))]))
    return np.vstack(rows)


def _checked(
    surrogate: TheorySurrogate, s_grid: np.ndarray, n: int, pending: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``s_grid`` (m,) and ``pending`` (p, 1+k) as float arrays, or a ValueError."""
    k = surrogate.space.k
    s = np.unique(np.asarray(s_grid, dtype=np.float64))
    if np.ndim(s_grid) != 1 or len(s) == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"s_grid must be a non-empty finite (m,) array, got {np.shape(s_grid)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    p = np.zeros((0, 1 + k)) if pending is None else np.asarray(pending, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 1 + k:
        raise ValueError(f"pending must be (p, {1 + k}) rows (s, theta...), got {p.shape}")
    return s, p


class _Fantasy:
    """Posterior variances of candidate simulations, and their covariances with a target set,
    conditioned one point at a time as if each chosen or pending simulation had been run (one
    step of a pivoted Cholesky; a GP's variance needs no outcome)."""

    def __init__(self, surrogate: TheorySurrogate, rows: np.ndarray, targets: np.ndarray) -> None:
        self.surrogate = surrogate
        self.units = surrogate.unit_inputs(rows[:, 0], rows[:, 1:])
        self.white = surrogate.whitened(self.units)  # (n_sim, N)
        self.var = surrogate.hyper["outputscale"] - (self.white**2).sum(0)
        self.targets = torch.as_tensor(targets)
        u, w = self.units[self.targets], self.white[:, self.targets]
        self.cross = surrogate.prior_covariance(self.units, u) - self.white.T @ w  # (N, T)
        self.factors: list[torch.Tensor] = []
        self.noise = max(float(surrogate.hyper["noise"]), 1e-6)

    def condition(self, j: int) -> None:
        """Condition every variance and covariance on a simulation at row ``j``."""
        col = self.surrogate.prior_covariance(self.units, self.units[j : j + 1])[:, 0]
        col = col - self.white.T @ self.white[:, j]
        for g in self.factors:
            col = col - g * g[j]
        g = col / torch.sqrt(col[j].clamp_min(0.0) + self.noise)
        self.factors.append(g)
        self.var = (self.var - g**2).clamp_min(0.0)
        self.cross = self.cross - g[:, None] * g[self.targets][None, :]

    def variance_reduction(self) -> torch.Tensor:
        """How much each candidate would lower the targets' summed variance (N,)."""
        return (self.cross**2).sum(1) / (self.var + self.noise)


def next_simulations(
    surrogate: TheorySurrogate,
    posterior: ParameterPosterior,
    s_grid: np.ndarray,
    n: int,
    *,
    pending: np.ndarray | None = None,
    rng: np.random.Generator,
    explore: float = 0.25,
) -> np.ndarray:
    """The next ``n`` simulations, rows ``(s, theta...)`` (n, 1+k), distinct and in the box.

    Args:
        surrogate: the current theory surrogate.
        posterior: the current parameter posterior (which thetas are plausible).
        s_grid: (m,) compositions a simulation may be run at (the library's range).
        n: batch size.
        pending: (p, 1+k) simulations submitted but not yet back; conditioned on first.
        rng: randomness of the candidates and of the exploration count.
        explore: expected fraction of the batch drawn from the whole parameter box.

    Plausible picks (``n - Binomial(n, explore)`` of them, first) each lower the surrogate's
    summed variance over the plausible candidates the most: integrated variance, not the
    largest variance, which would pick the edges of the plausible cloud and of the
    composition range, where a simulation teaches least about the rest. Exploring picks
    then take the largest variance among (composition, parameter) pairs from the whole box.
    All picks are conditioned on the pending simulations and on each other.
    """
    s, pend = _checked(surrogate, s_grid, n, pending)
    plausible, prior = _candidate_thetas(posterior, surrogate.space, rng)
    from_posterior, from_prior = _pairs(s, plausible, rng), _pairs(s, prior, rng)
    cand, first = np.unique(np.vstack([from_posterior, from_prior]), axis=0, return_index=True)
    is_prior = np.append(first >= len(from_posterior), np.zeros(len(pend), dtype=bool))
    rows = np.vstack([cand, pend])
    free = np.append(np.ones(len(cand), dtype=bool), np.zeros(len(pend), dtype=bool))
    n_explore = int(rng.binomial(n, min(max(explore, 0.0), 1.0)))
    picks: list[int] = []
    with torch_scope(), torch.no_grad():
        fantasy = _Fantasy(surrogate, rows, np.flatnonzero(free & ~is_prior))
        for j in range(len(cand), len(rows)):
            fantasy.condition(j)
        for slot in range(n):
            exploring = slot >= n - n_explore
            pool = free & (is_prior if exploring else ~is_prior)
            pool = pool if pool.any() else free
            if not pool.any():
                break
            score = fantasy.var if exploring else fantasy.variance_reduction()
            j = int(np.flatnonzero(pool)[torch.argmax(score[torch.as_tensor(pool)]).item()])
            picks.append(j)
            free[j] = False
            fantasy.condition(j)
    return rows[picks]
