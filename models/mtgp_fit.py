"""Maximum a-posteriori hyperparameters of the multi-task GP (:mod:`coorch.models.mtgp`).

The fit in four pieces, each its own function:

* build: :class:`HadamardMTGP`, a gpytorch ``ExactGP`` whose covariance is
  :func:`coorch.models.kernels.covariance`, the function the decision path evaluates in numpy;
* initialise: :func:`initialise`, a plausible start for standardised data;
* optimise, with a fallback: :func:`optimise`, L-BFGS on the negative log posterior (botorch's
  loss closure); if a step lands somewhere numerically singular or NaN, Adam steps (botorch's
  torch loop) from the best iterate seen;
* best of starts: :func:`best_of_starts`, one run per start, the better MAP wins and a start
  that fails outright is skipped.

botorch's own ``fit_gpytorch_mll`` retries a failed fit from hyperparameters drawn from the
priors and rolls back to where it began; here the starts are chosen (a weak and a strong trend,
:data:`coorch.models.mtgp.TREND_STARTS`) and a failed step falls back to the best iterate, so
the pieces are composed from botorch's loss closure and optimisation loop instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial

import gpytorch
import numpy as np
import torch
from botorch.optim.closures import get_loss_closure_with_grads
from botorch.optim.fit import fit_gpytorch_mll_torch
from botorch.optim.utils import get_parameters
from gpytorch.constraints import GreaterThan, Positive
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior
from linear_operator import to_linear_operator
from linear_operator.utils.errors import NanError, NotPSDError

from coorch.models import kernels
from coorch.models._threads import torch_scope
from coorch.models.mtgp import (
    LAPLACE_MAX_VALUES,
    MIN_COUPLING_VALUES,
    TREND_STARTS,
    MTGPHyperparameters,
    standardise,
    warp,
)
from coorch.models.mtgp_laplace import laplace_draws

#: What a numerically singular or NaN step raises: torch's own failure, linear_operator's after
#: its jitter retries, or a step to NaN hyperparameters (seen once in ~10,000 fits on the smbfo
#: twins).
SINGULAR = (torch.linalg.LinAlgError, NotPSDError, NanError)
#: The likelihood's lower bound on a noise variance (standardised units).
NOISE_FLOOR = 1e-4


class _Positive:
    """A positive parameter ``name`` of a gpytorch module, stored as ``raw_<name>`` under its
    registered constraint (gpytorch's pattern for a kernel's lengthscale)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, module: gpytorch.Module | None, owner: type | None = None):
        if module is None:
            return self
        constraint = getattr(module, f"raw_{self.name}_constraint")
        return constraint.transform(getattr(module, f"raw_{self.name}"))

    def __set__(self, module: gpytorch.Module, value: float | torch.Tensor) -> None:
        raw = getattr(module, f"raw_{self.name}")
        value = torch.as_tensor(value, dtype=raw.dtype).expand_as(raw)
        constraint = getattr(module, f"raw_{self.name}_constraint")
        raw.data.copy_(constraint.inverse_transform(value))


