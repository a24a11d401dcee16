"""The theory side of a co-navigation at one moment: surrogate, parameter posterior, what next.

:class:`TheoryModels` is an immutable snapshot: a fit (:func:`fit_theory`, run off the flow's
thread) returns a new one and the campaign swaps it in, so the flow never reads a model that is
half updated. It speaks the campaign's language (library positions in mm, the instrument's
descriptor) and translates to the simulator's (composition, parameters): the library's nominal
composition runs linearly along library x between ``s_range``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from coorch.models.theory_design import initial_design, next_simulations
from coorch.models.theory_posterior import ParameterPosterior, infer_parameters
from coorch.models.theory_space import ParameterSpace
from coorch.models.theory_surrogate import TheorySurrogate

#: Compositions the next simulations are chosen among.
S_GRID = 101
#: The discrepancy map's grid over the library (x, y).
MAP_SHAPE = (41, 5)


@dataclasses.dataclass(frozen=True)
class TheoryModels:
    """Surrogate and posterior (None until fitted) and what they were fitted on."""

    space: ParameterSpace
    s_range: tuple[float, float]
    bounds: np.ndarray  # (2, 2) library bounds, mm
    seed: int = 0
    surrogate: TheorySurrogate | None = None
    posterior: ParameterPosterior | None = None
    n_measurements: int = 0
    n_simulations: int = 0

    @classmethod
    def empty(cls, s_range: tuple[float, float], bounds: np.ndarray, seed: int = 0):
        return cls(ParameterSpace.from_lgd(), tuple(s_range), np.asarray(bounds, float), seed)

    @property
    def version(self) -> str:
        if self.surrogate is None:
            return "design"
        return f"theory-{self.n_simulations}s-{self.n_measurements}m"

    def composition(self, x_mm: np.ndarray) -> np.ndarray:
        """The nominal composition at library positions ``x_mm`` (..., 2)."""
        (x0, x1), (s0, s1) = self.bounds[0], self.s_range
        x = np.asarray(x_mm, float)[..., 0]
        return s0 + (s1 - s0) * np.clip((x - x0) / (x1 - x0), 0.0, 1.0)

    # -- what to simulate next ----------------------------------------------------------------
    def next_simulations(
        self, n: int, pending: np.ndarray, rng: np.random.Generator, planned: int, initial: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows (s, theta...) and the acquisition value of each: the space-filling
        design's next rows until ``initial`` are planned (or while nothing is fitted), then
        where the surrogate is least sure at plausible parameters."""
        width = 1 + len(self.space.names)
        if self.posterior is None or planned < initial:
            design = initial_design(self.space, self.s_range, planned + n, self.seed)
            rows = design[planned : planned + n]
            return rows.reshape(-1, width), np.zeros(len(rows))
        grid = np.linspace(*self.s_range, S_GRID)
        rows = next_simulations(
            self.surrogate,
            self.posterior,
            grid,
            n,
            pending=pending if len(pending) else None,
            rng=rng,
        )
        rows = np.asarray(rows, float).reshape(-1, width)
        _, var = self.surrogate.predict(rows[:, 0], rows[:, 1:])
        return rows, np.asarray(var, float)

    # -- what the measurements should do -------------------------------------------------------
    def guidance(self, candidates_mm: np.ndarray, weight: float) -> np.ndarray:
        """(M,) weight of knowledge at each candidate: 1 + ``weight`` x where plausible
        parameters disagree on the descriptor (relative to the mean disagreement), 1 before
        a posterior exists."""
        if self.posterior is None or weight <= 0:
            return np.ones(len(candidates_mm))
        d = np.asarray(self.posterior.disagreement(self.composition(candidates_mm)), float)
        return 1.0 + weight * d / max(float(d.mean()), 1e-12)

    def predict(self, x_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The theory-informed map of the instrument's descriptor (mean, variance): theory
        averaged over the posterior plus the discrepancy's posterior."""
        x = np.asarray(x_mm, float).reshape(-1, 2)
        return self.posterior.predict(x, self.composition(x))

    # -- what the campaign reports -------------------------------------------------------------
    def posterior_row(self) -> dict[str, float]:
        """Flat: ``<name>_mean``, ``<name>_lo``, ``<name>_hi`` (90 % interval) per parameter."""
        out: dict[str, float] = {}
        for name, row in self.summary().items():
            for k in ("mean", "lo", "hi"):
                out[f"{name}_{k}"] = round(float(row[k]), 6)
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        return {} if self.posterior is None else self.posterior.summary()

    def discrepancy_map(self) -> dict[str, list]:
        """The discrepancy (experiment minus theory) over the library: mean and sd on a
        grid, JSON-plain; empty before a posterior exists."""
        if self.posterior is None:
            return {}
        (x0, x1), (y0, y1) = self.bounds
        gx, gy = np.meshgrid(np.linspace(x0, x1, MAP_SHAPE[0]), np.linspace(y0, y1, MAP_SHAPE[1]))
        xy = np.column_stack([gx.ravel(), gy.ravel()])
        mean, sd = self.posterior.discrepancy(xy)
        return {
            "x_mm": xy[:, 0].round(4).tolist(),
            "y_mm": xy[:, 1].round(4).tolist(),
            "mean": np.round(mean, 6).tolist(),
            "sd": np.round(sd, 6).tolist(),
        }

    def disagreements(self, top: int = 5) -> list[dict[str, float]]:
        """Where theory and experiment disagree most: the grid points whose discrepancy is
        largest in units of its own uncertainty (|mean| / sd), largest first."""
        m = self.discrepancy_map()
        if not m:
            return []
        mean, sd = np.asarray(m["mean"]), np.asarray(m["sd"])
        z = np.abs(mean) / np.maximum(sd, 1e-12)
        order = np.argsort(-z)[:top]
        return [
            {
                "x_mm": m["x_mm"][i],
                "y_mm": m["y_mm"][i],
                "discrepancy": m["mean"][i],
                "sd": m["sd"][i],
                "z": round(float(z[i]), 3),
            }
            for i in order
        ]


def fit_theory(
    models: TheoryModels,
    rows: np.ndarray,
    y: np.ndarray,
    x_obs: np.ndarray,
    y_obs: np.ndarray,
    bounds: np.ndarray,
) -> TheoryModels:
    """A new snapshot: the surrogate fitted on every simulation (rows (n, 1+k), outputs y),
    and, with two measurements or more, the parameters calibrated on the instrument's
    measurements (positions x_obs in mm, values y_obs)."""
    rows = np.asarray(rows, float)
    surrogate = TheorySurrogate.fit(
        rows[:, 0],
        rows[:, 1:],
        np.asarray(y, float),
        models.space,
        models.s_range,
        seed=models.seed,
    )
    posterior = None
    if len(y_obs) >= 2:
        posterior = infer_parameters(
            surrogate,
            np.asarray(x_obs, float),
            models.composition(x_obs),
            np.asarray(y_obs, float),
            bounds_mm=np.asarray(bounds, float),
            seed=models.seed,
        )
    return dataclasses.replace(
        models,
        surrogate=surrogate,
        posterior=posterior,
        n_measurements=len(y_obs),
        n_simulations=len(y),
    )
