"""What operators value, learned from their votes: a reward surrogate.

Operators score measured signals (1-5, or good/bad mapped to 5/1), as in BOARS-style
human-in-the-loop BO [Biswas2024BOARS]_. A vote is about a *signal*, not a position, so the
surrogate does not learn score(position): it learns score(descriptors), where the descriptors of
a position are the multi-task GP's posterior mean of every task there. Candidates and voted
points are described the same way, so a vote generalises to every position whose predicted
properties look like the voted one, wherever it is on the library.

* :class:`RewardSurrogate`: a botorch ``SingleTaskGP`` on (descriptors, scores), inputs and
  outputs standardised, fitted with ``fit_gpytorch_mll`` under a bounded number of L-BFGS-B
  iterations (a fit is on the decision path; it takes tens of milliseconds for 50 votes);
* the agent blends its prediction with knowledge (:func:`coorch.models.acquisition.blend`).

This module knows nothing of how votes are collected or stored; the caller gives arrays.

References:
    .. [Biswas2024BOARS] A. Biswas et al., "A dynamic Bayesian optimized active recommender
       system for curiosity-driven partially human-in-the-loop automated experiments",
       npj Computational Materials (2024), doi:10.1038/s41524-023-01191-5.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from botorch.exceptions import InputDataWarning, ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import InputStandardize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from coorch.models._threads import torch_scope

__all__ = ["RewardSurrogate"]


class RewardSurrogate:
    """Operators' score as a function of a position's descriptors (one GP, score units).

    Args:
        seed: seeds the fit (its retries draw from the hyperparameter priors), so the same
            votes give the same surrogate whatever ran before.
        maxiter: L-BFGS-B iterations per fit attempt. Hyperparameters of a few dozen votes
            settle in a few dozen iterations; the bound keeps a fit on the decision path
            well under a second even when the likelihood is flat (ties, repeated points).
        prior_std: the std (score units) predicted everywhere when the votes cannot tell
            candidates apart (one vote, or every vote the same score): no GP is fitted then,
            since there is no spread to standardise or to learn a lengthscale from.

    ``fit`` returns the surrogate itself, fitted; ``predict`` gives (mean, std) per candidate.
    """

    def __init__(self, *, seed: int = 0, maxiter: int = 75, prior_std: float = 1.0) -> None:
        if maxiter < 1:
            raise ValueError("maxiter must be >= 1")
        if not prior_std > 0:
            raise ValueError("prior_std must be > 0")
        self.seed, self.maxiter, self.prior_std = int(seed), int(maxiter), float(prior_std)
        self.gp: SingleTaskGP | None = None
        self.n_votes = 0
        self._dim: int | None = None
        self._constant: float | None = None

    def fit(self, descriptors: np.ndarray, scores: np.ndarray) -> RewardSurrogate:
        """Fit on ``descriptors`` (n, T) and their ``scores`` (n,); returns ``self``.

        Repeated descriptors (one signal voted twice, or two that look alike) and tied scores
        are ordinary data for a GP with a noise term: conflicting votes at one point average,
        agreeing ones sharpen. With one vote or no spread in the scores the surrogate is the
        constant mean score (see ``prior_std``).
        """
        x, y = _check_votes(descriptors, scores)
        self.n_votes, self._dim, self.gp = len(y), x.shape[1], None
        if len(y) == 1 or np.ptp(y) == 0:
            self._constant = float(y.mean())
            return self
        self._constant = None
        xt = torch.as_tensor(x, dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
        with torch_scope(seed=self.seed):
            with warnings.catch_warnings():  # standardised inputs are not meant to be in [0, 1]
                warnings.simplefilter("ignore", InputDataWarning)
                gp = SingleTaskGP(
                    xt,
                    yt,
                    input_transform=InputStandardize(d=x.shape[1]),
                    outcome_transform=Standardize(m=1),
                )
            try:
                fit_gpytorch_mll(
                    ExactMarginalLogLikelihood(gp.likelihood, gp),
                    optimizer_kwargs={"options": {"maxiter": self.maxiter}},
                )
            except ModelFittingError as err:  # keep the default hyperparameters
                warnings.warn(
                    f"reward surrogate: GP fit on {len(y)} votes failed ({err}); "
                    "using default hyperparameters",
                    stacklevel=2,
                )
        gp.eval()
        self.gp = gp
        return self

    def predict(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (M,) and std (M,) of the score at ``descriptors`` (M, T), in score units.

        The std is the latent score's (no vote noise added): how sure the surrogate is of what
        operators would say on average, which is what shrinks near votes.
        """
        if self._dim is None:
            raise RuntimeError("RewardSurrogate.predict before fit")
        x = np.asarray(descriptors, dtype=float)
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise ValueError(f"descriptors must be (M, {self._dim}), got {x.shape}")
        if self.gp is None:
            m = len(x)
            return np.full(m, self._constant, float), np.full(m, self.prior_std, float)
        with torch_scope(), torch.no_grad():
            post = self.gp.posterior(torch.as_tensor(x, dtype=torch.float64))
            mean = post.mean.reshape(-1).numpy().astype(float)
            std = post.variance.clamp_min(0).sqrt().reshape(-1).numpy().astype(float)
        return mean, std


def _check_votes(descriptors: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) and (n,) float arrays, finite, at least one vote: refused up front, since a NaN
    in a GP's training data fails deep inside the fit with an unhelpful message."""
    x = np.asarray(descriptors, dtype=float)
    y = np.asarray(scores, dtype=float).reshape(-1)
    if x.ndim != 2 or x.shape[0] != len(y):
        raise ValueError(f"descriptors must be (n, T) with n = {len(y)} scores, got {x.shape}")
    if len(y) == 0:
        raise ValueError("no votes to fit")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("descriptors and scores must be finite")
    return x, y
