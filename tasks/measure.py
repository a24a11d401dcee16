"""The ``acquire`` task: move, measure, persist. One Prefect task per measurement.

Moving, measuring and appending to the store are one task, not three, because every Prefect task
run costs ~11 ms (DESIGN.md, "Performance") and because a measurement is only *done* once it is
safe in the store: the request id (the decision's ``measurement_id``) makes a retried or resumed
acquisition return the first result, and the store is idempotent by the same id.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from coorch.instrument_agents.client import InstrumentClient
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore


@task(name="acquire", cache_policy=NO_CACHE, task_run_name="acquire-{decision.instrument}")
def acquire(client: InstrumentClient, decision: Decision, store: CampaignStore) -> Measurement:
    """Measure ``decision`` on ``client``'s instrument and append it to ``store``."""
    client.move(decision.library_x, decision.library_y, frame="library")
    m = client.measure(decision.modality, request_id=decision.measurement_id)
    m = m.model_copy(update={"decision_id": decision.decision_id,
                             "flow_run_id": decision.flow_run_id,
                             "campaign": decision.campaign})
    store.append_measurement(m)
    return m
