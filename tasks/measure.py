"""The ``measure`` task: decide (when needed), move, measure, persist. One Prefect task run per
measurement.

Deciding, moving, measuring and storing are one task run, not four, because each Prefect task
run costs ~11 ms (DESIGN.md, "Performance") against an orchestration budget of 25 ms per
measurement, and because a measurement is only *done* once it is safe in the store. The decision
is stored before the instrument moves; the request id (the decision's ``measurement_id``) makes a
retried or resumed acquisition return the first result, and the store is idempotent by the same
id, so a crash anywhere in here loses nothing and duplicates nothing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from coorch.instrument_agents.client import InstrumentClient
from coorch.models.policies import BasePolicy
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.decide import decide


def acquire(client: InstrumentClient, decision: Decision, store: CampaignStore) -> Measurement:
    """Measure ``decision`` on ``client``'s instrument and append it to ``store``."""
    client.move(decision.library_x, decision.library_y, frame="library")
    m = client.measure(decision.modality, request_id=decision.measurement_id)
    m = m.model_copy(update={"decision_id": decision.decision_id,
                             "flow_run_id": decision.flow_run_id,
                             "campaign": decision.campaign})
    store.append_measurement(m)
    return m


@task(name="measure", cache_policy=NO_CACHE, task_run_name="measure-{instrument}")
def measure(client: InstrumentClient, store: CampaignStore, instrument: str, *,
            decision: Decision | None = None, policy: BasePolicy | None = None,
            modality: str = "", campaign: str = "", flow_run_id: str | None = None
            ) -> tuple[Decision, Measurement]:
    """Carry out ``decision``, or first ask ``policy`` for ``instrument``'s next one."""
    if decision is None:
        decision = decide(policy, instrument, modality, store, campaign=campaign,
                          flow_run_id=flow_run_id, task_run_id=str(task_run.id))
    return decision, acquire(client, decision, store)
