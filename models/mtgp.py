"""Multi-task GP hyperparameters: fitted with gpytorch, used by the incremental posterior.

The model is the intrinsic coregionalisation model (ICM) of DESIGN.md: one Matern-5/2 kernel
over library position, multiplied by a task covariance ``B`` (gpytorch ``IndexKernel``) that
links the modalities, with a noise level and a constant mean per task, in the Hadamard form
(each observation is one (position, task) pair, so modalities need not share positions).

Fitting is the slow part (a second or more at n = 500), so it runs in the background on Dask
(:func:`fit_hyperparameters` is a pure function of arrays, cheap to ship) and its result, a small
:class:`MTGPHyperparameters`, is swapped into the decision path when ready.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

SQRT5 = np.sqrt(5.0)


@dataclasses.dataclass(frozen=True)
class MTGPHyperparameters:
    """Everything the posterior needs; positions are in the unit box, targets standardised."""

    lengthscale: np.ndarray  # (d,)
    task_covariance: np.ndarray  # (T, T), B
    noise: np.ndarray  # (T,) observation noise variance, standardised units
    task_mean: np.ndarray  # (T,) constant mean, standardised units
    y_offset: np.ndarray  # (T,) standardisation: y_std = (y - offset) / scale
    y_scale: np.ndarray  # (T,)
    n_train: int = 0

    @property
    def num_tasks(self) -> int:
        return len(self.noise)

    @property
    def version(self) -> str:
        """A short content hash: the ``model_version`` a decision records."""
        h = hashlib.sha256()
        for a in (self.lengthscale, self.task_covariance, self.noise, self.task_mean):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return f"mtgp-n{self.n_train}-{h.hexdigest()[:10]}"

    def correlation(self) -> np.ndarray:
        """Inter-task correlation implied by ``B`` (what one modality tells about another)."""
        s = np.sqrt(np.diag(self.task_covariance))
        return self.task_covariance / np.outer(s, s)

    def with_max_correlation(self, limit: float) -> MTGPHyperparameters:
        """The same task variances with every |inter-task correlation| clipped to ``limit``.

        With a handful of points per task the MAP estimate of ``B`` runs to correlations of
        +-1, and a knowledge gain that believes one modality determines another stops measuring
        it (docs/benchmarks.md, "Efficiency"). Clipping can break positive definiteness for
        three or more tasks, so the off-diagonal is then shrunk until it holds.
        """
        s = np.sqrt(np.diag(self.task_covariance))
        r = self.correlation()
        off = ~np.eye(len(s), dtype=bool)
        r[off] = np.clip(r[off], -limit, limit)
        while np.linalg.eigvalsh(r).min() < 1e-9:
            r[off] *= 0.9
        return dataclasses.replace(self, task_covariance=r * np.outer(s, s))

    def independent(self) -> MTGPHyperparameters:
        """The same model with the tasks decoupled (the single-modality baseline)."""
        return dataclasses.replace(self, task_covariance=np.diag(np.diag(self.task_covariance)))


def default_hyperparameters(num_tasks: int, dim: int, *, lengthscale: float = 0.2,
                            noise: float = 0.05, correlation: float = 0.0) -> MTGPHyperparameters:
    """A prior guess used before there are enough data to fit (no coupling assumed)."""
    b = np.full((num_tasks, num_tasks), correlation) + (1 - correlation) * np.eye(num_tasks)
    return MTGPHyperparameters(
        lengthscale=np.full(dim, lengthscale), task_covariance=b,
        noise=np.full(num_tasks, noise), task_mean=np.zeros(num_tasks),
        y_offset=np.zeros(num_tasks), y_scale=np.ones(num_tasks))


def matern52(a: np.ndarray, b: np.ndarray, lengthscale: np.ndarray) -> np.ndarray:
    """Matern-5/2 correlation between point sets ``a`` (n, d) and ``b`` (m, d)."""
    a = np.atleast_2d(a) / lengthscale
    b = np.atleast_2d(b) / lengthscale
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    r = np.sqrt(np.maximum(d2, 0.0))
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * np.exp(-SQRT5 * r)


class _HadamardMTGP:
    """Factory for the gpytorch model (kept inside a function scope to import lazily)."""

    @staticmethod
    def build(x: torch.Tensor, y: torch.Tensor, num_tasks: int, rank: int, coupled: bool):
        import gpytorch
        from gpytorch.priors import GammaPrior
        from linear_operator import to_linear_operator

        class Model(gpytorch.models.ExactGP):
            def __init__(self) -> None:
                likelihood = gpytorch.likelihoods.HadamardGaussianLikelihood(
                    num_tasks, noise_constraint=gpytorch.constraints.GreaterThan(1e-4),
                    task_feature_index=-1)
                super().__init__(x, y, likelihood)
                d = x.shape[-1] - 1
                self.task_mean = torch.nn.Parameter(torch.zeros(num_tasks, dtype=x.dtype))
                self.covar_module = gpytorch.kernels.MaternKernel(
                    nu=2.5, ard_num_dims=d, lengthscale_prior=GammaPrior(3.0, 6.0))
                self.task_covar_module = gpytorch.kernels.IndexKernel(num_tasks, rank=rank)
                if not coupled:
                    self.task_covar_module.covar_factor.data.zero_()
                    self.task_covar_module.covar_factor.requires_grad_(False)

            def forward(self, xi: torch.Tensor):
                xs, idx = xi[..., :-1], xi[..., -1:].long()
                mean = self.task_mean[idx.squeeze(-1)]
                # Dense product: a lazy product of two kernels goes through Lanczos root
                # decompositions, approximate and (measured here) ~20x slower at n = 500.
                # Kept a linear operator: a plain tensor makes the prior MVN factorise the
                # noiseless covariance, singular as soon as a point is measured twice.
                covar = to_linear_operator(self.covar_module(xs).to_dense()
                                           * self.task_covar_module(idx).to_dense())
                return gpytorch.distributions.MultivariateNormal(mean, covar)

        return Model()


def standardise(y: np.ndarray, tasks: np.ndarray, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-task offset and scale (scale 1 where a task has fewer than two values)."""
    off, scale = np.zeros(num_tasks), np.ones(num_tasks)
    for t in range(num_tasks):
        v = y[tasks == t]
        if len(v):
            off[t] = v.mean()
        if len(v) > 1 and v.std() > 0:
            scale[t] = v.std()
    return off, scale


