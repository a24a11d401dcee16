"""The decision agent's contract and the state every agent keeps (DESIGN.md, "Decision agent").

Like bluesky-adaptive's ``Agent``: an agent is *told* observations (:meth:`Agent.tell`) and
*asked* for the next position for a free instrument (:meth:`Agent.ask`; with ``None``, for the
best (instrument, position) pair), and can :meth:`Agent.report` what it believes. A position
chosen elsewhere (a seed, a human redirect, a decision re-issued on resume) is *reserved*
(:meth:`Agent.reserve`): it is pending, so the agent's own choices account for it.

The state here is what a campaign needs whatever the model: the observation log, the pending
and visited points, where each instrument is. Subclasses supply one hook, :meth:`Agent._score`
(a value per free candidate for one instrument), and optionally :meth:`Agent._condition` (a
model that learns from positions alone, as a GP's variance does). Positions are library
coordinates (mm); models work in the unit box of the library's geometry.

One caller at a time: the campaign runtime (``coorch.tasks.runtime``) is the only caller, on
one thread, so nothing here locks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from coorch.geometry import LibraryGeometry
from coorch.models.cost import InstrumentCost
from coorch.models.observations import Observation, ObservationLog
from coorch.records import new_id


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """The agent's answer: where to measure, with what, and why."""

    instrument: str
    x: np.ndarray
    measurement_id: str
    acquisition_value: float
    policy: str
    model_version: str
    trained_on: tuple[str, ...]
    pending: tuple[str, ...]
    n_candidates: int


