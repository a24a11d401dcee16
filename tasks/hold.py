"""How a campaign holds its instruments while it measures: for the whole run, or one
measurement at a time on a facility's shared instruments.

:class:`Exclusive` is the laptop and single-campaign case: the campaign took every agent's lease
and loaded its sample when it connected (:class:`~coorch.tasks.setup.Instruments`), so a
measurement only checks the budget and deadline (:class:`~coorch.tasks.meter.Meter`).

:class:`Shared` is the facility case (``spec.facility`` set): other campaigns use the same
instruments, so each measurement waits for its turn (:class:`~coorch.deployments.arbiter.
Arbiter`: a Prefect global concurrency limit per instrument, leased, in an order the arbiter
keeps), then takes the agent's lease, moves its sample in if another campaign's is loaded
(recorded in the facility's :class:`~coorch.storage.samples.SampleRegistry`), moves, measures,
stores, and gives the agent's lease and the turn back, charging the owner the instrument-seconds
used. Nothing is held between measurements, so campaigns interleave and one waiting for an
instrument keeps its others busy; nothing is held while an operator reviews a proposal, since
the turn is only asked for once the decision is made.

The agent's lease is short (:data:`AGENT_LEASE_S`, below the slot's lease) so that when a
holder dies, its agent lease lapses before its Prefect slot comes back to the next campaign.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from coorch.instrument_agents.client import InstrumentClient
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.meter import Ended, Meter

if TYPE_CHECKING:  # only a facility campaign builds them (tasks/setup.py)
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import SampleRegistry

#: Seconds an agent lease taken for one measurement outlives the holder's last call.
AGENT_LEASE_S = 30.0

LOG = logging.getLogger(__name__)


def acquire(client: InstrumentClient, decision: Decision, store: CampaignStore) -> Measurement:
    """Move, measure ``decision`` on ``client``'s instrument, and append it to ``store``."""
    client.move(decision.library_x, decision.library_y, frame="library")
    m = client.measure(decision.modality, request_id=decision.measurement_id)
    m = m.model_copy(
        update={
            "decision_id": decision.decision_id,
            "flow_run_id": decision.flow_run_id,
            "campaign": decision.campaign,
        }
    )
    store.append_measurement(m)
    return m


def _position(status: Mapping) -> tuple[float, float]:
    return float(status["library_x"]), float(status["library_y"])


class Exclusive:
    """The campaign holds its instruments for the whole run (see the module docstring)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self._here: dict[str, tuple[float, float]] = {}

    def resumed(self, done: Sequence[Measurement]) -> None:
        """Count what a resumed campaign measured before: each measurement's time and the
        moves between them, per instrument in the order they were made (sample loads are
        not recorded, so not counted)."""
        last: dict[str, tuple[float, float]] = {}
        for m in sorted(done, key=lambda m: m.started):
            times, here = self.meter.times.get(m.instrument), last.get(m.instrument)
            if times is not None and m.modality in times.cost_s:
                there = (m.library_x, m.library_y)
                self.meter.spent_s += times.expected(m.modality, here, there, False)
                last[m.instrument] = self._here[m.instrument] = there

    def measure(
        self, client: InstrumentClient, store: CampaignStore, decision: Decision
    ) -> Measurement:
        if not self.meter.limited:  # nothing to check: no extra call on the hot path
            return acquire(client, decision, store)
        name = decision.instrument
        if name not in self._here:  # nobody else moves it: ask once
            self._here[name] = _position(client.status())
        there = (decision.library_x, decision.library_y)
        seconds = self.meter.times[name].expected(decision.modality, self._here[name], there, False)
        self.meter.reserve(name, seconds)
        try:
            m = acquire(client, decision, store)
        except BaseException:
            self.meter.settle(seconds, spent=False)
            raise
        self.meter.settle(seconds, spent=True)
        self._here[name] = (m.library_x, m.library_y)
        return m


class Shared:
    """One measurement at a time on a facility's shared instruments (module docstring)."""

    def __init__(
        self,
        meter: Meter,
        arbiter: Arbiter,
        registry: SampleRegistry,
        *,
        campaign: str,
        owner: str,
        priority: int,
        samples: Mapping[str, str],
    ) -> None:
        self.meter, self.arbiter, self.registry = meter, arbiter, registry
        self.campaign, self.owner, self.priority = campaign, owner, priority
        self.samples = dict(samples)
        self.stop = threading.Event()  # set when the run ends: waiting turns give up

    def resumed(self, done: Sequence[Measurement]) -> None:
        """Nothing to count: the arbiter's ledger has what this campaign spent before."""

    def measure(
        self, client: InstrumentClient, store: CampaignStore, decision: Decision
    ) -> Measurement:
        name, sample = decision.instrument, self.samples[decision.instrument]
        loaded = self.registry.get(sample).location == name
        deadline = self.meter.deadline
        try:
            turn = self.arbiter.wait(
                name,
                campaign=self.campaign,
                owner=self.owner,
                priority=self.priority,
                loaded=loaded,
                stop=self.stop,
                # no turn is worth waiting for past the deadline
                timeout_s=None if deadline is None else deadline.timestamp() - time.time(),
            )
        except TimeoutError:
            raise Ended(f"deadline {deadline.isoformat()} passed waiting for {name}") from None
        with turn:  # an exception releases the turn, charging nothing
            status = client.status()
            load = status.get("sample") != sample
            there = (decision.library_x, decision.library_y)
            times = self.meter.times[name]
            seconds = times.expected(decision.modality, _position(status), there, load)
            self.meter.reserve(name, seconds)
            try:
                m = self._measure(client, store, decision, sample, load, times.load_s)
            except BaseException:
                self.meter.settle(seconds, spent=False)
                raise
            self.meter.settle(seconds, spent=True)
            turn.release(seconds)
        return m

    def _measure(
        self,
        client: InstrumentClient,
        store: CampaignStore,
        decision: Decision,
        sample: str,
        load: bool,
        load_s: float,
    ) -> Measurement:
        """Inside a turn: the agent's lease, the sample, the measurement, the lease back."""
        client.acquire_lease(ttl_s=AGENT_LEASE_S)
        try:
            if load:
                self.registry.transfer(
                    sample, decision.instrument, campaign=self.campaign, cost_s=load_s
                )
                client.load_sample(sample)
            return acquire(client, decision, store)
        finally:
            try:
                client.release_lease()
            except Exception as exc:  # lapses by itself within AGENT_LEASE_S
                LOG.warning("%s: lease not given back (%s)", decision.instrument, exc)