class HadamardMTGP(gpytorch.models.ExactGP):
    """The multi-task GP of :mod:`coorch.models.mtgp` in Hadamard form, for fitting.

    Inputs ``x`` (n, d + 1): positions in the fit's frame (the unit box stretched by the
    library's aspect, :func:`fit_hyperparameters`), then the task index. The covariance is
    :func:`coorch.models.kernels.covariance` of :meth:`components`; ``B`` is parametrised as
    gpytorch's ``IndexKernel`` does (a rank-``rank`` factor plus a diagonal). Priors: Gamma(3, 6)
    on every lengthscale, Gamma(1.1, 0.05) on the noise. ``coupled=False`` keeps ``B``
    diagonal; ``couple`` (T,) bool, where given, lets only those tasks couple; ``own=False``
    drops the own parts (the plain ICM). The trend is about ``centre`` (d,), isotropic in the
    fit's frame: one slope variance per task.
    """

    lengthscale = _Positive()  # (d,) of the shared part
    task_lengthscale = _Positive()  # (T, d) of each task's own part
    task_variance = _Positive()  # (T,) s, each task's own part
    trend_variance = _Positive()  # (T,) r, each task's slope variance

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_tasks: int,
        *,
        rank: int,
        coupled: bool = True,
        own: bool = True,
        centre: torch.Tensor,
        couple: torch.Tensor | None = None,
        smoothness: float = 2.5,
    ) -> None:
        likelihood = gpytorch.likelihoods.HadamardGaussianLikelihood(
            num_tasks,
            noise_constraint=GreaterThan(NOISE_FLOOR),
            noise_prior=GammaPrior(1.1, 0.05),
            task_feature_index=-1,
        )
        super().__init__(x, y, likelihood)
        d, self.num_tasks, self.own = x.shape[-1] - 1, num_tasks, own
        self.smoothness = smoothness
        self.task_mean = torch.nn.Parameter(torch.zeros(num_tasks, dtype=x.dtype))
        self.register_buffer("centre", centre)
        self.task_covar_module = gpytorch.kernels.IndexKernel(num_tasks, rank=rank)
        factor = self.task_covar_module.covar_factor
        if not coupled:
            factor.data.zero_()
            factor.requires_grad_(False)
        elif couple is not None and not couple.all():  # only these tasks couple
            keep = couple.to(x.dtype)[:, None]
            factor.data.mul_(keep)
            factor.register_hook(lambda g: g * keep)
            factor._coorch_mask = keep  # the Laplace draws keep the mask too (mtgp_laplace)
        shapes = {"lengthscale": (d,), "trend_variance": (num_tasks,)}
        if own:
            shapes |= {"task_lengthscale": (num_tasks, d), "task_variance": (num_tasks,)}
        for name, shape in shapes.items():
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros(shape)))
            self.register_constraint(f"raw_{name}", Positive())
        self.register_prior("lengthscale_prior", GammaPrior(3.0, 6.0), "lengthscale")
        if own:
            self.register_prior("task_lengthscale_prior", GammaPrior(3.0, 6.0), "task_lengthscale")

    @property
    def task_covariance(self) -> torch.Tensor:
        """``B`` (T, T)."""
        return self.task_covar_module.covar_matrix.to_dense()

    def components(self) -> list[tuple[kernels.Kernel, torch.Tensor]]:
        """The covariance's components, as :meth:`MTGPHyperparameters.components` gives them."""
        d = self.centre.shape[-1]
        return kernels.components(
            self.lengthscale,
            self.task_covariance,
            task_lengthscale=self.task_lengthscale if self.own else None,
            task_variance=self.task_variance if self.own else None,
            trend_weight=self.trend_variance[:, None].expand(-1, d),
            centre=self.centre,
            smoothness=self.smoothness,
        )

    def transform_inputs(self, X: torch.Tensor) -> torch.Tensor:
        """None: botorch's loss closure asks a model for its transformed inputs, which it
        passes to the likelihood (where the task column picks each row's noise)."""
        return X

    def forward(self, xi: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        xs, idx = xi[..., :-1], xi[..., -1].long()
        covar = kernels.covariance(self.components(), xs, idx, xs, idx)
        # Kept a linear operator: a plain tensor makes the prior MVN factorise the noiseless
        # covariance, singular as soon as a point is measured twice.
        return gpytorch.distributions.MultivariateNormal(
            self.task_mean[idx], to_linear_operator(covar)
        )


def initialise(model: HadamardMTGP, trend: float) -> None:
    """A plausible start for standardised data: a modest lengthscale, some noise, half of each
    task's variance its own, slope variances ``trend``.

    Lengthscales and slope variances start at single-precision values, as gpytorch's setters
    stored them when the fit was one function, so the same data give the same fit as before:
    50 iterations are not always enough to converge, and on one ill-conditioned data set a
    start 1e-8 away ended 1.5e-3 nats per value apart (both reach the same MAP at 300).
    """

    def single(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float32)

    model.lengthscale = single(0.3)
    if model.own:
        model.task_lengthscale = single(0.3)
        model.task_variance = 0.5
    model.trend_variance = single(trend)
    model.likelihood.noise = torch.full((model.num_tasks,), 0.05, dtype=torch.float64)


def hold_noise(model: HadamardMTGP, noise: torch.Tensor) -> None:
    """Hold each task's noise variance at ``noise`` (T,) (standardised units; NaN: fitted): the
    optimiser's gradient and the Laplace draws (``mtgp_laplace``) leave those tasks alone."""
    held = torch.isfinite(noise)
    if not held.any():
        return
    lik = model.likelihood
    lik.noise = torch.where(held, noise, lik.noise.detach())
    raw = lik.noise_covar.raw_noise
    free = (~held).to(raw.dtype)
    raw.register_hook(lambda g: g * free)
    raw._coorch_mask = free


class _BestIterate:
    """A loss-and-gradient closure that remembers the lowest loss it has evaluated and the
    module's state there, and the first singular failure it met."""

    def __init__(self, closure: Callable, module: torch.nn.Module) -> None:
        self.closure, self.module = closure, module
        self.loss, self.state, self.error = math.inf, None, None

    def __call__(self, **kwargs) -> tuple[torch.Tensor, Sequence[torch.Tensor | None]]:
        try:
            loss, grads = self.closure(**kwargs)
        except SINGULAR as exc:
            self.error = self.error or exc
            raise
        if loss.item() < self.loss:
            self.loss = loss.item()
            self.state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return loss, grads

    def restore(self) -> None:
        """Back to the best iterate; the first failure is raised if nothing evaluated."""
        if self.state is None:
            raise self.error or RuntimeError("no hyperparameters were evaluated")
        self.module.load_state_dict(self.state)


def optimise(mll: ExactMarginalLogLikelihood, max_iter: int) -> float:
    """Minimise the negative log posterior from the model's current hyperparameters: at most
    ``max_iter`` L-BFGS iterations (strong Wolfe line search); if the line search steps
    somewhere numerically singular (huge lengthscale, tiny noise) or NaN, back to the best
    iterate and at most ``max_iter`` small Adam steps from there (botorch's torch loop). Leaves
    the model at the best iterate and returns its loss; raises the failure if not even the
    start could be evaluated.

    Why torch's L-BFGS and not botorch's scipy L-BFGS-B (``fit_gpytorch_mll_scipy``): at the
    same 50 iterations the latter ended at a worse MAP on each of four data sets compared, by
    2e-3 to 3e-3 nats per value with its default memory of 10 pairs, 1e-5 to 7e-4 with torch's
    100.
    """
    mll.train()
    params = get_parameters(mll, requires_grad=True)
    best = _BestIterate(get_loss_closure_with_grads(mll, params), mll)
    lbfgs = torch.optim.LBFGS(
        list(params.values()), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )
    try:
        lbfgs.step(lambda: best()[0])
    except SINGULAR:
        best.restore()
        with contextlib.suppress(SINGULAR):
            fit_gpytorch_mll_torch(
                mll,
                parameters=params,
                closure=best,
                step_limit=max_iter,
                stopping_criterion=None,
                optimizer=partial(torch.optim.Adam, lr=0.05),
            )
    best.restore()
    return best.loss


def best_of_starts(
    fit_from: Callable[[float], tuple[float, HadamardMTGP]], starts: Sequence[float]
) -> HadamardMTGP:
    """The model of the lowest loss over ``fit_from(start)`` for each start.

    With a handful of values per task the posterior over hyperparameters has separate modes (a
    gradient across the library, or the same values read as noise, or as the shared part), and
    one L-BFGS run lands in whichever its start is nearest: on the alscbn twins the same five
    WDS values gave a map error of 0.2 from one start and 1.1 from another. A start that fails
    is skipped; if every start fails, the last failure is raised (BackgroundRefit then keeps
    the model it has).
    """
    runs, error = [], None
    for start in starts:
        try:
            runs.append(fit_from(start))
        except SINGULAR as exc:
            error = exc
    if not runs:
        raise error
    return min(runs, key=lambda run: run[0])[1]


def coupling(
    x: np.ndarray, tasks: np.ndarray, num_tasks: int, log_tasks: np.ndarray | None
) -> np.ndarray:
    """Which tasks (T,) bool a fit may couple to the others.

    A task modelled as its log is not coupled while it has a handful of values: the MAP task
    covariance from four values may borrow another modality's shape wholesale, and exp turns
    that into multiplicative swings (on the alscbn twins, four WDS corner values took the PFM
    band's shape and the predicted Sc map was off by 230 times its spread). It keeps its own
    part and trend until it has :data:`MIN_COUPLING_VALUES` positions. Other tasks couple from
    the start: for them a borrowed shape is the point (measured: decoupling them too left the
    PFM map read as noise where Raman's shape had predicted it). Positions, not values: a
    repeat at one spot says nothing about the map's shape.
    """
    few = np.array(
        [len(np.unique(x[tasks == t], axis=0)) < MIN_COUPLING_VALUES for t in range(num_tasks)]
    )
    logs = np.zeros(num_tasks, bool) if log_tasks is None else log_tasks
    return ~(few & logs)


def hyperparameters(
    model: HadamardMTGP,
    stretch: np.ndarray,
    y_offset: np.ndarray,
    y_scale: np.ndarray,
    log_tasks: np.ndarray | None,
) -> MTGPHyperparameters:
    """The model's hyperparameters in the unit box (the fit's frame is stretched by ``stretch``
    (d,)), with the standardisation and log tasks the fit used."""

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().copy()

    with torch.no_grad():
        return MTGPHyperparameters(
            lengthscale=numpy(model.lengthscale) / stretch,
            task_covariance=numpy(model.task_covariance),
            noise=numpy(model.likelihood.noise).ravel(),
            task_mean=numpy(model.task_mean),
            y_offset=y_offset,
            y_scale=y_scale,
            n_train=len(model.train_targets),
            task_lengthscale=numpy(model.task_lengthscale) / stretch if model.own else None,
            task_variance=numpy(model.task_variance) if model.own else None,
            trend_weight=np.outer(numpy(model.trend_variance), stretch**2),
            log_tasks=log_tasks,
            smoothness=model.smoothness,
        )


def fit_hyperparameters(
    x: np.ndarray,
    tasks: np.ndarray,
    y: np.ndarray,
    num_tasks: int,
    *,
    rank: int | None = None,
    coupled: bool = True,
    own: bool = True,
    aspect: np.ndarray | None = None,
    log_tasks: np.ndarray | None = None,
    max_iter: int = 50,
    seed: int = 0,
    draws: int = 0,
    noise_sd: np.ndarray | None = None,
    smoothness: float = 2.5,
) -> MTGPHyperparameters:
    """Maximum a-posteriori hyperparameters of the Hadamard MTGP, with each task's own part
    (``own``, :mod:`coorch.models.mtgp`) or as the plain ICM; the better of two starts, one
    without much trend and one with a strong one (:func:`best_of_starts`).

    ``x`` (n, d) positions in the unit box, ``tasks`` (n,) task index, ``y`` (n,) raw targets,
    ``log_tasks`` (T,) bool the tasks modelled as their logarithm (:mod:`coorch.models.mtgp`).
    ``aspect`` (d,): the box's side lengths relative to its longest (:func:`aspect` of the
    library bounds). The lengthscale prior is then stated in isotropic units, the same distance
    in mm along every axis; without it a 10 x 2 mm library's prior would expect variation over
    a fifth of the distance across its short side, and a policy would spend measurements
    exploring it. The result is in the unit box either way.
    ``max_iter`` L-BFGS iterations per start: 50, so a background fit lands while a fast
    campaign is still deciding (at 200, none landed within the demo's 40 s campaign; the
    efficiency benchmark found 30 and 100 to give the same hyperparameters).
    ``seed`` seeds the task covariance's random start; the caller's torch RNG is left alone.
    ``draws`` > 0: that many hyperparameter sets from the Laplace approximation about the MAP
    come with the result (``samples``: :mod:`coorch.models.mtgp_laplace`), up to
    :data:`~coorch.models.mtgp.LAPLACE_MAX_VALUES` values.
    ``noise_sd`` (T,): each task's declared repeatability (:func:`~coorch.models.cost.noise_sd`,
    NaN or None: fitted); a task with two or more values has its noise held there, in the
    units it is modelled in (a log task's log). ``smoothness``: the Materns'
    (:data:`~coorch.models.kernels.SMOOTHNESS`). Pure function of arrays (Dask runs it)."""
    kernels.check_smoothness(smoothness)
    x, tasks = np.asarray(x, float), np.asarray(tasks, int)
    log_tasks = None if log_tasks is None else np.asarray(log_tasks, bool)
    y = warp(y, tasks, log_tasks)
    off, scale = standardise(y, tasks, num_tasks)
    stretch = np.ones(x.shape[1]) if aspect is None else np.asarray(aspect, float)
    xi = torch.as_tensor(np.column_stack([x * stretch, tasks]), dtype=torch.float64)
    yt = torch.as_tensor((y - off[tasks]) / scale[tasks], dtype=torch.float64)
    noise = declared_noise(noise_sd, tasks, num_tasks, scale)
    build = partial(
        HadamardMTGP,
        xi,
        yt,
        num_tasks,
        rank=rank or min(num_tasks, 2),
        coupled=coupled,
        own=own,
        centre=torch.as_tensor(0.5 * stretch, dtype=torch.float64),
        couple=torch.as_tensor(coupling(x, tasks, num_tasks, log_tasks)),
        smoothness=smoothness,
    )

    def fit_from(trend: float) -> tuple[float, HadamardMTGP]:
        torch.manual_seed(seed)
        model = build().double()
        initialise(model, trend)
        hold_noise(model, noise)
        return optimise(ExactMarginalLogLikelihood(model.likelihood, model), max_iter), model

    with torch_scope(seed=seed, threads=None):
        model = best_of_starts(fit_from, TREND_STARTS)
        convert = partial(hyperparameters, model, stretch, off, scale, log_tasks)
        samples = (
            laplace_draws(
                ExactMarginalLogLikelihood(model.likelihood, model), convert, draws=draws, seed=seed
            )
            if draws and len(y) <= LAPLACE_MAX_VALUES
            else []
        )
    return dataclasses.replace(convert(), samples=tuple(samples))


def declared_noise(
    noise_sd: np.ndarray | None, tasks: np.ndarray, num_tasks: int, scale: np.ndarray
) -> torch.Tensor:
    """(T,) the noise variances to hold, in the fit's standardised units (NaN: fit it). Only
    for a task standardised by its own spread (two or more values): with one value there is no
    unit to state a noise in. Floored at twice the likelihood's lower bound, which a declared
    noise below 1.4 % of a task's spread would otherwise cross."""
    out = np.full(num_tasks, np.nan)
    if noise_sd is not None:
        sd = np.asarray(noise_sd, float)
        enough = np.bincount(tasks, minlength=num_tasks) >= 2
        ok = enough & np.isfinite(sd)
        out[ok] = np.maximum((sd[ok] / scale[ok]) ** 2, 2 * NOISE_FLOOR)
    return torch.as_tensor(out, dtype=torch.float64)