class Agent:
    """Candidates, instruments, the observation log and pending/visited bookkeeping.

    Args:
        candidates: (M, d) library positions (mm) the agent chooses among.
        bounds: (d, 2) library bounds (mm).
        instruments: what each instrument observes and costs.
        seed: seeds the agent's random choices.
    """

    name = "agent"
    model_version = "none"

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        seed: int = 0,
    ) -> None:
        self.geometry = LibraryGeometry(bounds)
        self.bounds = self.geometry.bounds
        self.candidates = np.atleast_2d(np.asarray(candidates, float))
        self.unit = self.geometry.to_unit(self.candidates)
        self.instruments = {i.name: i for i in instruments}
        self.num_tasks = 1 + max(t for i in instruments for t in i.tasks)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.log = ObservationLog(self.unit.shape[1], self.num_tasks)
        self.pending: dict[str, tuple[str, int]] = {}  # measurement id -> (instrument, cand)
        self.position: dict[str, np.ndarray] = {}  # where each instrument is (or will be), mm
        self.visited: dict[str, set[int]] = {i.name: set() for i in instruments}
        self.forbidden: set[int] = set()  # candidates an operator excluded
        self.task_weight = np.ones(self.num_tasks)  # operators' weights per task
        self.emphasis: np.ndarray | None = None  # (M,) operators' votes, see focus()
        self.reward: np.ndarray | None = None
        self.reward_weight = 0.0
        self.guidance: np.ndarray | None = None  # (M, T) from outside the data, see guide()

    def instrument(self, name: str) -> InstrumentCost:
        try:
            return self.instruments[name]
        except KeyError:
            known = list(self.instruments)
            raise KeyError(f"unknown instrument {name!r}; the agent knows {known}") from None

    def nearest(self, x_mm: np.ndarray) -> int:
        """Index of the candidate nearest to library position ``x_mm``."""
        u = self.geometry.to_unit(x_mm)[0]
        return int(np.argmin(((self.unit - u) ** 2).sum(1)))

    # -- the contract -------------------------------------------------------------------
    def tell(self, observations: Sequence[Observation]) -> None:
        """Learn from measured observations; one told twice (resume, retry) counts once."""
        for o in observations:
            if o.measurement_id in self.log:
                continue
            inst = self.instrument(o.instrument)
            u = self.geometry.to_unit(o.x)[0]
            if self.pending.pop(o.measurement_id, None) is None:
                self._condition(u, inst)  # not reserved here: told straight from the store
                self.visited[inst.name].add(self.nearest(o.x))
            self.log.add(o.measurement_id, u, inst.tasks, o.values)
            self.position[inst.name] = np.asarray(o.x, float)
            self._told(inst)

    def ask(self, instrument: str | None = None) -> Suggestion:
        """The next measurement for ``instrument`` (or the best pair), made pending."""
        return self.accept(self.propose(instrument))

    def propose(self, instrument: str | None = None) -> Suggestion:
        """What :meth:`ask` would choose, with nothing made pending: a proposal an operator
        reviews, then :meth:`accept` it or :meth:`reserve` what they chose instead."""
        best = None
        for name in self._contenders(instrument):
            inst = self.instrument(name)
            cand, value = self._choose(inst)
            if best is None or value > best[2]:
                best = (inst, cand, value)
        inst, cand, value = best
        return self._suggest(inst, cand, value, self.name, new_id("m"))

    def accept(self, s: Suggestion) -> Suggestion:
        """Make a proposal pending, as chosen (its model version and lineage kept)."""
        self._pend(self.instrument(s.instrument), self.nearest(s.x), s.measurement_id)
        return s

    def reserve(
        self,
        instrument: str,
        x: np.ndarray,
        *,
        reason: str = "seed",
        measurement_id: str | None = None,
    ) -> Suggestion:
        """Make a position chosen outside the agent pending, at the nearest candidate."""
        inst = self.instrument(instrument)
        cand = self.nearest(x)
        s = self._suggest(inst, cand, float("nan"), reason, measurement_id or new_id("m"))
        self._pend(inst, cand, s.measurement_id)
        return s

    def drop(self, measurement_id: str) -> None:
        """A pending measurement that will not be made (its campaign's time ran out): no
        longer pending, so no choice accounts for it."""
        self.pending.pop(measurement_id, None)

    # -- operators' redirects (DESIGN.md, "Steering") -------------------------------------
    def exclude(self, box: Sequence[float]) -> int:
        """Never send any instrument into the library box ``(x0, x1, y0, y1)`` (mm) again;
        returns how many candidates that removes."""
        x0, x1, y0, y1 = (float(v) for v in box)
        c = self.candidates
        inside = (c[:, 0] >= min(x0, x1)) & (c[:, 0] <= max(x0, x1))
        if c.shape[1] > 1:
            inside &= (c[:, 1] >= min(y0, y1)) & (c[:, 1] <= max(y0, y1))
        new = set(np.flatnonzero(inside).tolist()) - self.forbidden
        self.forbidden |= new
        return len(new)

    def weigh(self, instrument: str, weight: float) -> None:
        """How much ``instrument``'s map matters (1: as much as any other): its tasks' weight
        in the knowledge every measurement is valued by."""
        if not weight >= 0:
            raise ValueError(f"a weight is >= 0, not {weight!r}")
        self.task_weight[list(self.instrument(instrument).tasks)] = float(weight)

    def focus(self, reward: np.ndarray | None, weight: float) -> None:
        """Seek what operators score high, as BOARS does: ``reward`` (M,) per candidate (a
        surrogate of their votes), ``weight`` 0 (knowledge alone) to 1 (the reward alone).

        Two effects, both scaled by ``weight``: knowledge counts more where the reward is high
        (:attr:`emphasis`, so the map is learnt best where it matters), and the choice blends
        knowledge with the reward (:attr:`reward`, so the agent goes back to what is valued).
        None: back to knowledge of the library as a whole."""
        if reward is None or weight <= 0:
            self.emphasis = self.reward = None
            return
        r = np.asarray(reward, float)
        span = np.ptp(r)
        r = (r - r.min()) / span if span > 0 else np.ones_like(r)
        self.emphasis = (1.0 - weight) + weight * r / max(float(r.mean()), 1e-9)
        self.reward, self.reward_weight = r, float(weight)

    def guide(self, weights: np.ndarray | None) -> None:
        """Value knowledge more where something beside the data says it teaches more:
        ``weights`` (M, T) >= 0 per candidate and task, 1 where nothing is known (a theory's
        plausible parameters disagreeing on a task's value there, :mod:`coorch.tasks.theory`).
        None: the data alone. Multiplies the operators' emphasis, does not replace it."""
        if weights is None:
            self.guidance = None
            return
        w = np.asarray(weights, float)
        if w.shape != (len(self.candidates), self.num_tasks) or not (w >= 0).all():
            raise ValueError(
                f"guidance is (candidates, tasks) = {(len(self.candidates), self.num_tasks)} "
                f"weights >= 0, not shape {w.shape}"
            )
        self.guidance = w

    def relabel(self, values: dict[str, np.ndarray]) -> None:
        """Replace the values of measurements already told (positions do not change)."""
        self.log.relabel(values)

    def report(self) -> dict:
        return {
            "policy": self.name,
            "n_observations": len(self.log),
            "n_pending": len(self.pending),
            "model_version": self.model_version,
        }

    # -- what subclasses supply -----------------------------------------------------------
    def _score(self, inst: InstrumentCost, free: np.ndarray) -> np.ndarray:
        """Value (len(free),) of measuring with ``inst`` at each of the ``free`` candidates."""
        raise NotImplementedError

    def _condition(self, u: np.ndarray, inst: InstrumentCost) -> None:
        """``inst`` is (or will be) measured at unit position ``u``: a model that learns from
        positions alone updates here."""

    def _told(self, inst: InstrumentCost) -> None:
        """A value of ``inst`` was logged."""

    def _contenders(self, instrument: str | None) -> list[str]:
        """Which instruments ``ask`` compares: the one asked for, else every one."""
        return [instrument] if instrument else list(self.instruments)

    def _excluded(self, inst: InstrumentCost) -> np.ndarray:
        """Candidates ``inst`` must not be sent to: by default, its pending ones and those an
        operator excluded."""
        mine = [c for name, c in self.pending.values() if name == inst.name]
        return np.asarray(sorted(set(mine) | self.forbidden), int)

    def _trained_on(self) -> tuple[str, ...]:
        """Measurement ids the current model read (a decision's lineage)."""
        return tuple(self.log.ids)

    # -- shared machinery -------------------------------------------------------------------
    def _free(self, inst: InstrumentCost) -> np.ndarray:
        """Candidates ``inst`` may be sent to (not :meth:`_excluded`); an error when none is."""
        free = np.setdiff1d(np.arange(len(self.candidates)), self._excluded(inst))
        if len(free) == 0:
            raise RuntimeError(f"{self.name}: no free candidate left for {inst.name!r}")
        return free

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        free = self._free(inst)
        score = np.asarray(self._score(inst, free), float)
        best = int(np.argmax(score))
        return int(free[best]), float(score[best])

    def _pend(self, inst: InstrumentCost, cand: int, mid: str) -> None:
        self.pending[mid] = (inst.name, cand)
        self.visited[inst.name].add(cand)
        self._condition(self.unit[cand], inst)
        self.position[inst.name] = self.candidates[cand]

    def _suggest(
        self, inst: InstrumentCost, cand: int, value: float, reason: str, mid: str
    ) -> Suggestion:
        return Suggestion(
            instrument=inst.name,
            x=self.candidates[cand].copy(),
            measurement_id=mid,
            acquisition_value=float(value),
            policy=reason,
            model_version=self.model_version,
            trained_on=self._trained_on(),
            pending=tuple(self.pending),
            n_candidates=len(self.candidates),
        )

    def space_filling(self, inst: InstrumentCost, free: np.ndarray) -> int:
        """The free candidate farthest from everything measured or pending (any instrument);
        a random one when nothing is."""
        taken = set().union(*self.visited.values()) | {c for _, c in self.pending.values()}
        if not taken:
            return int(self.rng.choice(free))
        taken_u = self.unit[sorted(taken)]
        d = ((self.unit[free, None] - taken_u[None]) ** 2).sum(-1).min(1)
        return int(free[np.argmax(d)])


