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

The covariance is written once, for numpy and torch alike, in :mod:`coorch.models.kernels`:
:class:`MTGPHyperparameters` evaluates it in numpy for the decision path, and the gpytorch model
the fit differentiates evaluates the same functions in torch.

Fitting is the slow part (a second or more at n = 500), so it runs in the background on Dask
(:func:`fit_hyperparameters`, in :mod:`coorch.models.mtgp_fit`, is a pure function of arrays,
cheap to ship) and its result, a small :class:`MTGPHyperparameters`, is swapped into the
decision path when ready.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from coorch.models import kernels
from coorch.models.kernels import (  # noqa: F401 (re-exported: they were defined here)
    Kernel,
    LinearTrend,
    Matern,
    matern52,
)


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
    smoothness: float = 2.5  # of the Materns (coorch.models.kernels.SMOOTHNESS)
    #: draws from the hyperparameters' posterior (``coorch.models.mtgp_laplace``), () if none
    samples: tuple[MTGPHyperparameters, ...] = ()

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

    def modelled(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent variance (Q, T) in standardised units -> the units the GP
        models (a ``log_tasks`` task's log, where the posterior is Gaussian)."""
        return mean * self.y_scale + self.y_offset, var * self.y_scale**2

    def unwarped(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent variance (Q, T) in standardised units -> the targets'
        own units: the log-normal's mean and variance for ``log_tasks``."""
        m, v = self.modelled(mean, var)
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

    def map_variance(self, unit: np.ndarray) -> np.ndarray:
        """Prior variance of each task's map over positions ``unit`` (Q, d) in the unit box
        (T,), standardised units: :attr:`prior_variance` plus the trend's average there.

        What a task's error is normalised by when the error that matters is the map's RMSE
        over the library relative to the map's spread (nRMSE). The centre's variance alone is
        no such scale: a fit that puts a task's variance into its gradient leaves it near 0, and
        a gain or an uncertainty divided by it grows without bound (on the smbfo twins a WDS fit
        with stationary variance 0.001 took the last 15 of 40 measurements while its map was
        at nRMSE 0.03, docs/benchmarks.md, "What changed on 2026-12-03 afternoon").
        """
        out = self.prior_variance
        if self.trend_weight is None:
            return out
        return out + np.array([kernels.LinearTrend(w).diag(unit).mean() for w in self.trend_weight])

    def components(self) -> list[tuple[Kernel, np.ndarray]]:
        """The covariance as ``[(kernel over position, B_q (T, T)), ...]``, summed over ``q``:
        the shared part first, then each task's own part and its trend (at ``[i, i]``, zero
        elsewhere); :func:`coorch.models.kernels.components`. Every covariance in the
        posterior code is built from this one list."""
        return kernels.components(
            self.lengthscale,
            self.task_covariance,
            task_lengthscale=self.task_lengthscale,
            task_variance=self.task_variance,
            trend_weight=self.trend_weight,
            smoothness=self.smoothness,
        )

    def covariance(
        self, xa: np.ndarray, ta: np.ndarray, xb: np.ndarray, tb: np.ndarray
    ) -> np.ndarray:
        """Prior covariance between rows (``xa`` (n, d), task ``ta`` (n,)) and (``xb``, ``tb``)."""
        return kernels.covariance(
            self.components(),
            np.atleast_2d(xa),
            np.asarray(ta, int),
            np.atleast_2d(xb),
            np.asarray(tb, int),
        )

    def prior_diagonal(self, x: np.ndarray) -> np.ndarray:
        """Prior covariance between the tasks at each position ``x`` (n, d): (n, T, T)."""
        return kernels.prior_diagonal(self.components(), np.atleast_2d(x))

    @property
    def version(self) -> str:
        """A short content hash: the ``model_version`` a decision records."""
        h = hashlib.sha256()
        for a in (
            self.lengthscale,
            self.task_covariance,
            self.noise,
            self.task_mean,
            self.task_lengthscale,
            self.task_variance,
            self.trend_weight,
            self.log_tasks,
        ):
            if a is None:
                continue
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        if self.smoothness != 2.5:  # 5/2's versions as they were before 3/2 existed
            h.update(np.float64(self.smoothness).tobytes())
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

    def with_prior_for(
        self, tasks: list[int] | np.ndarray, *, noise: float = 0.05, trend: np.ndarray | None = None
    ) -> MTGPHyperparameters:
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
        own_ls = (
            np.tile(self.lengthscale, (t, 1))
            if self.task_lengthscale is None
            else self.task_lengthscale.copy()
        )
        own_var = np.zeros(t) if self.task_variance is None else self.task_variance.copy()
        own_ls[tasks], own_var[tasks] = self.lengthscale, 1.0
        nz = self.noise.copy()
        nz[tasks] = noise
        tw = (
            np.zeros((t, len(self.lengthscale)))
            if self.trend_weight is None
            else self.trend_weight.copy()
        )
        tw[tasks] = 0.0 if trend is None else trend
        return dataclasses.replace(
            self,
            task_covariance=b,
            task_lengthscale=own_ls,
            task_variance=own_var,
            noise=nz,
            trend_weight=tw,
        )

    def independent(self) -> MTGPHyperparameters:
        """The same model with the tasks decoupled (the single-modality baseline)."""
        return dataclasses.replace(self, task_covariance=np.diag(np.diag(self.task_covariance)))


def default_hyperparameters(
    num_tasks: int,
    dim: int,
    *,
    lengthscale: float | np.ndarray = 0.2,
    noise: float = 0.05,
    correlation: float = 0.0,
    trend: np.ndarray | None = None,
    smoothness: float = 2.5,
) -> MTGPHyperparameters:
    """A prior guess used before there are enough data to fit (no coupling assumed; slope
    variances ``trend`` (d,) for every task, None: no trend; Materns of ``smoothness``)."""
    b = np.full((num_tasks, num_tasks), correlation) + (1 - correlation) * np.eye(num_tasks)
    return MTGPHyperparameters(
        lengthscale=np.full(dim, lengthscale),
        task_covariance=b,
        noise=np.full(num_tasks, noise),
        task_mean=np.zeros(num_tasks),
        y_offset=np.zeros(num_tasks),
        y_scale=np.ones(num_tasks),
        trend_weight=None if trend is None else np.tile(trend, (num_tasks, 1)),
        smoothness=smoothness,
    )


#: Values a task modelled as its log needs before a fit may couple it to the others: about
#: three per input dimension, the rule of thumb for a GP's lengthscales (the number
#: co-orchestration also waits for before it trusts any task's fit).
MIN_COUPLING_VALUES = 6

#: Hyperparameter sets drawn from the Laplace approximation with every campaign fit
#: (:mod:`coorch.models.mtgp_laplace`): enough for the mixture's variance to be within ~25 % of
#: its limit (the spread of a variance estimated from 16 draws), cheap to predict with.
LAPLACE_DRAWS = 16
#: Values above which a fit draws nothing: the hyperparameters' posterior has concentrated
#: (the plug-in fit is then the marginal's good approximation), while the Hessian's ~30
#: backward passes through an n x n Cholesky would cost more than the fit itself.
LAPLACE_MAX_VALUES = 500

#: Slope variances (standardised units per longest side) the hyperparameter fit starts from.
TREND_STARTS = (0.2, 3.0)


def trend_prior(bounds: np.ndarray, variance: float = 1.0) -> np.ndarray:
    """Slope variances (d,) in the unit box of ``bounds`` for a trend as likely in every
    direction: ``variance`` per longest side, so one standard deviation of slope changes a
    task by about its own spread from the centre to the far end of the longest side."""
    return variance * aspect(bounds) ** 2


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


def __getattr__(name: str):
    """:func:`fit_hyperparameters` is :func:`coorch.models.mtgp_fit.fit_hyperparameters`,
    imported on first use: gpytorch and botorch load only where something fits, not on the
    decision path."""
    if name == "fit_hyperparameters":
        from coorch.models.mtgp_fit import fit_hyperparameters

        return fit_hyperparameters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
