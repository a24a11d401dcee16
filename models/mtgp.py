"""Multi-task GP hyperparameters: fitted with gpytorch, used by the incremental posterior.

The model is the coregionalisation model of DESIGN.md in the Hadamard form (each observation is
one (position, task) pair, so modalities need not share positions), with a noise level and a
constant mean per task. Its covariance has three parts:

    k((x, i), (x', j)) = B_ij k_0(x, x')  +  [i = j] s_i k_i(x, x')  +  [i = j] r_i (x - c).(x' - c)

* a **shared** part, the intrinsic coregionalisation model (ICM): one Matern-5/2 kernel ``k_0``
  over library position times a task covariance ``B`` (gpytorch ``IndexKernel``): what links the
  modalities, the way one instrument informs the others;
* an **own** part per task: a Matern-5/2 ``k_i`` with the task's own lengthscales and variance
  ``s_i``, which the other tasks do not see.

Why the own part: the ICM alone forces every modality to the same spatial smoothness, and
modalities differ. On the ``alscbn`` twins the WDS composition map is smooth while the PFM loop
opening is a sharp ferroelectric band: one shared lengthscale fitted to both made the smooth map
look like noise (fitted noise 0.6-0.8 in standardised units), a WDS point then looked nearly
worthless to the knowledge gain, and co-orchestration starved that instrument
(docs/benchmarks.md, "Efficiency"). With an own part each task keeps its smoothness while the
shared part still carries what the modalities have in common (it is a linear model of
coregionalisation with T + 1 components). ``own=False`` gives the plain ICM.

* a **trend** per task: a linear mean with Gaussian-prior slopes (variance ``r_i`` per mm of the
  longest side, the same in every direction), integrated out, which is a linear kernel about the
  library's centre ``c``. This is the physics a combinatorial library is made with: composition
  and whatever follows it change along the deposition gradients, across the whole chip. A
  constant mean instead pulls every prediction away from the data back to the task's average,
  so a map whose extreme sits in a corner nobody measured yet (the Sc map of the ``alscbn``
  twins: 1-5 at.% over most of the chip, 26 at.% at the Sc gun's corner) is predicted flat
  there; and because the slopes are uncertain, a point far out along an unmeasured direction
  is worth more to the knowledge gain than its stationary variance says, where a stationary
  kernel alone makes integrated-variance designs shy of the edges (docs/benchmarks.md,
  "Efficiency"). Its variance is fitted like the others; a map without a gradient fits it
  to about zero.

Tasks that are amounts spread multiplicatively over the library (a dopant's atomic fraction
from a sputter gun: 1 at.% at one end, 26 at.% at the other) are modelled as their logarithm
(``log_tasks``). A deposition profile falls off roughly exponentially with distance from its
source, so its log is close to the linear trend above and six interior points predict the
corner; modelled as is, the same six points predict a flat map at the mean (docs/benchmarks.md,
"Efficiency"). Predictions come back in the task's own units, as the log-normal's mean.

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
    task_lengthscale: np.ndarray | None = None  # (T, d) of each task's own part
    task_variance: np.ndarray | None = None  # (T,) s, each task's own part; None: plain ICM
    trend_weight: np.ndarray | None = None  # (T, d) slope variances in the unit box; None: none
    log_tasks: np.ndarray | None = None  # (T,) bool: task modelled as log(y); None: none

    @property
    def num_tasks(self) -> int:
        return len(self.noise)

    def warp(self, y: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """Targets in the space the GP models (``log`` for ``log_tasks``), before
        standardisation; see :func:`warp`."""
        return warp(y, tasks, self.log_tasks)

    def standardised(self, y: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """Raw targets ``y`` of ``tasks`` -> the standardised units the GP works in."""
        tasks = np.asarray(tasks, int)
        return (self.warp(y, tasks) - self.y_offset[tasks]) / self.y_scale[tasks]

    def unwarped(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent variance (Q, T) in standardised units -> the targets'
        own units: the log-normal's mean and variance for ``log_tasks``."""
        m, v = mean * self.y_scale + self.y_offset, var * self.y_scale**2
        if self.log_tasks is not None and self.log_tasks.any():
            lg = self.log_tasks
            m, v = m.copy(), v.copy()
            m[:, lg] = np.exp(mean_log := m[:, lg] + v[:, lg] / 2)
            v[:, lg] = np.expm1(v[:, lg]) * np.exp(2 * mean_log)
        return m, v

    @property
    def prior_variance(self) -> np.ndarray:
        """Prior variance of each task's latent function (T,) at the library's centre, where
        the trend adds none; standardised units."""
        own = 0.0 if self.task_variance is None else self.task_variance
        return np.diag(self.task_covariance) + own

    def components(self) -> list[tuple[Kernel, np.ndarray]]:
        """The covariance as ``[(kernel over position, B_q (T, T)), ...]``, summed over ``q``:
        the shared part first, then each task's own part and its trend (at ``[i, i]``, zero
        elsewhere). Every covariance in the posterior code is built from this one list."""
        out: list[tuple[Kernel, np.ndarray]] = [(Matern52(self.lengthscale),
                                                 self.task_covariance)]

        def own(i: int, value: float) -> np.ndarray:
            b = np.zeros_like(self.task_covariance)
            b[i, i] = value
            return b

        if self.task_variance is not None:
            for i, (ls, s) in enumerate(zip(self.task_lengthscale, self.task_variance,
                                            strict=True)):
                out.append((Matern52(ls), own(i, s)))
        if self.trend_weight is not None:
            out += [(LinearTrend(w), own(i, 1.0)) for i, w in enumerate(self.trend_weight)
                    if w.any()]
        return out

    def covariance(self, xa: np.ndarray, ta: np.ndarray, xb: np.ndarray,
                   tb: np.ndarray) -> np.ndarray:
        """Prior covariance between rows (``xa`` (n, d), task ``ta`` (n,)) and (``xb``, ``tb``)."""
        ta, tb = np.asarray(ta, int), np.asarray(tb, int)
        out = np.zeros((len(ta), len(tb)))
        for k, b in self.components():
            bq = b[np.ix_(ta, tb)]
            if bq.any():
                out += bq * k(xa, xb)
        return out

    def prior_diagonal(self, x: np.ndarray) -> np.ndarray:
        """Prior covariance between the tasks at each position ``x`` (n, d): (n, T, T)."""
        return sum(k.diag(x)[:, None, None] * b for k, b in self.components())

    @property
    def version(self) -> str:
        """A short content hash: the ``model_version`` a decision records."""
        h = hashlib.sha256()
        for a in (self.lengthscale, self.task_covariance, self.noise, self.task_mean,
                  self.task_lengthscale, self.task_variance, self.trend_weight,
                  self.log_tasks):
            if a is None:
                continue
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return f"mtgp-n{self.n_train}-{h.hexdigest()[:10]}"

    def correlation(self) -> np.ndarray:
        """Inter-task correlation of values at one position (what one modality tells about
        another): ``B_ij / sqrt(v_i v_j)`` with ``v`` the total prior variances."""
        s = np.sqrt(self.prior_variance)
        r = self.task_covariance / np.outer(s, s)
        np.fill_diagonal(r, 1.0)
        return r

    def with_max_correlation(self, limit: float) -> MTGPHyperparameters:
        """The same task variances with every |inter-task correlation| clipped to ``limit``.

        With a handful of points per task the MAP estimate of ``B`` runs to correlations of
        +-1, and a knowledge gain that believes one modality determines another stops measuring
        it (docs/benchmarks.md, "Efficiency"). Clipping can break positive definiteness for
        three or more tasks, so the off-diagonal is then shrunk until it holds.
        """
        v = self.prior_variance
        r = self.correlation()
        off = ~np.eye(len(v), dtype=bool)
        r[off] = np.clip(r[off], -limit, limit)
        b = r * np.sqrt(np.outer(v, v))
        np.fill_diagonal(b, np.diag(self.task_covariance))
        for _ in range(200):
            if np.linalg.eigvalsh(b).min() >= -1e-12 * np.abs(b).max():
                break
            b[off] *= 0.9
        else:
            b[off] = 0.0
        return dataclasses.replace(self, task_covariance=b)

    def with_prior_for(self, tasks: list[int] | np.ndarray, *, noise: float = 0.05,
                       trend: np.ndarray | None = None) -> MTGPHyperparameters:
        """The same model with ``tasks`` put back to the prior guess: uncoupled, unit
        variance, all of it in their own part, with the shared part's lengthscales (fitted on
        every task's data, so the one thing about them worth keeping), ``noise`` and slope
        variances ``trend`` (d,) (None: no trend).

        For tasks with too few values to trust a fit: a MAP estimate from a handful of
        clustered points can declare a map known that is not (on the alscbn twins, four WDS
        points near two corners fitted an integrated variance of 5 % while the map's error was
        100 %), and the knowledge gain then never measures that task again.
        """
        tasks = np.asarray(tasks, int)
        if not len(tasks):
            return self
        t = self.num_tasks
        b = self.task_covariance.copy()
        b[tasks, :] = 0.0
        b[:, tasks] = 0.0
        own_ls = (np.tile(self.lengthscale, (t, 1)) if self.task_lengthscale is None
                  else self.task_lengthscale.copy())
        own_var = np.zeros(t) if self.task_variance is None else self.task_variance.copy()
        own_ls[tasks], own_var[tasks] = self.lengthscale, 1.0
        nz = self.noise.copy()
        nz[tasks] = noise
        tw = (np.zeros((t, len(self.lengthscale))) if self.trend_weight is None
              else self.trend_weight.copy())
        tw[tasks] = 0.0 if trend is None else trend
        return dataclasses.replace(self, task_covariance=b, task_lengthscale=own_ls,
                                   task_variance=own_var, noise=nz, trend_weight=tw)

    def independent(self) -> MTGPHyperparameters:
        """The same model with the tasks decoupled (the single-modality baseline)."""
        return dataclasses.replace(self, task_covariance=np.diag(np.diag(self.task_covariance)))