class RandomAgent(Agent):
    """Uniformly random positions (never a pending one): the floor any agent must beat."""

    name = "random"

    def _score(self, inst: InstrumentCost, free: np.ndarray) -> np.ndarray:
        pick = self.rng.choice(len(free))  # drawn before the value: the seeds' old streams
        score = np.full(len(free), -np.inf)
        score[pick] = self.rng.random()
        return score


class GridAgent(Agent):
    """A space-filling survey: farthest-point order over the candidates, per instrument,
    skipping what that instrument has already measured or been sent to (seeds, resume)."""

    name = "grid"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.order = farthest_point_order(self.unit)
        self.asked = dict.fromkeys(self.instruments, 0)

    def accept(self, s: Suggestion) -> Suggestion:
        self.asked[s.instrument] += 1
        return super().accept(s)

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        seen = self.visited[inst.name] | self.forbidden
        fresh = next((int(c) for c in self.order if int(c) not in seen), None)
        # once every candidate is done the survey starts over; when several instruments are
        # free, the one with the least done so far wins
        cand = (
            fresh if fresh is not None else int(self.order[self.asked[inst.name] % len(self.order)])
        )
        return cand, -float(len(seen))


def farthest_point_order(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Greedy farthest-point ordering: each next point is farthest from all chosen so far."""
    n = len(x)
    order = np.empty(n, dtype=int)
    dist = np.full(n, np.inf)
    cur = start
    for i in range(n):
        order[i] = cur
        dist = np.minimum(dist, ((x - x[cur]) ** 2).sum(1))
        dist[cur] = -1.0
        cur = int(np.argmax(dist))
    return order
