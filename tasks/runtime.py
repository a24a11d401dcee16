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
  to date;
- **steer** (:meth:`Campaign.propose`, :meth:`Campaign.answer`, :meth:`Campaign.steer`): an
  operator reviews a proposal (accept, override, stop) or redirects the campaign (a vote, a
  seed point, an excluded box, an instrument's weight, budget or hold, the weight of the votes,
  stop). Every human input is stored in the decisions table, and resume replays them, so a
  redirect outlives a crash. Each takes effect at the instrument's next decision;
- **lose and regain an instrument** (:meth:`Campaign.lose`, :meth:`Campaign.regain`): a
  measurement that could not be made (the agent died, the network went) goes back on the queue
  with its request id, the instrument is marked unavailable (a ``policy="unavailable"`` row in
  the decisions table names the decision it left unfinished), and the other instruments go on;
  when it answers again its decision is re-issued first. Resume re-issues it too;
- **end an instrument** (:meth:`Campaign.end`): its budget of instrument-seconds cannot hold the
  next measurement, or the deadline passed. Its unmeasured decisions are dropped (a
  ``policy="ended"`` row names them, and resume does not re-issue them) and it gets no more.

It knows nothing of Prefect or of how a measurement is carried out: the flows submit each
decision to the ``measure`` Prefect task, the efficiency simulator calls a plain function. One
caller, one thread: the agent is never shared with a task.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from coorch.models.agent import Agent, Suggestion
from coorch.models.observations import Observation
from coorch.records import Decision, HumanInput, Measurement
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
        target_weight: how far votes steer the agent once there are some (0-1).
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
    target_weight: float = 0.5
    queue: list[Decision] = dataclasses.field(default_factory=list)
    measured: int = 0
    decided: int = 0
    # operators' steering: see steer()
    held: set[str] = dataclasses.field(default_factory=set)
    limits: dict[str, int] = dataclasses.field(default_factory=dict)
    stopped: bool = False
    votes: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    positions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    measured_by: Counter = dataclasses.field(default_factory=Counter)
    per_instrument: Counter = dataclasses.field(default_factory=Counter)
    # instruments that stopped answering: name -> why (see lose())
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    # instruments that may measure no more (budget in seconds, deadline): name -> why (end())
    ended: dict[str, str] = dataclasses.field(default_factory=dict)
    _proposals: dict[str, Suggestion] = dataclasses.field(default_factory=dict)
    # the last stored decision's whole training set and id: the next one's chain (_store)
    _trained: list[str] = dataclasses.field(default_factory=list)
    _trained_since: str | None = None

    # -- the store ------------------------------------------------------------------------
    def resume(self, modalities: Sequence[str] | None = None) -> list[Measurement]:
        """Tell the agent what the store holds (of ``modalities``, default: this campaign's)
        and queue the decisions still to be measured; returns the stored measurements."""
        mods = set(modalities or self.modalities.values())
        done = [m for m in self.store.read_measurements() if m.modality in mods]
        for m in done:
            self._tell(m)
        have = {m.measurement_id for m in done}
        decisions = self.store.read_decisions()
        # dropped when their instrument ended: never re-issued
        have |= {mid for d in decisions if d.policy == "ended" for mid in d.pending}
        for d in decisions:
            if not d.requests_measurement:
                if d.human_input is not None:
                    self._apply(d.human_input)  # a redirect outlives a crash
                continue
            if d.modality in mods:
                self.per_instrument[d.instrument] += 1
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
        decisions = self._store(
            *[
                self._decision(self.agent.reserve(name, np.asarray(x, float), reason=reason))
                for name, x in seeds
            ]
        )
        self.queue.extend(decisions)
        self.decided += len(decisions)
        self.per_instrument.update(d.instrument for d in decisions)

    # -- the loop ---------------------------------------------------------------------------
    def decide(self, instrument: str | None = None) -> Decision | None:
        """The next measurement for ``instrument`` (None: the agent's best pair), stored before
        it is carried out; None once the budget is decided, or while operators hold it."""
        d = self.queued(instrument)
        if d is not None or not self.may_decide(instrument):
            return d
        return self._commit(self._decision(self.agent.ask(instrument)))

    def queued(self, instrument: str | None = None) -> Decision | None:
        """The next stored decision still to be measured by ``instrument`` (resumed, seeded,
        answered by an operator), taken off the queue; None if there is none (or it is held)."""
        if self.stopped or instrument in self.held or instrument in self.unavailable:
            return None
        if instrument in self.ended:
            return None
        for d in self.queue:
            if d.instrument in self.unavailable:
                continue
            if instrument is None or d.instrument == instrument:
                self.queue.remove(d)
                return d
        return None

    def may_decide(self, instrument: str | None) -> bool:
        """May the agent choose a new measurement for ``instrument`` (budgets, holds, stop)?
        Proposals waiting for an operator count as decided."""
        open_ = len(self._proposals)
        if self.stopped or self.decided + open_ >= self.budget:
            return False
        if instrument in self.held or instrument in self.unavailable or instrument in self.ended:
            return False
        if instrument is None:
            return True
        mine = sum(s.instrument == instrument for s in self._proposals.values())
        return self.per_instrument[instrument] + mine < self.limits.get(instrument, math.inf)

    def accept(self, proposal: Decision) -> Decision:
        """Store a proposal as the agent made it (nobody was asked to review it)."""
        self.agent.accept(self._proposals.pop(proposal.measurement_id))
        return self._commit(proposal)

    def propose(self, instrument: str) -> Decision | None:
        """The agent's choice for ``instrument``, neither stored nor pending, for an operator
        to review; :meth:`answer` stores what they chose. None as :meth:`decide`."""
        if not self.may_decide(instrument):
            return None
        s = self.agent.propose(instrument)
        self._proposals[s.measurement_id] = s
        return self._decision(s)

    def answer(self, proposal: Decision, human: HumanInput) -> Decision | None:
        """Store the operator's answer to ``proposal``: ``accept`` it, ``override`` it (with
        ``detail`` x, y and optionally instrument), or ``stop`` (None). The stored decision
        carries ``human`` with the proposal it replaced.

        Raises ValueError for an answer it cannot take (an override outside the library, an
        unknown instrument), with the proposal still open to another answer."""
        if human.action not in ("accept", "override", "stop"):
            raise ValueError(f"a review is answered by accept, override or stop, not {human}")
        if human.action == "override":
            where = self._where(human.detail, proposal.instrument)  # checked before anything
        s = self._proposals.pop(proposal.measurement_id)
        human = human.model_copy(update={"replaced": proposal.model_dump(mode="json")})
        if human.action == "stop" or self.stopped:
            if not self.stopped:
                self.steer(human)
            return None
        if human.action == "accept":
            self.agent.accept(s)
            return self._commit(proposal.model_copy(update={"human_input": human}))
        moved = self._decision(self.agent.reserve(*where, reason="operator"))
        return self._commit(moved.model_copy(update={"human_input": human}))

    def steer(self, human: HumanInput) -> Decision:
        """Apply an operator's redirect and store it: a ``seed`` is a measurement to make
        (queued), anything else a row that asks for none. Raises ValueError, with nothing
        stored or changed, for an input this campaign cannot take."""
        if human.action == "seed":
            name, x = self._where(human.detail, None)
            d = self._decision(self.agent.reserve(name, x, reason="operator"))
            (d,) = self._store(d.model_copy(update={"human_input": human}))
            self.queue.append(d)
            self.decided += 1
            self.per_instrument[name] += 1
            return d
        self._check(human)
        self._apply(human)
        d = self._event(str(human.detail.get("instrument") or ""), "operator", [], human)
        self.store.append_decision(d)
        return d

    def record(self, m: Measurement) -> Observation:
        """Learn from a stored measurement: describe it, tell the agent, poll the work."""
        obs = self._tell(m)
        self.measured += 1
        for w in self.work:
            w.poll(self)
        return obs

    def poll(self, work: BackgroundWork | None = None) -> None:
        """Poll ``work`` (something of it landed between measurements: a simulation), or all
        of it."""
        for w in self.work if work is None else (work,):
            w.poll(self)

    def lose(self, d: Decision, reason: str) -> Decision:
        """``d`` could not be measured because its instrument stopped answering: queue it again
        (first, with its request id, still reserved so the agent does not choose it twice),
        mark the instrument unavailable and store that (a row naming ``d`` as pending)."""
        self.queue.insert(0, d)
        self.unavailable[d.instrument] = reason
        self.log.warning(
            "instrument %s unavailable (%s): %s waits for it; the others go on",
            d.instrument,
            reason,
            d.measurement_id,
        )
        row = self._event(d.instrument, "unavailable", [d.measurement_id])
        self.store.append_decision(row)
        return row

    def regain(self, instrument: str) -> Decision:
        """``instrument`` answers again: its queued decisions go out first; stored as a row."""
        self.unavailable.pop(instrument, None)
        waiting = [d.measurement_id for d in self.queue if d.instrument == instrument]
        self.log.info("instrument %s available again; re-issuing %s", instrument, waiting)
        row = self._event(instrument, "available", waiting)
        self.store.append_decision(row)
        return row

    def end(self, d: Decision, reason: str, instruments: Sequence[str] = ()) -> Decision:
        """``d`` may not start (``reason``: the budget in seconds, the deadline): drop it and
        every queued decision of ``instruments`` (empty: all), which measure no more; stored
        as a ``policy="ended"`` row naming the dropped decisions."""
        names = list(instruments) or list(self.modalities)
        for name in names:
            self.ended[name] = reason
        dropped = [d] + [q for q in self.queue if q.instrument in self.ended]
        self.queue = [q for q in self.queue if q.instrument not in self.ended]
        for q in dropped:
            self.agent.drop(q.measurement_id)
        self.log.info("%s: %s; %d decision(s) dropped", ", ".join(names), reason, len(dropped))
        row = self._event(",".join(names), "ended", [q.measurement_id for q in dropped])
        self.store.append_decision(row)
        return row

    @property
    def unfinished(self) -> list[Decision]:
        """Stored decisions left unmeasured because their instrument is unavailable."""
        return [d for d in self.queue if d.instrument in self.unavailable]

    def finish(self) -> None:
        """Wait for the background work; every model then uses every measurement."""
        for w in self.work:
            w.finish(self)

    @property
    def done(self) -> bool:
        if self.stopped or set(self.modalities) <= set(self.ended):
            return True
        return not self.queue and self.decided >= self.budget

    # -- steering ----------------------------------------------------------------------------
    def _where(self, detail: dict, default: str | None) -> tuple[str, np.ndarray]:
        name = detail.get("instrument") or default
        if name not in self.modalities:
            raise ValueError(
                f"unknown instrument {name!r}; this campaign has {list(self.modalities)}"
            )
        try:
            x = np.array([float(detail["x"]), float(detail.get("y", 0.0))])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a position needs numbers x and y (mm), got {detail}") from None
        lo, hi = self.agent.bounds[:, 0], self.agent.bounds[:, 1]
        if not np.all((x[: len(lo)] >= lo) & (x[: len(lo)] <= hi)):
            raise ValueError(
                f"({x[0]}, {x[1]}) mm is outside the library {self.agent.bounds.tolist()}"
            )
        return name, x[: self.agent.geometry.dim]

    def _check(self, human: HumanInput) -> None:
        """Refuse what cannot be applied, before anything changes."""
        a, d = human.action, human.detail
        named = a in ("weight", "hold", "release") or (a == "budget" and d.get("instrument"))
        if named and d.get("instrument") not in self.modalities:
            raise ValueError(f"{a}: unknown instrument {d.get('instrument')!r}")
        if a == "vote":
            if d.get("measurement_id") not in self.positions:
                raise ValueError(f"vote: no measurement {d.get('measurement_id')!r} yet")
            if not 1 <= float(d.get("score", 0)) <= 5:
                raise ValueError(f"vote: a score is 1 (bad) to 5 (good), not {d.get('score')}")
        if a == "exclude" and len(d.get("box") or ()) != 4:
            raise ValueError(f"exclude: a box is x0 x1 y0 y1 (mm), not {d.get('box')}")
        if a in ("weight", "budget", "explore") and not float(d.get("value", -1)) >= 0:
            raise ValueError(f"{a}: a value >= 0 is needed, not {d.get('value')}")
        if a == "explore" and float(d["value"]) > 1:
            raise ValueError(f"explore: the weight of the votes is 0 to 1, not {d['value']}")

    def _apply(self, human: HumanInput) -> None:
        """The in-memory effect of a redirect (also replayed on resume)."""
        a, d = human.action, human.detail
        if a == "vote":
            self.votes.append((str(d["measurement_id"]), float(d["score"])))
        elif a == "exclude":
            self.agent.exclude(d["box"])
        elif a == "weight":
            self.agent.weigh(d["instrument"], float(d["value"]))
        elif a == "budget" and d.get("instrument"):
            self.limits[d["instrument"]] = int(d["value"])
        elif a == "budget":
            self.budget = int(d["value"])
        elif a == "hold":
            self.held.add(d["instrument"])
        elif a == "release":
            self.held.discard(d["instrument"])
        elif a == "explore":
            self.target_weight = float(d["value"])
        elif a == "stop":
            self.stopped = True

    # -- records ----------------------------------------------------------------------------
    def _commit(self, d: Decision) -> Decision:
        (d,) = self._store(d)
        self.decided += 1
        self.per_instrument[d.instrument] += 1
        return d

    def _store(self, *ds: Decision) -> list[Decision]:
        """Store ``ds`` in one commit, each as a link of the training-set chain: its
        ``trained_on`` cut to the ids added since the decision this campaign stored before it
        (``records.Decision`` says why), when that one's set is where its own set starts.
        Returns the decisions as stored: what the queue and the flow's history keep, so
        neither grows as the square of the campaign either."""
        out = []
        trained, since = self._trained, self._trained_since
        for d in ds:
            if not d.requests_measurement:
                out.append(d)
                continue
            full = d.trained_on
            if since is not None and full[: len(trained)] == trained:
                d = d.model_copy(
                    update={"trained_on": full[len(trained) :], "trained_since": since}
                )
            out.append(d)
            trained, since = full, d.decision_id
        if len(out) == 1:
            self.store.append_decision(out[0])
        else:
            self.store.append_decisions(out)
        self._trained, self._trained_since = trained, since
        return out

    def _event(
        self, instrument: str, what: str, pending: list[str], human: HumanInput | None = None
    ) -> Decision:
        """A decisions-table row that asks for no measurement: an operator's input, or an
        instrument lost or regained (``what`` is its policy column)."""
        return Decision(
            instrument=instrument,
            modality="",
            library_x=0.0,
            library_y=0.0,
            policy=what,
            pending=pending,
            human_input=human,
            flow_run_id=self.flow_run_id,
            campaign=self.name,
        )

    def _tell(self, m: Measurement) -> Observation:
        x = np.array([m.library_x, m.library_y])[: self.agent.geometry.dim]
        self.positions[m.measurement_id] = x
        self.measured_by[m.instrument] += 1
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