def default_hyperparameters(num_tasks: int, dim: int, *, lengthscale: float | np.ndarray = 0.2,
                            noise: float = 0.05, correlation: float = 0.0,
                            trend: np.ndarray | None = None) -> MTGPHyperparameters:
    """A prior guess used before there are enough data to fit (no coupling assumed; slope
    variances ``trend`` (d,) for every task, None: no trend)."""
    b = np.full((num_tasks, num_tasks), correlation) + (1 - correlation) * np.eye(num_tasks)
    return MTGPHyperparameters(
        lengthscale=np.full(dim, lengthscale), task_covariance=b,
        noise=np.full(num_tasks, noise), task_mean=np.zeros(num_tasks),
        y_offset=np.zeros(num_tasks), y_scale=np.ones(num_tasks),
        trend_weight=None if trend is None else np.tile(trend, (num_tasks, 1)))


#: Values a task modelled as its log needs before a fit may couple it to the others: about
#: three per input dimension, the rule of thumb for a GP's lengthscales (the number
#: co-orchestration also waits for before it trusts any task's fit).
MIN_COUPLING_VALUES = 6

#: Slope variances (standardised units per longest side) the hyperparameter fit starts from.
TREND_STARTS = (0.2, 3.0)


def trend_prior(bounds: np.ndarray, variance: float = 1.0) -> np.ndarray:
    """Slope variances (d,) in the unit box of ``bounds`` for a trend as likely in every
    direction: ``variance`` per longest side, so one standard deviation of slope changes a
    task by about its own spread from the centre to the far end of the longest side."""
    return variance * aspect(bounds) ** 2