def fit_hyperparameters(x: np.ndarray, tasks: np.ndarray, y: np.ndarray, num_tasks: int, *,
                        rank: int | None = None, coupled: bool = True,
                        max_iter: int = 200, seed: int = 0) -> MTGPHyperparameters:
    """Maximum a-posteriori hyperparameters (torch L-BFGS) of the Hadamard MTGP.

    ``x`` (n, d) positions in the unit box, ``tasks`` (n,) task index, ``y`` (n,) raw targets.
    Pure function of arrays so Dask can run it anywhere; returns numpy hyperparameters.
    """
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(seed)
    x, tasks, y = np.asarray(x, float), np.asarray(tasks, int), np.asarray(y, float)
    off, scale = standardise(y, tasks, num_tasks)
    ys = (y - off[tasks]) / scale[tasks]
    xi = torch.as_tensor(np.column_stack([x, tasks]), dtype=torch.float64)
    yt = torch.as_tensor(ys, dtype=torch.float64)
    rank = rank or min(num_tasks, 2)
    model = _HadamardMTGP.build(xi, yt, num_tasks, rank, coupled).double()
    # start from a plausible model (standardised data): a modest lengthscale, some noise
    model.covar_module.lengthscale = 0.3
    model.likelihood.noise = torch.full((num_tasks,), 0.05, dtype=torch.float64)
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    best = {"loss": float("inf"), "state": None}

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -mll(model(xi), yt, xi)
        if loss.item() < best["loss"]:
            best["loss"] = loss.item()
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loss.backward()
        return loss

    try:
        opt.step(closure)
    except torch.linalg.LinAlgError:
        if best["state"] is None:
            raise
        # the line search stepped somewhere numerically singular (huge lengthscale, tiny
        # noise): go back to the best iterate and finish with small Adam steps
        model.load_state_dict(best["state"])
        adam = torch.optim.Adam(params, lr=0.05)
        for _ in range(max_iter):
            try:
                closure()
            except torch.linalg.LinAlgError:
                break
            adam.step()
    model.load_state_dict(best["state"])
    model.eval()
    with torch.no_grad():
        b = model.task_covar_module.covar_matrix.to_dense().numpy().copy()
        return MTGPHyperparameters(
            lengthscale=model.covar_module.lengthscale.detach().numpy().ravel().copy(),
            task_covariance=b,
            noise=model.likelihood.noise.detach().numpy().ravel().copy(),
            task_mean=model.task_mean.detach().numpy().copy(),
            y_offset=off, y_scale=scale, n_train=len(y))
