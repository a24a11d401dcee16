"""Structured GP: a physics mean function, written as a pyro model, inferred with the GP.

Why: a GP with a constant mean knows nothing between and beyond its data. With a dozen
measurements along a composition spread it reverts to the mean a lengthscale away from the
nearest point, and it can place the piezoresponse maximum only where it happened to measure.
Materials physics tells us more: across a morphotropic phase boundary (Sm-doped BiFeO3 near
13-15 % Sm) the response rises to a peak at an unknown composition ``c0`` with an unknown width
``w`` and amplitude ``A``; a structural order parameter or a Raman mode changes stepwise across
it. Writing that shape as the GP's mean, with priors on its parameters, lets the few data
points fix the few physical parameters; the GP then only has to model the residual. Predictions
follow the physics in gaps and beyond the data, and the fitted ``c0`` is itself the scientific
answer (where is the phase boundary?) with no dense scan needed (Ziatdinov et al., "Physics
makes the difference: Bayesian optimization and active learning via augmented Gaussian
process", 2022; Slautin et al. 2024).

Implementation: :func:`structured_gp_model` is a pyro model: priors on the physics parameters
(centre, width, amplitude, offset) and on the residual GP (Matern 5/2 variance, ARD
lengthscales, noise), then the observations as one multivariate normal with the physics mean and
the GP covariance, i.e. the GP marginal likelihood. All parameters are inferred jointly (MAP,
an ``AutoDelta`` guide). The centre's posterior is multimodal on sparse data, so the model
carries a ``starts`` plate: several fits from different initial centres run as one batch (their log
joints add, so their gradients are independent) and the start with the highest log joint is
kept. The MAP is found with L-BFGS on the negative ELBO, which for Delta guides is the negative
log joint; a few hundred evaluations suffice where Adam needs thousands of steps. How sure the
centre is comes from the posterior over a (centre, width) grid instead
(:meth:`StructuredGP.center_interval`).

Inputs are scaled to [0, 1] per feature (the composition range, or ``bounds``) and the response
is standardised, so the priors are stated once in those units; ``physics_params`` reports them
back in the caller's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value

from ._threads import torch_scope

__all__ = ["MeanKind", "StructuredGP", "fit_structured_gp", "physics_mean", "structured_gp_model"]

MeanKind = Literal["peak", "step", "constant"]

# Priors in scaled units: composition in [0, 1] over the spread, response standardised.
_WIDTH_PRIOR = (math.log(0.1), 0.8)  # LogNormal: widths ~3 %-50 % of the range
_AMPLITUDE_SCALE = 3.0
_OFFSET_SCALE = 2.0
_LENGTHSCALE_PRIOR = (math.log(0.3), 0.7)  # residual GP smooth on the scale of the spread
_VARIANCE_PRIOR = (math.log(0.3), 1.0)  # residual a priori smaller than the data's spread
_NOISE_PRIOR = (math.log(0.05), 1.5)
_JITTER = 1e-6
_FAILED_LOSS = 1e10
#: The (centre, width) grid of :meth:`StructuredGP.center_interval`: centres over the whole
#: scaled range (1/200 of it apart, 0.05 mm on a 10 mm spread), log-widths over the width
#: prior's +-2.5 sd.
_CENTRES, _WIDTHS, _WIDTH_SDS = 201, 13, 2.5


def physics_mean(kind: MeanKind, u: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Physics mean of the scaled composition ``u`` (n,); params broadcast as (..., 1).

    ``peak``:  offset + amplitude * exp(-(u - center)^2 / (2 width^2)): a response maximum
               (or minimum, amplitude < 0) at a phase boundary.
    ``step``:  offset + amplitude * sigmoid((u - center) / width): a property that changes
               from one phase's value to the other's across the boundary.
    ``constant``: offset only, i.e. a plain GP; the baseline the physics should beat.
    """
    if kind == "constant":
        return params["offset"] + torch.zeros_like(u)
    z = (u - params["center"]) / params["width"]
    shape = torch.exp(-0.5 * z**2) if kind == "peak" else torch.sigmoid(z)
    return params["offset"] + params["amplitude"] * shape


