"""Structured-GP fits in the background: a physics mean per task, switched on per instrument.

Why: the multi-task GP that decides where to measure has a constant mean; it maps the library but
does not say *where the phase boundary is*. For an instrument whose config sets
``physics_mean`` (:class:`coorch.deployments.config.InstrumentConfig`), a structured GP
(:mod:`coorch.models.structured`: a pyro physics mean, e.g. a step or a peak at an unknown
centre with an unknown width, plus a GP on the residual) is fitted to that instrument's task
alone. Its fitted centre is the campaign's answer to that question, and its map follows the
physics between and beyond the data (the report draws it instead of the MTGP's).

The decision path stays the multi-task GP's: with its hyperparameters fixed, a GP's predictive
variance, hence every integrated variance reduction, depends on where the data are, not on
their values or on the mean function. A physics mean would change no decision, so it is not on
that path; it is fitted here at its own rate, like the hyperparameters
(:class:`coorch.tasks.fit.HyperparameterRefit`).

Inputs: the library positions in mm, both axes, with the physics along library x
(:data:`COMPOSITION_AXIS`), the composition gradient of a binary spread such as ``smbfo``. Both
axes go in because the residual GP has ARD lengthscales: what varies along y (film thickness)
costs one long lengthscale, where dropping y would push it into the noise. The input bounds are
the library extent, so the centre's prior spans the whole library (not only the measured span)
and ``center`` and ``width`` come back in mm. A ternary spread, whose composition varies along
both axes, has no single composition axis: a 1-D physics mean does not describe it.

Without Dask (random, grid and BO policies: the flow starts no cluster for them) nothing is
fitted during the campaign; :meth:`PhysicsFits.finish` fits once, in the flow's process
(about 1-3 s per task for tens of values on one core), so a baseline campaign reports the same
answer as a co-orchestrated one and the two compare fairly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from concurrent.futures import Executor, Future, wait
from typing import TYPE_CHECKING

import numpy as np

from coorch.models.agent import Agent
from coorch.models.structured import MeanKind, StructuredGP, fit_structured_gp
from coorch.tasks.background import outcome

if TYPE_CHECKING:
    from coorch.tasks.runtime import Campaign

#: Library axis (column of the position) along which the composition, hence the physics, varies.
COMPOSITION_AXIS = 0

#: Fewest values of a task for a background fit: a step or peak has four parameters (centre,
#: width, amplitude, offset), so fewer values cannot place it; ``fit_structured_gp`` needs 3.
MIN_VALUES = 5
_MIN_FINAL = 3


class PhysicsFits:
    """Structured-GP fits, at most one in flight per task, the latest kept per task.

    Args:
        executor: the campaign's executor (Dask), or None (then only :meth:`finish` fits, in
            the caller's process).
        means: physics mean kind per instrument name (instruments with ``physics_mean`` set).
        every: refit a task when it has this many new values (the spec's ``refit_every``).
        seed: seed of every fit.
        log: where skipped or failed fits are reported (the flow passes its run logger).
    """

    def __init__(
        self,
        executor: Executor | None,
        means: Mapping[str, MeanKind],
        *,
        every: int,
        seed: int = 0,
        min_values: int = MIN_VALUES,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.executor, self.every, self.seed = executor, every, seed
        self.means = dict(means)
        self.min_values = max(min_values, _MIN_FINAL)
        self.log = log or logging.getLogger(__name__)
        self.models: dict[str, StructuredGP] = {}
        self.running: dict[str, Future] = {}
        self.last_n = dict.fromkeys(self.means, 0)  # values the latest submitted fit used
        self.fits = 0

    @staticmethod
    def task(agent: Agent, name: str) -> int:
        tasks = agent.instrument(name).tasks
        if len(tasks) != 1:
            raise ValueError(f"{name}: a physics mean needs one task, it has {len(tasks)}")
        return tasks[0]

    def data(self, agent: Agent, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Instrument ``name``'s (library positions in mm (n, d), values (n,))."""
        u, _, y = agent.log.data(tasks=(self.task(agent, name),))
        return agent.geometry.from_unit(u), y

    def _fit(self, agent: Agent, name: str, x: np.ndarray, y: np.ndarray) -> functools.partial:
        self.last_n[name] = len(y)
        return functools.partial(
            fit_structured_gp,
            x,
            y,
            mean=self.means[name],
            feature_index=COMPOSITION_AXIS,
            bounds=agent.bounds.T,
            seed=self.seed,
        )

    def _collect(self, name: str) -> None:
        """Keep a finished fit; a failed one is logged and the next, on more data, retries."""
        model, exc = outcome(self.running.pop(name))
        if exc is not None:
            self.log.warning(
                "%s: structured GP fit on %d values failed: %r", name, self.last_n[name], exc
            )
            return
        self.models[name] = model
        self.fits += 1

    def poll(self, campaign: Campaign) -> None:
        """Keep finished fits; start one per task with ``every`` new values and none running."""
        if self.executor is None:
            return
        for name in self.means:
            if name in self.running and self.running[name].done():
                self._collect(name)
            if name in self.running:
                continue
            x, y = self.data(campaign.agent, name)
            if len(y) >= self.min_values and len(y) - self.last_n[name] >= self.every:
                self.running[name] = self.executor.submit(self._fit(campaign.agent, name, x, y))

    def finish(self, campaign: Campaign) -> None:
        """Wait for the fits in flight, then fit every task once more on all its values (on
        the executor if there is one, else here), so the campaign's answer uses every value."""
        wait(list(self.running.values()))
        for name in list(self.running):
            self._collect(name)
        final = {}
        for name in self.means:
            x, y = self.data(campaign.agent, name)
            if name in self.models and len(self.models[name].y) == len(y):
                continue  # the model kept already saw every value
            if len(y) < _MIN_FINAL:
                self.log.warning(
                    "%s: %d values, too few for a structured GP fit: no physics parameters",
                    name,
                    len(y),
                )
                continue
            fit = self._fit(campaign.agent, name, x, y)
            final[name] = fit() if self.executor is None else self.executor.submit(fit)
        for name, job in final.items():
            # the final fit's failure is the campaign's
            self.models[name] = job if self.executor is None else job.result()
            self.fits += 1
        for line in self.summary():
            self.log.info(line)

    def physics(self) -> dict[str, dict[str, float]]:
        """The fitted physics parameters per instrument (``center``/``width`` in library mm
        along :data:`COMPOSITION_AXIS`, ``amplitude``/``offset`` in descriptor units), and
        the centre's 90 % credible interval (``center_lo``, ``center_hi``, library mm): the
        MAP centre alone does not say whether the measurements pinned the boundary or left a
        gap at it."""
        out = {}
        for name, model in self.models.items():
            out[name] = model.physics_params()
            if "center" in out[name]:
                out[name]["center_lo"], out[name]["center_hi"] = model.center_interval(0.9)
        return out

    def summary(self) -> list[str]:
        """One line per fitted instrument, for the flow's log."""
        lines = []
        for name, p in self.physics().items():
            if "center" in p:
                lines.append(
                    f"{name}: phase boundary at c0={p['center']:.2f} mm (90 % in "
                    f"{p['center_lo']:.2f}-{p['center_hi']:.2f} mm; width "
                    f"{p['width']:.2f} mm, {self.means[name]} of amplitude "
                    f"{p['amplitude']:.3g} on {p['offset']:.3g})"
                )
            else:
                lines.append(f"{name}: constant mean {p['offset']:.3g} (no physics shape)")
        return lines
