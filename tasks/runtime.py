"""The campaign runtime: the one middle every campaign runs through.

A :class:`Campaign` holds the store, the agent, the describer and the background work, and does
the four things a campaign does between measurements:

- **resume** (:meth:`Campaign.resume`): the store is the truth. Every stored measurement is told
  to the agent again, and every stored decision without a measurement is reserved again and
  queued, to be re-issued with its original request id; the instrument agent (which caches
  results by request id) and the store (idempotent by measurement id) make the retry
  exactly-once, so nothing is lost and nothing is measured twice;
- **decide** (:meth:`Campaign.decide`): a queued decision first, else the agent's choice,
  stored *before* anything moves;
- **record** (:meth:`Campaign.record`): describe a stored measurement, tell the agent, poll the
  background work;
- **finish** (:meth:`Campaign.finish`): wait for the background work and bring every model up
  to date.

It knows nothing of Prefect or of how a measurement is carried out: the flows submit each
decision to the ``measure`` Prefect task, the efficiency simulator calls a plain function. One
caller, one thread: the agent is never shared with a task.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from coorch.models.agent import Agent, Suggestion
from coorch.models.observations import Observation
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.background import BackgroundWork
from coorch.tasks.describe import Describer


@dataclasses.dataclass
class Campaign:
    """One campaign's state between measurements (see the module docstring).

    Args:
        name: the campaign's name, written on every decision.
        store: where decisions and measurements live.
        agent: decides; told every recorded measurement.
        describer: turns a measurement into the agent's task values.
        modalities: the modality each instrument measures in this campaign.
        budget: measurements in all, seeds included.
        work: background work, polled after every measurement.
        flow_run_id: the run that makes the decisions (provenance), if any.
    """

    name: str
    store: CampaignStore
    agent: Agent
    describer: Describer
    modalities: dict[str, str]
    budget: int
    work: Sequence[BackgroundWork] = ()
    flow_run_id: str | None = None
    log: logging.Logger | logging.LoggerAdapter = logging.getLogger(__name__)
    queue: list[Decision] = dataclasses.field(default_factory=list)
    measured: int = 0
    decided: int = 0

    # -- the store ------------------------------------------------------------------------
    def resume(self, modalities: Sequence[str] | None = None) -> list[Measurement]:
        """Tell the agent what the store holds (of ``modalities``, default: this campaign's)
        and queue the decisions still to be measured; returns the stored measurements."""
        mods = set(modalities or self.modalities.values())
        done = [m for m in self.store.read_measurements() if m.modality in mods]
        for m in done:
            self._tell(m)
        have = {m.measurement_id for m in done}
        for d in self.store.read_decisions():
            if d.modality in mods and d.measurement_id not in have:
                self.agent.reserve(
                    d.instrument,
                    np.array([d.library_x, d.library_y]),
                    reason=d.policy,
                    measurement_id=d.measurement_id,
                )
                self.queue.append(d)
        self.measured, self.decided = len(done), len(done) + len(self.queue)
        return done

    def reserve(self, seeds: Sequence[tuple[str, np.ndarray]], reason: str = "seed") -> None:
        """Reserve positions chosen outside the agent, store them as decisions, queue them."""
        decisions = [
            self._decision(self.agent.reserve(name, np.asarray(x, float), reason=reason))
            for name, x in seeds
        ]
        self.store.append_decisions(decisions)
        self.queue.extend(decisions)
        self.decided += len(decisions)

    # -- the loop ---------------------------------------------------------------------------
    def decide(self, instrument: str | None = None) -> Decision | None:
        """The next measurement for ``instrument`` (None: the agent's best pair), stored before
        it is carried out; None once the budget is decided."""
        for d in self.queue:
            if instrument is None or d.instrument == instrument:
                self.queue.remove(d)
                return d
        if self.decided >= self.budget:
            return None
        d = self._decision(self.agent.ask(instrument))
        self.store.append_decision(d)
        self.decided += 1
        return d

    def record(self, m: Measurement) -> Observation:
        """Learn from a stored measurement: describe it, tell the agent, poll the work."""
        obs = self._tell(m)
        self.measured += 1
        for w in self.work:
            w.poll(self)
        return obs

    def finish(self) -> None:
        """Wait for the background work; every model then uses every measurement."""
        for w in self.work:
            w.finish(self)

    @property
    def done(self) -> bool:
        return not self.queue and self.decided >= self.budget

    # -- records ----------------------------------------------------------------------------
    def _tell(self, m: Measurement) -> Observation:
        x = np.array([m.library_x, m.library_y])[: self.agent.geometry.dim]
        obs = Observation(m.instrument, x, self.describer.values(m), m.measurement_id)
        self.agent.tell([obs])
        return obs

    def _decision(self, s: Suggestion) -> Decision:
        x = [float(v) for v in s.x] + [0.0]
        return Decision(
            measurement_id=s.measurement_id,
            instrument=s.instrument,
            modality=self.modalities[s.instrument],
            library_x=x[0],
            library_y=x[1],
            policy=s.policy,
            model_version=s.model_version,
            trained_on=list(s.trained_on),
            pending=list(s.pending),
            acquisition_value=s.acquisition_value,
            n_candidates=s.n_candidates,
            flow_run_id=self.flow_run_id,
            campaign=self.name,
        )