def _matern52(
    x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor, variance: torch.Tensor
) -> torch.Tensor:
    """Matern 5/2 covariance, batched over leading dims of ``lengthscale`` (..., d)."""
    a = x1 / lengthscale.unsqueeze(-2)
    b = x2 / lengthscale.unsqueeze(-2)
    r = torch.sqrt(((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1).clamp_min(1e-12))
    s5 = math.sqrt(5.0) * r
    return variance[..., None, None] * (1.0 + s5 + s5**2 / 3.0) * torch.exp(-s5)


def structured_gp_model(
    x: torch.Tensor, y: torch.Tensor, kind: MeanKind, feature_index: int, n_starts: int
) -> None:
    """Pyro model: physics-parameter and GP priors, then y ~ N(m_physics(x), K + noise I).

    ``x`` (n, d) and ``y`` (n,) in scaled units; every parameter is drawn once per start.
    """
    d = x.shape[1]
    with pyro.plate("starts", n_starts, dim=-1):
        params = {"offset": pyro.sample("offset", dist.Normal(0.0, _OFFSET_SCALE))}
        if kind != "constant":
            params["center"] = pyro.sample("center", dist.Uniform(0.0, 1.0))
            params["width"] = pyro.sample("width", dist.LogNormal(*_WIDTH_PRIOR))
            params["amplitude"] = pyro.sample("amplitude", dist.Normal(0.0, _AMPLITUDE_SCALE))
        variance = pyro.sample("variance", dist.LogNormal(*_VARIANCE_PRIOR))
        lengthscale = pyro.sample(
            "lengthscale", dist.LogNormal(*_LENGTHSCALE_PRIOR).expand([d]).to_event(1)
        )
        noise = pyro.sample("noise", dist.LogNormal(*_NOISE_PRIOR))
        loc = physics_mean(kind, x[:, feature_index], {k: v[..., None] for k, v in params.items()})
        cov = _matern52(x, x, lengthscale, variance)
        cov = cov + (noise[..., None, None] + _JITTER) * torch.eye(len(x), dtype=x.dtype)
        pyro.sample(
            "y", dist.MultivariateNormal(loc, covariance_matrix=cov), obs=y.expand(n_starts, -1)
        )


@dataclass
class StructuredGP:
    """A fitted structured GP (MAP parameters of the best start); caller's units outside.

    Attributes:
        x, y: training data, scaled (inputs to [0, 1], response standardised).
        params: MAP values of every model site (scaled units), tensors of shape () or (d,).
        lower, upper: per-feature input scaling ``(x - lower) / (upper - lower)``.
        y_mean, y_std: response standardisation.
        kind, feature_index: which physics mean, over which input column.
        log_joint: log prior + log marginal likelihood at the MAP (scaled units).
    """

    x: torch.Tensor
    y: torch.Tensor
    params: dict[str, torch.Tensor]
    lower: np.ndarray
    upper: np.ndarray
    y_mean: float
    y_std: float
    kind: MeanKind
    feature_index: int
    log_joint: float

    def _scale(self, x: np.ndarray) -> torch.Tensor:
        xa = np.asarray(x, dtype=np.float64)
        if xa.ndim == 1:
            xa = xa[:, None]
        return torch.as_tensor((xa - self.lower) / (self.upper - self.lower))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the noise-free response at ``x`` (n, d).

        The variance is of the latent function (what a map of the property needs); add
        :meth:`noise` for the variance of a new measurement. Far from data the mean follows the
        physics model, not a constant.
        """
        xs = self._scale(x)
        p = self.params
        with torch_scope(threads=1), torch.no_grad():
            chol = self._cholesky()
            resid = self.y - physics_mean(self.kind, self.x[:, self.feature_index], p)
            alpha = torch.cholesky_solve(resid[:, None], chol)[:, 0]
            k_cross = _matern52(xs, self.x, p["lengthscale"], p["variance"])
            mean = physics_mean(self.kind, xs[:, self.feature_index], p) + k_cross @ alpha
            v = torch.linalg.solve_triangular(chol, k_cross.T, upper=False)
            var = (p["variance"] - (v**2).sum(0)).clamp_min(0.0)
        return mean.numpy() * self.y_std + self.y_mean, var.numpy() * self.y_std**2

    def physics_params(self) -> dict[str, float]:
        """The mean function's MAP parameters in the caller's units.

        ``center`` and ``width`` are in units of input column ``feature_index``; ``amplitude``
        and ``offset`` in response units. A constant mean reports ``offset`` only.
        """
        lo = float(self.lower[self.feature_index])
        span = float(self.upper[self.feature_index]) - lo
        out = {"offset": float(self.params["offset"]) * self.y_std + self.y_mean}
        if self.kind != "constant":
            out["center"] = float(self.params["center"]) * span + lo
            out["width"] = float(self.params["width"]) * span
            out["amplitude"] = float(self.params["amplitude"]) * self.y_std
        return out

    def center_interval(self, level: float = 0.9) -> tuple[float, float]:
        """Central ``level`` credible interval of the centre (the boundary), in the units of
        input column ``feature_index``; for a constant mean, NaN.

        Why: the MAP centre alone hides how sure it is. Measurements on both sides of the step
        pin it to the gap between them; a design that left a wide gap at the step leaves it
        anywhere in the gap, and a report should say so. The posterior is evaluated on a grid
        of (centre, width) over the whole range and the width prior, the residual GP's
        hyperparameters at their MAP; offset and amplitude enter the mean linearly under
        Gaussian priors, so they are integrated out exactly (Rasmussen & Williams 2006, 2.7):
        each centre is judged with the levels that suit it, not the MAP's, which would pin it
        to the MAP's centre. The residual GP's covariance does not depend on the mean, so one
        Cholesky factor serves the whole grid.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level is in (0, 1), not {level!r}")
        if self.kind == "constant":
            return math.nan, math.nan
        centres, weight = self._centre_posterior()
        cdf = torch.cumsum(weight, 0)
        tail = torch.tensor([(1.0 - level) / 2.0, (1.0 + level) / 2.0], dtype=cdf.dtype)
        lo, hi = centres[torch.searchsorted(cdf, tail).clamp_max(_CENTRES - 1)].tolist()
        half = 0.5 / (_CENTRES - 1)  # each grid centre stands for the cell around it
        lo, hi = max(lo - half, 0.0), min(hi + half, 1.0)
        low = float(self.lower[self.feature_index])
        span = float(self.upper[self.feature_index]) - low
        return low + lo * span, low + hi * span

    def _centre_posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre grid (scaled units) and its posterior weights, the width summed out."""
        mu, sd = _WIDTH_PRIOR
        centres = torch.linspace(0.0, 1.0, _CENTRES, dtype=torch.float64)
        c, log_w = torch.meshgrid(
            centres,
            mu + sd * torch.linspace(-_WIDTH_SDS, _WIDTH_SDS, _WIDTHS, dtype=torch.float64),
            indexing="ij",
        )
        unit = {"offset": 0.0, "amplitude": 1.0, "center": c.reshape(-1, 1)}
        unit["width"] = log_w.reshape(-1, 1).exp()
        with torch_scope(threads=1), torch.no_grad():
            shape = physics_mean(self.kind, self.x[:, self.feature_index], unit)  # (grid, n)
            ones = torch.ones(len(self.y), 1, dtype=torch.float64)
            z = torch.linalg.solve_triangular(
                self._cholesky(), torch.cat([ones, self.y[:, None], shape.T], 1), upper=False
            )
            z1, zy, zs = z[:, 0], z[:, 1], z[:, 2:]  # L^-1 1, L^-1 y, L^-1 shape
            # H = [1, shape]: A = H' K^-1 H + the levels' prior precision, b = H' K^-1 y
            a11 = z1 @ z1 + _OFFSET_SCALE**-2
            a12 = z1 @ zs
            a22 = (zs**2).sum(0) + _AMPLITUDE_SCALE**-2
            b1, b2 = z1 @ zy, zs.T @ zy
            det = a11 * a22 - a12**2
            # log p(y | centre, width) up to a constant: b' A^-1 b / 2 - log|A| / 2; then the
            # width's prior density per log-width (the grid is even in it); the centre's is flat
            fit = 0.5 * (b1 * (a22 * b1 - a12 * b2) + b2 * (a11 * b2 - a12 * b1)) / det
            log_post = fit - 0.5 * torch.log(det) + dist.Normal(mu, sd).log_prob(log_w.reshape(-1))
            weight = torch.softmax(log_post, 0).reshape(_CENTRES, _WIDTHS).sum(1)
        return centres, weight

    def _cholesky(self) -> torch.Tensor:
        """Cholesky factor of the training covariance (residual GP plus noise), scaled units."""
        p = self.params
        k_train = _matern52(self.x, self.x, p["lengthscale"], p["variance"])
        k_train += (p["noise"] + _JITTER) * torch.eye(len(self.x), dtype=self.x.dtype)
        return torch.linalg.cholesky(k_train)

    def noise(self) -> float:
        """MAP observation-noise variance in response units."""
        return float(self.params["noise"]) * self.y_std**2


def _initial_values(
    u: np.ndarray, y: np.ndarray, kind: MeanKind, n_starts: int
) -> dict[str, torch.Tensor]:
    """Per-start initial values: centres where the data deviate (peak) or jump (step) most,
    then spread across the range; amplitudes and offset from the data at those centres."""
    n_starts = max(n_starts, 1)
    med = float(np.median(y))
    init = {
        "offset": torch.full((n_starts,), med, dtype=torch.float64),
        "variance": torch.full((n_starts,), 0.1, dtype=torch.float64),
        "noise": torch.full((n_starts,), 0.05, dtype=torch.float64),
    }
    if kind == "constant":
        return init
    order = np.argsort(u)
    if kind == "peak":
        best = float(u[np.argmax(np.abs(y - med))])
    else:
        i = int(np.argmax(np.abs(np.diff(y[order])))) if len(u) > 1 else 0
        best = float(np.mean(u[order][i : i + 2]))
    centres = np.array([best, *np.linspace(0.1, 0.9, n_starts - 1)]).clip(0.01, 0.99)
    if kind == "peak":
        amplitude = [y[np.argmin(np.abs(u - c))] - med for c in centres]
    else:
        amplitude = [
            y[u >= c].mean() - y[u < c].mean() if 0 < (u >= c).sum() < len(u) else 1.0
            for c in centres
        ]
        init["offset"] = torch.as_tensor(
            [y[u < c].mean() if (u < c).any() else med for c in centres], dtype=torch.float64
        )
    init["center"] = torch.as_tensor(centres, dtype=torch.float64)
    init["width"] = torch.full((n_starts,), 0.1, dtype=torch.float64)
    init["amplitude"] = torch.as_tensor(
        [a if abs(a) > 1e-3 else 1.0 for a in amplitude], dtype=torch.float64
    )
    return init


def _log_joint_per_start(model_args: tuple, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(params, y) for each start at the given parameter values, shape (n_starts,)."""
    conditioned = pyro.poutine.condition(structured_gp_model, data=values)
    trace = pyro.poutine.trace(conditioned).get_trace(*model_args)
    total = torch.zeros((), dtype=torch.float64)
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["fn"].log_prob(site["value"])
    return total


def _checked(
    x: np.ndarray, y: np.ndarray, mean: MeanKind, feature_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as (n, d) and ``y`` as (n,) float arrays, or a ValueError saying what is wrong."""
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim == 1:
        xa = xa[:, None]
    ya = np.asarray(y, dtype=np.float64).ravel()
    if len(xa) != len(ya) or len(ya) < 3:
        raise ValueError("need x (n, d) and y (n,) with n >= 3")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite")
    if mean not in ("peak", "step", "constant"):
        raise ValueError(f"unknown mean kind {mean!r}")
    if not 0 <= feature_index < xa.shape[1]:
        raise ValueError(f"feature_index {feature_index} out of range for {xa.shape[1]} columns")
    return xa, ya


def _input_box(xa: np.ndarray, bounds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper input bounds (d,): ``bounds`` (2, d), else the data's range; a feature
    with no spread gets a unit width."""
    if bounds is None:
        lower, upper = xa.min(axis=0), xa.max(axis=0)
    else:
        b = np.asarray(bounds, dtype=np.float64).reshape(2, -1)
        lower, upper = b[0], b[1]
    return lower, np.where(upper > lower, upper, lower + 1.0)


def _map_values(
    args: tuple, init: dict[str, torch.Tensor], steps: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """MAP values of every site, per start, and each start's log joint (n_starts,): an
    ``AutoDelta`` guide from ``init``, at most ``steps`` L-BFGS iterations on the negative ELBO
    (the negative log joint for Delta guides)."""
    with (
        pyro.validation_enabled(False),
        # AutoDelta registers its parameters in pyro's global store: keep ours private.
        pyro.get_param_store().scope(),
    ):
        guide = AutoDelta(structured_gp_model, init_loc_fn=init_to_value(values=init))
        guide(*args)  # creates the MAP parameters at their initial values
        optimiser = torch.optim.LBFGS(
            list(guide.parameters()),
            lr=1.0,
            max_iter=steps,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )
        neg_elbo = Trace_ELBO().differentiable_loss  # = -log joint for Delta guides

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            try:
                loss = neg_elbo(structured_gp_model, guide, *args)
            except (torch.linalg.LinAlgError, ValueError):
                # A line-search probe so extreme that the covariance is not numerically
                # positive definite: report a huge loss so the search backs off.
                return torch.tensor(_FAILED_LOSS, dtype=torch.float64)
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            values = {k: v.detach() for k, v in guide.median(*args).items()}
            return values, _log_joint_per_start(args, values)


def fit_structured_gp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    mean: MeanKind = "peak",
    feature_index: int = 0,
    steps: int = 200,
    seed: int = 0,
    bounds: np.ndarray | None = None,
    n_starts: int = 5,
    threads: int | None = 1,
) -> StructuredGP:
    """Fit a GP whose mean is a physics model of input column ``feature_index``.

    Args:
        x: inputs (n, d), e.g. composition (and position); 1-D input is taken as one column.
        y: responses (n,), e.g. a piezoresponse descriptor.
        mean: ``"peak"`` (response maximal at a boundary), ``"step"`` (property changes across
            it) or ``"constant"`` (plain GP, for comparison).
        feature_index: the input column the physics depends on (the composition).
        steps: most L-BFGS iterations (all starts optimised at once).
        seed: seeds pyro/torch (the GP lengthscales start at random values).
        bounds: (2, d) lower/upper input bounds; the centre's prior is uniform over them.
            Defaults to the data's range (the boundary is then assumed inside the measured span).
        n_starts: initial centres tried in parallel (multimodal posterior on sparse data).
        threads: torch intra-op threads during the fit; 1 by default, since the matrices are
            tiny and extra threads only contend with other work on the same cores.
    """
    xa, ya = _checked(x, y, mean, feature_index)
    lower, upper = _input_box(xa, bounds)
    y_mean, y_std = float(ya.mean()), float(ya.std()) or 1.0
    xs = torch.as_tensor((xa - lower) / (upper - lower))
    ys = torch.as_tensor((ya - y_mean) / y_std)
    if mean == "constant":
        n_starts = 1
    args = (xs, ys, mean, feature_index, n_starts)
    init = _initial_values(xs[:, feature_index].numpy(), ys.numpy(), mean, n_starts)
    with torch_scope(seed=seed, threads=threads):
        values, log_joint = _map_values(args, init, steps)
    best = int(torch.nan_to_num(log_joint, nan=-math.inf).argmax())
    return StructuredGP(
        x=xs,
        y=ys,
        params={k: v[best] for k, v in values.items()},
        lower=lower,
        upper=upper,
        y_mean=y_mean,
        y_std=y_std,
        kind=mean,
        feature_index=feature_index,
        log_joint=float(log_joint[best]),
    )
