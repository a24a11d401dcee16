"""Landau-Ginzburg-Devonshire (LGD) ferroelectric: piezoresponse loops of a Sm-doped BiFeO3 film.

The theory in the loop of a co-navigation campaign (Slautin et al. 2024, "Bayesian
co-navigation"): a physics simulator with a few unknown parameters, run on Dask beside the
experiment, whose parameters are steered until its loops match the measured ones. It sits in the
bottom layer (numpy only) so a Dask worker, a twin library and a theory surrogate can all use it.

The model, in dimensionless units (polarisation in units of the spontaneous polarisation scale
P0, field in E0 = alpha*(T_c0 - T)*P0, time in 1/(Gamma*alpha*(T_c0 - T))):

* free energy density per cell
  ``f = a(s)/2 P^2 + b/4 P^4 + c/6 P^6 - (E + h - depol*<P>) P + g/2 (dP/dz)^2``;
* ``a(s) = A0 * (s/s_c - 1)``: the Curie temperature falls linearly with the Sm fraction ``s``
  (T_c(s) = T + (T_c0 - T)(1 - s/s_c)) and reaches room temperature at ``s = s_c``, where the
  ferroelectric phase ends (b > 0: a second-order transition, so the loop closes continuously);
* the film is a bundle of ``N_COLUMNS`` independent columns (grains), each a chain of
  ``N_LAYERS`` cells from the bottom to the top electrode, coupled along z by the gradient term;
  the two interface cells carry an extra ``SURFACE/2 P^2`` (an extrapolation-length boundary
  condition: polarisation is suppressed at imperfect electrode interfaces);
* ``h``: quenched random fields, one per cell, drawn once from a fixed seed (defect dipoles):
  cells switch at different applied fields, so loops have finite slope and rounded corners;
* ``-depol*<P>``: the depolarisation field of an imperfectly screened film, proportional to the
  film's mean polarisation; it shears the loop. A shear alone leaves the area between the
  branches unchanged; what shrinks the opening is that a sheared loop no longer saturates within
  the sweep (minor loops) and back-switches domains near zero bias. Multidomain states escape
  the field (<P> = 0), so depol does not move where the loops close: s_c and depol leave
  different marks on the openings along the library (depol: the low-Sm end; s_c: where and how
  fast they vanish);
* Landau-Khalatnikov dynamics ``dP/dt = -Gamma dF/dP`` under a triangular bias sweep (poled,
  one unrecorded down-sweep, then the recorded forward and reverse branches), integrated with
  linearly implicit Euler steps (implicit in the local curvature, the gradient coupling and the
  depolarisation field; explicit where a cell is switching);
* the piezoresponse is ``D33_PER_P * <P>`` (pm/V; d33 = 2 Q eps P at fixed permittivity) plus the
  small electrostatic background every BE-PFM loop carries.

Cost: one film at the default resolution (32 x 8 cells, 64 bias points, ~3100 steps) takes
~0.3-0.5 s on one core, bound by numpy call overhead, so ``simulate_many`` over 41 films costs
~1.3 s, not 41 times more.

The simulator knows composition only: its loops depend on ``s`` and the two parameters, not on
film thickness or clamping (which the LGD twin library adds, so theory and experiment differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Parameter:
    """One inferred simulator parameter: its name, prior bounds, unit and meaning."""

    name: str
    low: float
    high: float
    unit: str
    meaning: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "s_c",
        0.08,
        0.20,
        "Sm fraction",
        "Sm fraction where the ferroelectric phase ends (T_c(s_c) = room temperature)",
    ),
    Parameter(
        "depol",
        0.0,
        0.6,
        "E0/P0",
        "depolarisation coefficient: field -depol*<P> of imperfect electrode screening",
    ),
)
"""The inferred parameters, in the column order ``simulate_many`` takes them."""

HIDDEN: dict[str, float] = {"s_c": 0.135, "depol": 0.22}
"""The LGD twin library's hidden truth: ``s_c`` at the smbfo library's phase boundary, ``depol``
inside its bounds but away from their centre."""

A0 = 1.0
"""``-a(0)``: the Landau coefficient of undoped BiFeO3 at room temperature (sets E0 and P0)."""
B4 = 1.0
"""Quartic coefficient, positive: a second-order transition, loops vanish continuously at s_c."""
C6 = 0.1
"""Sextic coefficient: stiffens the response at high field (field-induced polarisation)."""
G_GRAD = 0.1
"""Gradient coefficient per cell spacing squared: correlates the cells of a column (a
correlation length of ~0.3 cells in undoped film, growing as ``a(s)`` softens towards s_c)."""
SURFACE = 0.6
"""Extra ``P^2/2`` coefficient of the two interface cells (extrapolation length g/SURFACE)."""
SIGMA_H = 0.25
"""Standard deviation of the quenched random fields (units of E0). Broad enough that the loop
of the undoped film approaches saturation gradually: then the depolarisation field, which only
shears a saturated loop (a shear leaves the area between the branches unchanged), shrinks the
opening smoothly from small ``depol`` on (with 0.12 it had no effect below depol ~0.15)."""
N_COLUMNS = 32
"""Independent columns (grains) under the tip."""
N_LAYERS = 8
"""Cells per column, bottom electrode to top electrode."""
SEED = 20241213
"""Seed of the random fields: fixed, so the simulator is a deterministic function."""
VOLTS_PER_E0 = 15.0
"""Tip bias (V) that makes the field E0 in the film under the tip: the +-10 V sweep reaches
0.67 E0, about twice the switching field of undoped film (coercive bias ~3-4 V)."""
D33_PER_P = 40.0
"""Piezoresponse (pm/V) per unit mean polarisation: ~40 pm/V at saturation for s = 0."""
BACKGROUND_PM_PER_V = 0.15
"""Electrostatic (non-piezoelectric) response per volt of bias, hysteresis-free."""
GAMMA_DT = 16.0
"""Kinetic coefficient times time step (dimensionless). Large: PFM sweeps (Hz) are slow against
LK relaxation (GHz), so the loops are quasi-static; openings moved < 1 % from 16 to 64."""
SUBSTEPS = 16
"""Landau-Khalatnikov steps per bias step (field ramped linearly between the grid's points):
openings at 16 are within ~2 % of 64 and the call stays well under a second."""
PRE_STEPS = 50
"""Steps relaxing the film, poled up, at the top bias before the conditioning down-sweep."""
BIAS_MAX_V = 10.0
"""Default sweep amplitude: the AFM twin's ``library.bias_max_v`` for the smbfo libraries."""
N_BIAS = 64
"""Default points per branch: the AFM twin's ``N_BIAS``."""


def default_bias() -> np.ndarray:
    """The AFM twin's bias grid: ``N_BIAS`` points over +-``BIAS_MAX_V`` (V)."""
    return np.linspace(-BIAS_MAX_V, BIAS_MAX_V, N_BIAS)


def landau_a(s: np.ndarray, s_c: np.ndarray) -> np.ndarray:
    """``a(s) = A0 (s/s_c - 1)``: negative (ferroelectric) below ``s_c``, positive above."""
    return A0 * (np.asarray(s, float) / np.asarray(s_c, float) - 1.0)


@lru_cache(maxsize=1)
def random_fields() -> np.ndarray:
    """The quenched random field of every cell, ``(N_COLUMNS, N_LAYERS)`` (read-only)."""
    h = np.random.default_rng(SEED).normal(0.0, SIGMA_H, (N_COLUMNS, N_LAYERS))
    h.setflags(write=False)
    return h


def _theta_array(theta: np.ndarray | Mapping[str, float], n: int) -> np.ndarray:
    """``theta`` as an ``(n, 2)`` array in ``PARAMETERS`` order (a mapping is broadcast)."""
    if isinstance(theta, Mapping):
        missing = [p.name for p in PARAMETERS if p.name not in theta]
        if missing:
            raise KeyError(f"theta lacks {missing}; the parameters are {_names()}")
        row = np.array([float(theta[p.name]) for p in PARAMETERS])
        return np.broadcast_to(row, (n, len(PARAMETERS)))
    arr = np.asarray(theta, float)
    if arr.shape != (n, len(PARAMETERS)):
        raise ValueError(f"theta must be ({n}, {len(PARAMETERS)}) in order {_names()}")
    return arr


def _names() -> list[str]:
    return [p.name for p in PARAMETERS]


def _check_bias(bias_v: np.ndarray | None) -> np.ndarray:
    bias = default_bias() if bias_v is None else np.asarray(bias_v, float).reshape(-1)
    if len(bias) < 2 or np.any(np.diff(bias) <= 0):
        raise ValueError("bias_v must be at least two strictly increasing voltages")
    return bias


def _column_solve(diag: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``T x = rhs`` along the last axis (Thomas algorithm), ``T`` tridiagonal with
    ``diag`` on its diagonal and ``-G_GRAD`` beside it; ``rhs`` has extra leading axes."""
    n = diag.shape[-1]
    cp = np.empty(diag.shape)
    rp = np.empty(rhs.shape)
    m = diag[..., 0]
    cp[..., 0], rp[..., 0] = -G_GRAD / m, rhs[..., 0] / m
    for k in range(1, n):
        m = diag[..., k] + G_GRAD * cp[..., k - 1]
        cp[..., k] = -G_GRAD / m
        rp[..., k] = (rhs[..., k] + G_GRAD * rp[..., k - 1]) / m
    x = np.empty(rhs.shape)
    x[..., -1] = rp[..., -1]
    for k in range(n - 2, -1, -1):
        x[..., k] = rp[..., k] - cp[..., k] * x[..., k + 1]
    return x


class _Film:
    """The LK integrator over ``n`` films at once: state ``P`` shaped (n, columns, layers)."""

    def __init__(self, a: np.ndarray, depol: np.ndarray) -> None:
        self.a = a[:, None, None]
        self.depol = depol[:, None, None]
        self.h = random_fields()[None]
        self.surf = np.zeros(N_LAYERS)
        self.surf[[0, -1]] = SURFACE
        self.degree = np.full(N_LAYERS, 2.0)  # neighbours along z (Neumann at the electrodes)
        self.degree[[0, -1]] = 1.0
        self.p = np.ones((len(a), N_COLUMNS, N_LAYERS))  # poled up before the sweep

    def mean(self) -> np.ndarray:
        """Mean polarisation of each film, (n,)."""
        return self.p.mean(axis=(1, 2))

    def step(self, e: float) -> None:
        """One linearly implicit Euler step of dP/dt = -dF/dP at applied field ``e``.

        Solves ``(1/dt + H) dP = -dF/dP`` with ``H`` the Hessian of ``F``: local curvature
        (clipped at zero where a cell is switching), the gradient coupling along each column
        (tridiagonal) and the depolarisation field (rank one over the film, Sherman-Morrison).
        Implicit coupling keeps the sweep quasi-static near ``s_c``, where the local curvature
        vanishes and an explicit coupling would lag behind the bias (spurious hysteresis).
        """
        p = self.p
        p2 = p * p
        lap = np.empty_like(p)
        lap[..., 1:-1] = p[..., :-2] + p[..., 2:] - 2.0 * p[..., 1:-1]
        lap[..., 0] = p[..., 1] - p[..., 0]
        lap[..., -1] = p[..., -2] - p[..., -1]
        field = e + self.h - self.depol * p.mean(axis=(1, 2), keepdims=True)
        grad = p * (self.a + self.surf + p2 * (B4 + C6 * p2)) - field - G_GRAD * lap
        curv = self.a + self.surf + p2 * (3.0 * B4 + 5.0 * C6 * p2)
        diag = 1.0 / GAMMA_DT + np.maximum(curv, 0.0) + G_GRAD * self.degree
        y, z = _column_solve(diag, np.stack([-grad, np.ones_like(grad)]))
        kappa = self.depol[..., 0] / (N_COLUMNS * N_LAYERS)  # (n, 1)
        sy, sz = y.sum(axis=(1, 2))[:, None], z.sum(axis=(1, 2))[:, None]
        self.p = p + y - z * (kappa * sy / (1.0 + kappa * sz))[..., None]

    def sweep(self, volts: np.ndarray) -> np.ndarray:
        """Follow the bias through ``volts`` (V), ``SUBSTEPS`` steps per interval; the mean
        polarisation at each voltage, (n, len(volts))."""
        out = np.empty((self.p.shape[0], len(volts)))
        out[:, 0] = self.mean()
        for i in range(1, len(volts)):
            for e in np.linspace(volts[i - 1], volts[i], SUBSTEPS + 1)[1:] / VOLTS_PER_E0:
                self.step(float(e))
            out[:, i] = self.mean()
        return out


def simulate_many(
    s: np.ndarray,
    theta: np.ndarray | Mapping[str, float],
    bias_v: np.ndarray | None = None,
) -> np.ndarray:
    """Piezoresponse loops of ``n`` films at once, ``(n, 2, nb)`` in pm/V.

    Args:
        s: Sm fractions, ``(n,)``.
        theta: ``(n, 2)`` parameters in ``PARAMETERS`` order (``s_c``, ``depol``), or one
            mapping ``{"s_c": ..., "depol": ...}`` used for every film.
        bias_v: the bias grid (V), strictly increasing; default ``default_bias()``.

    Returns:
        ``[:, 0]`` the forward branch (bias swept up from ``bias_v[0]``), ``[:, 1]`` the reverse
        branch (swept back down), both sampled at ``bias_v``: the AFM twin's ``pfm_loop``.
    """
    s = np.atleast_1d(np.asarray(s, float))
    if s.ndim != 1:
        raise ValueError("s must be one-dimensional, (n,)")
    bias = _check_bias(bias_v)
    th = _theta_array(theta, len(s))
    film = _Film(landau_a(s, th[:, 0]), th[:, 1])
    for _ in range(PRE_STEPS):  # poled up at the top of the sweep, then the first,
        film.step(bias[-1] / VOLTS_PER_E0)  # unrecorded down-sweep: the loop's own history
    film.sweep(bias[::-1])
    forward = film.sweep(bias)
    reverse = film.sweep(bias[::-1])[:, ::-1]
    loops = D33_PER_P * np.stack([forward, reverse], axis=1)
    return loops + BACKGROUND_PM_PER_V * bias


def simulate(s: float, theta: Mapping[str, float], bias_v: np.ndarray | None = None) -> np.ndarray:
    """One film's loop, ``(2, nb)`` pm/V: ``simulate_many`` on one row (one Dask task)."""
    return simulate_many(np.array([float(s)]), theta, bias_v)[0]


def coercive_voltage(loops: np.ndarray, bias_v: np.ndarray) -> np.ndarray:
    """Half the gap between the zero crossings of the forward and the reverse branch (V), the
    loop's coercive voltage: 0 for a closed loop. ``loops`` ``(..., 2, nb)`` -> ``(...)``."""
    bias = np.asarray(bias_v, float)
    loops = np.asarray(loops, float)
    flat = loops.reshape(-1, 2, len(bias))
    cross = np.empty(flat.shape[:2])
    for i, j in np.ndindex(*cross.shape):
        r = flat[i, j]
        k = min(int(np.argmax(np.diff(np.sign(r)) != 0)), len(bias) - 2)
        cross[i, j] = bias[k] - r[k] * (bias[k + 1] - bias[k]) / (r[k + 1] - r[k])
    return np.clip((cross[:, 0] - cross[:, 1]) / 2.0, 0.0, None).reshape(loops.shape[:-2])