class Kernel:
    """A correlation over library position: ``k(a, b)`` (n, m) and its diagonal ``diag(a)``."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def diag(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Matern52(Kernel):
    lengthscale: np.ndarray

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return matern52(a, b, self.lengthscale)

    def diag(self, a: np.ndarray) -> np.ndarray:
        return np.ones(len(np.atleast_2d(a)))


@dataclasses.dataclass(frozen=True)
class LinearTrend(Kernel):
    """``sum_d w_d (a_d - 1/2)(b_d - 1/2)``: a linear mean about the unit box's centre whose
    slopes have prior variances ``w`` (d,), integrated out."""

    weight: np.ndarray

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(a) - 0.5) * self.weight) @ (np.atleast_2d(b) - 0.5).T

    def diag(self, a: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(a) - 0.5) ** 2 * self.weight).sum(1)


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
    def build(x: torch.Tensor, y: torch.Tensor, num_tasks: int, rank: int, coupled: bool,
              own: bool = True, centre: torch.Tensor | None = None,
              couple: torch.Tensor | None = None):
        import gpytorch
        from gpytorch.constraints import Positive
        from gpytorch.priors import GammaPrior
        from linear_operator import to_linear_operator

        class Model(gpytorch.models.ExactGP):
            def __init__(self) -> None:
                likelihood = gpytorch.likelihoods.HadamardGaussianLikelihood(
                    num_tasks, noise_constraint=gpytorch.constraints.GreaterThan(1e-4),
                    noise_prior=GammaPrior(1.1, 0.05),
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
                elif couple is not None and not couple.all():  # only these tasks couple
                    keep = couple.to(x.dtype)[:, None]
                    factor = self.task_covar_module.covar_factor
                    factor.data.mul_(keep)
                    factor.register_hook(lambda g: g * keep)
                self.own_module = None
                if own:  # each task's own Matern part (module docstring)
                    self.own_module = gpytorch.kernels.MaternKernel(
                        nu=2.5, ard_num_dims=d, batch_shape=torch.Size([num_tasks]),
                        lengthscale_prior=GammaPrior(3.0, 6.0))
                    self.register_parameter(
                        "raw_own_variance", torch.nn.Parameter(torch.zeros(num_tasks)))
                    self.register_constraint("raw_own_variance", Positive())
                if centre is not None:  # each task's linear trend (module docstring)
                    self.register_parameter(
                        "raw_trend_variance", torch.nn.Parameter(torch.zeros(num_tasks)))
                    self.register_constraint("raw_trend_variance", Positive())

            @property
            def own_variance(self) -> torch.Tensor:
                return self.raw_own_variance_constraint.transform(self.raw_own_variance)

            @property
            def trend_variance(self) -> torch.Tensor:
                return self.raw_trend_variance_constraint.transform(self.raw_trend_variance)

            def forward(self, xi: torch.Tensor):
                xs, idx = xi[..., :-1], xi[..., -1:].long()
                mean = self.task_mean[idx.squeeze(-1)]
                # Dense product: a lazy product of two kernels goes through Lanczos root
                # decompositions, approximate and (measured here) ~20x slower at n = 500.
                # Kept a linear operator: a plain tensor makes the prior MVN factorise the
                # noiseless covariance, singular as soon as a point is measured twice.
                covar = (self.covar_module(xs).to_dense()
                         * self.task_covar_module(idx).to_dense())
                onehot = torch.nn.functional.one_hot(idx.squeeze(-1), num_tasks).to(xs)
                if self.own_module is not None:
                    k_own = self.own_module(xs).to_dense()  # (T, n, n)
                    covar = covar + torch.einsum("at,bt,t,tab->ab", onehot, onehot,
                                                 self.own_variance, k_own)
                if centre is not None:
                    xc = xs - centre
                    same = onehot @ (onehot * self.trend_variance).T  # [i = j] r_i
                    covar = covar + same * (xc @ xc.T)
                return gpytorch.distributions.MultivariateNormal(mean, to_linear_operator(covar))

        return Model()


def warp(y: np.ndarray, tasks: np.ndarray, log_tasks: np.ndarray | None) -> np.ndarray:
    """``y`` with the values of ``log_tasks`` (T,) bool replaced by their logarithm. A value at
    or below zero (below detection, or noise around zero) counts as half the task's smallest
    positive value: a floor the data set, not an arbitrary constant in the task's units."""
    y, tasks = np.asarray(y, float), np.asarray(tasks, int)
    if log_tasks is None or not np.any(log_tasks):
        return y
    out = y.copy()
    for t in np.flatnonzero(log_tasks):
        rows = tasks == t
        v = y[rows]
        pos = v[v > 0]
        floor = pos.min() / 2 if len(pos) else 1.0
        out[rows] = np.log(np.maximum(v, floor))
    return out


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


