"""Image -> spectrum active learning (im2spec): measure the expensive spectrum where a deep-kernel
model of "structure patch -> spectral descriptor" is least sure (or expects most improvement).

Why (Roccapriore, Ziatdinov et al. 2022; Slautin et al. 2024): in STEM or AFM the structural
image is cheap and available everywhere, the spectrum (EELS, a PFM loop) is slow and doses the
sample. A deep-kernel GP (:func:`coorch.models.dkl.fit_dkl`) learns which aspects of local
structure predict the spectral property; with it, a handful of spectra chosen where the model
is most uncertain maps the property over every imaged position.

The agent follows the decision-agent contract (:class:`coorch.models.agent.Agent`): the
candidates are the positions where a structure patch exists, it is told spectral descriptors
(observations at library positions, matched to the nearest candidate's patch), asked for the next
position (never a pending one, never one already measured), and ``report()`` gives the predicted
property map. So the flows' ``measure`` task, decision records and resume work unchanged.

Model cadence (:class:`~coorch.models.task_gps.RefitCadence`, seeded by
:func:`~coorch.models.task_gps.fit_seed` as every fit on the decision path): the network and
kernel are trained (``fit_dkl``) once ``n_initial`` values are in and again every
``refit_every`` new values; in between, the trained model is only conditioned on the new values
(:meth:`coorch.models.dkl.DKLModel.condition`, milliseconds). Before the first fit, positions
are space-filling (:meth:`~coorch.models.agent.Agent.space_filling`).
Pure models code: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import norm

from coorch.models.agent import Agent
from coorch.models.cost import InstrumentCost
from coorch.models.dkl import DKLModel, Extractor, fit_dkl
from coorch.models.task_gps import RefitCadence, fit_seed

__all__ = ["Im2SpecPolicy", "expected_improvement"]


ACQUISITIONS = ("max_variance", "ei")


def expected_improvement(
    mean: np.ndarray, std: np.ndarray, best: float, *, maximize: bool = True, xi: float = 0.0
) -> np.ndarray:
    """Closed-form EI of a Gaussian belief over ``best`` (larger is better unless
    ``maximize=False``); ``xi`` trades exploitation for exploration."""
    sign = 1.0 if maximize else -1.0
    imp = sign * (np.asarray(mean) - best) - xi
    s = np.maximum(np.asarray(std, float), 1e-12)
    z = imp / s
    return imp * norm.cdf(z) + s * norm.pdf(z)


class Im2SpecPolicy(Agent):
    """Deep-kernel active learning from structure patches to one spectral descriptor.

    Args:
        candidates: (m, d) library positions with a structure patch each.
        bounds: (d, 2) library bounds, mm.
        instruments: the spectroscopy instrument(s); together exactly one task (the property).
        structure: (m, h, w) structure patches, row i imaged at ``candidates[i]``.
        structure_ids: measurement ids of the patches; once a model decides, every
            suggestion's ``trained_on`` starts with them (the model read them all), so lineage
            reaches the images.
        acquisition: ``"max_variance"`` (map the property: largest predictive std) or ``"ei"``
            (seek its optimum: expected improvement over the best predicted measured value).
        maximize: EI's direction.
        refit_every: train network and kernel again after this many new values.
        n_initial: values before the first training (>= 3, ``fit_dkl``'s minimum).
        feature_dim, steps, extractor: passed to :func:`fit_dkl`.
    """

    name = "im2spec"

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        structure: np.ndarray,
        structure_ids: Sequence[str] = (),
        acquisition: str = "max_variance",
        maximize: bool = True,
        refit_every: int = 4,
        n_initial: int = 4,
        feature_dim: int = 2,
        steps: int = 80,
        extractor: Extractor = "cnn",
        xi: float = 0.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        self.structure = np.asarray(structure, float)
        if self.structure.ndim != 3 or len(self.structure) != len(self.candidates):
            raise ValueError("structure must be (m, h, w), one patch per candidate")
        if self.num_tasks != 1:
            raise ValueError("im2spec models one spectral descriptor (one task)")
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"unknown acquisition {acquisition!r}; choose from {ACQUISITIONS}")
        if refit_every < 1 or n_initial < 3:
            raise ValueError("refit_every must be >= 1 and n_initial >= 3")
        self.acquisition, self.maximize, self.xi = acquisition, bool(maximize), float(xi)
        self.refit_every, self.n_initial = int(refit_every), int(n_initial)
        self.cadence = RefitCadence(self.refit_every)
        self.fit_kw = {"feature_dim": feature_dim, "steps": steps, "extractor": extractor}
        self.structure_ids = tuple(structure_ids)
        if self.structure_ids and len(self.structure_ids) != len(self.candidates):
            raise ValueError("structure_ids must name one measurement per patch")
        if name is not None:
            self.name = name
        self._tree = cKDTree(self.unit)  # told positions -> their candidate's patch
        self.dkl: DKLModel | None = None
        self.n_fit = 0  # values the network was trained on
        self._data: tuple[np.ndarray, np.ndarray] | None = None  # what ``dkl`` is conditioned on
        self.n_fits = 0
        self._map: tuple[np.ndarray, np.ndarray] | None = None  # (mean, var) at candidates

    # -- data ----------------------------------------------------------------------------
    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(candidate index (n,), value (n,)) of every told value (NaN ones left out)."""
        x, _, y = self.log.data()
        idx = self._tree.query(x)[1] if len(x) else np.zeros(0, int)
        return np.asarray(idx, int), y

    def measured(self) -> np.ndarray:
        """Candidate indices measured or pending on any instrument."""
        taken = set().union(*self.visited.values()) | {c for _, c in self.pending.values()}
        return np.fromiter(sorted(taken), int, len(taken))

    # -- the model -----------------------------------------------------------------------
    def model(self) -> DKLModel | None:
        """The DKL model on every told value: trained at the cadence (or when told values
        changed: ``relabel``), conditioned in between; None before ``n_initial`` values.
        Cached while the data are unchanged."""
        idx, y = self.training_data()
        n = len(y)
        if n < self.n_initial:
            return None
        if (
            self.dkl is not None
            and self._data is not None
            and len(self._data[1]) == n
            and np.array_equal(self._data[0], idx)
            and np.array_equal(self._data[1], y)
        ):
            return self.dkl
        relabelled = self._data is not None and not np.array_equal(
            self._data[1], y[: len(self._data[1])]
        )
        if self.dkl is None or relabelled or self.cadence.due(self.n_fit, n):
            self.dkl = fit_dkl(
                self.structure[idx], y, seed=fit_seed(self.seed, 0, n), **self.fit_kw
            )
            self.n_fit = n
            self.n_fits += 1
        else:
            self.dkl = self.dkl.condition(self.structure[idx], y)
        self._data = (idx, y)
        self.model_version = f"{self.name}-fit{self.n_fit}-n{n}"
        self._map = None
        return self.dkl

    def predict_map(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Predicted property mean and variance (m,) at every candidate (cached per model)."""
        model = self.model()
        if model is None:
            return None
        if self._map is None:
            self._map = model.predict(self.structure)
        return self._map

    # -- deciding ------------------------------------------------------------------------
    def _excluded(self, inst: InstrumentCost) -> np.ndarray:
        """Measured or pending anywhere: a spectrum adds nothing where one was taken."""
        return self.measured()

    def _trained_on(self) -> tuple[str, ...]:
        """The model read every structure patch besides the told values."""
        told = super()._trained_on()
        return self.structure_ids + told if self.model_version != "none" else told

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        if self.predict_map() is None:  # space-filling until the first fit
            return self.space_filling(inst, self._free(inst)), float("nan")
        return super()._choose(inst)

    def _score(self, inst: InstrumentCost, free: np.ndarray) -> np.ndarray:
        mean, var = self.predict_map()
        std = np.sqrt(var[free])
        if self.acquisition == "max_variance":
            return std
        idx, _ = self.training_data()
        best = mean[idx].max() if self.maximize else mean[idx].min()
        return expected_improvement(
            mean[free], std, float(best), maximize=self.maximize, xi=self.xi
        )

    # -- beliefs -------------------------------------------------------------------------
    def report(self) -> dict:
        """Counts, the measured candidates and their values, and the predicted property map
        (``mean``, ``std`` at every candidate ``x``; None before the first fit)."""
        out = super().report()
        idx, y = self.training_data()
        out.update(
            acquisition=self.acquisition,
            n_fits=self.n_fits,
            refit_every=self.refit_every,
            measured=idx.tolist(),
            measured_values=y.tolist(),
            x=self.candidates.tolist(),
            mean=None,
            std=None,
            noise=None,
        )
        pred = self.predict_map()
        if pred is not None:
            out.update(
                mean=pred[0].tolist(),
                std=np.sqrt(pred[1]).tolist(),
                noise=self.dkl.noise(),
                model_version=self.model_version,
            )
        return out
