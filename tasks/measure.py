"""The ``measure`` task: move, measure, store. One Prefect task run per measurement.

The decision arrives made and stored (the flow decides: :meth:`coorch.tasks.runtime.Campaign.
decide`), so no agent crosses into a task. Moving, measuring and storing are one task run, not
three, because each Prefect task run costs ~11 ms (DESIGN.md, "Performance") against an
orchestration budget of 25 ms per measurement, and because a measurement is only *done* once
it is safe in the store. The request id (the decision's ``measurement_id``) makes a retried or
resumed acquisition return the first result, and the store is idempotent by the same id, so a
crash anywhere in here loses nothing and duplicates nothing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from coorch.instrument_agents.client import InstrumentClient
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore


def acquire(client: InstrumentClient, decision: Decision, store: CampaignStore) -> Measurement:
    """Measure ``decision`` on ``client``'s instrument and append it to ``store``."""
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


@task(
    name="measure",
    cache_policy=NO_CACHE,
    task_run_name="measure-{decision.instrument}-{decision.measurement_id}",
)
def measure(client: InstrumentClient, store: CampaignStore, decision: Decision) -> Measurement:
    """Carry out ``decision``: move, measure, store. The task run is named after the request
    id, so the Prefect UI leads from a run to its measurement and decision in the store."""
    return acquire(client, decision, store)