def aspect(bounds: np.ndarray) -> np.ndarray:
    """Side lengths of a box ``bounds`` (d, 2) relative to its longest side, (d,)."""
    span = np.asarray(bounds, float)[:, 1] - np.asarray(bounds, float)[:, 0]
    return span / span.max()


def fit_hyperparameters(x: np.ndarray, tasks: np.ndarray, y: np.ndarray, num_tasks: int, *,
                        rank: int | None = None, coupled: bool = True, own: bool = True,
                        aspect: np.ndarray | None = None, log_tasks: np.ndarray | None = None,
                        max_iter: int = 50, seed: int = 0) -> MTGPHyperparameters:
    """Maximum a-posteriori hyperparameters (torch L-BFGS) of the Hadamard MTGP, with each
    task's own part (``own``, module docstring) or as the plain ICM.

    ``x`` (n, d) positions in the unit box, ``tasks`` (n,) task index, ``y`` (n,) raw targets,
    ``log_tasks`` (T,) bool the tasks modelled as their logarithm (module docstring).
    ``aspect`` (d,): the box's side lengths relative to its longest (:func:`aspect` of the
    library bounds). The lengthscale prior is then stated in isotropic units, the same distance
    in mm along every axis; without it a 10 x 2 mm library's prior would expect variation over
    a fifth of the distance across its short side, and a policy would spend measurements
    exploring it. The result is in the unit box either way.
    ``max_iter`` L-BFGS iterations per start: 50, so a background fit lands while a fast
    campaign is still deciding (at 200, none landed within the demo's 40 s campaign; the
    efficiency benchmark found 30 and 100 to give the same hyperparameters).
    Pure function of arrays so Dask can run it anywhere; returns numpy hyperparameters.
    """
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from linear_operator.utils.errors import NanError, NotPSDError

    torch.manual_seed(seed)
    x, tasks = np.asarray(x, float), np.asarray(tasks, int)
    log_tasks = None if log_tasks is None else np.asarray(log_tasks, bool)
    y = warp(y, tasks, log_tasks)
    off, scale = standardise(y, tasks, num_tasks)
    ys = (y - off[tasks]) / scale[tasks]
    stretch = np.ones(x.shape[1]) if aspect is None else np.asarray(aspect, float)
    xi = torch.as_tensor(np.column_stack([x * stretch, tasks]), dtype=torch.float64)
    yt = torch.as_tensor(ys, dtype=torch.float64)
    rank = rank or min(num_tasks, 2)
    centre = torch.as_tensor(0.5 * stretch, dtype=torch.float64)
    # A task modelled as its log is not coupled to the others while it has a handful of
    # values: the MAP task covariance from four values may borrow another modality's shape
    # wholesale, and exp turns that into multiplicative swings (on the alscbn twins, four WDS
    # corner values took the PFM band's shape and the predicted Sc map was off by 230 times
    # its spread). It keeps its own part and trend until it has MIN_COUPLING_VALUES
    # positions. Other tasks couple from the start: for them a borrowed shape is the point
    # (measured: decoupling them too left the PFM map read as noise where Raman's shape had
    # predicted it).
    # Positions, not values: a repeat at one spot says nothing about the map's shape.
    few = np.array([len(np.unique(x[tasks == t], axis=0)) < MIN_COUPLING_VALUES
                    for t in range(num_tasks)])
    logs = np.zeros(num_tasks, bool) if log_tasks is None else log_tasks
    couple = torch.as_tensor(~(few & logs))

    def optimise(trend: float) -> tuple[float, torch.nn.Module]:
        """One L-BFGS run from a start with slope variances ``trend``: (best loss, model)."""
        torch.manual_seed(seed)
        model = _HadamardMTGP.build(xi, yt, num_tasks, rank, coupled, own, centre,
                                    couple).double()
        # start from a plausible model (standardised data): a modest lengthscale, some noise,
        # half of each task's variance its own
        model.covar_module.lengthscale = 0.3
        if own:
            model.own_module.lengthscale = 0.3
            model.initialize(raw_own_variance=model.raw_own_variance_constraint
                             .inverse_transform(torch.full((num_tasks,), 0.5).double()))
        model.initialize(raw_trend_variance=model.raw_trend_variance_constraint
                         .inverse_transform(torch.full((num_tasks,), trend).double()))
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

        # torch's own failure, or linear_operator's after its jitter retries, or a step to
        # NaN hyperparameters (seen once in ~10,000 fits on the smbfo twins)
        singular = (torch.linalg.LinAlgError, NotPSDError, NanError)
        try:
            opt.step(closure)
        except singular:
            if best["state"] is None:
                raise
            # the line search stepped somewhere numerically singular (huge lengthscale, tiny
            # noise): go back to the best iterate and finish with small Adam steps
            model.load_state_dict(best["state"])
            adam = torch.optim.Adam(params, lr=0.05)
            for _ in range(max_iter):
                try:
                    closure()
                except singular:
                    break
                adam.step()
        model.load_state_dict(best["state"])
        return best["loss"], model

    # With a handful of values per task the posterior over hyperparameters has separate modes
    # (a gradient across the library, or the same values read as noise, or as the shared
    # part), and one L-BFGS run lands in whichever its start is nearest: on the alscbn twins
    # the same five WDS values gave a map error of 0.2 from one start and 1.1 from another.
    # So: one start without much trend, one with a strong one; the better MAP wins.
    # A start that fails before its first evaluation is skipped; if every start fails, the
    # last error is raised (BackgroundRefit then keeps the model it has).
    runs, error = [], None
    for trend in TREND_STARTS:
        try:
            runs.append(optimise(trend))
        except (torch.linalg.LinAlgError, NotPSDError, NanError) as exc:
            error = exc
    if not runs:
        raise error
    _, model = min(runs, key=lambda r: r[0])
    model.eval()
    with torch.no_grad():
        b = model.task_covar_module.covar_matrix.to_dense().numpy().copy()
        return MTGPHyperparameters(
            lengthscale=model.covar_module.lengthscale.detach().numpy().ravel() / stretch,
            task_covariance=b,
            noise=model.likelihood.noise.detach().numpy().ravel().copy(),
            task_mean=model.task_mean.detach().numpy().copy(),
            y_offset=off, y_scale=scale, n_train=len(y),
            task_lengthscale=None if not own else
            model.own_module.lengthscale.detach().numpy().reshape(num_tasks, -1) / stretch,
            task_variance=None if not own else model.own_variance.detach().numpy().copy(),
            trend_weight=np.outer(model.trend_variance.detach().numpy(), stretch**2),
            log_tasks=log_tasks)
