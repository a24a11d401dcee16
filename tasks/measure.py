"""The ``measure`` task: move, measure, store. One Prefect task run per measurement.

The decision arrives made and stored (the flow decides: :meth:`coorch.tasks.runtime.Campaign.
decide`), so no agent crosses into a task. Moving, measuring and storing are one task run, not
three, because each Prefect task run costs ~11 ms (DESIGN.md, "Performance") against an
orchestration budget of 25 ms per measurement, and because a measurement is only *done* once
it is safe in the store. The request id (the decision's ``measurement_id``) makes a retried or
resumed acquisition return the first result, and the store is idempotent by the same id, so a
crash anywhere in here loses nothing and duplicates nothing.

How the instrument is held around it (for the whole run, or one turn per measurement on a
facility's shared instruments) is the ``hold``'s business (:mod:`coorch.tasks.hold`).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from coorch.instrument_agents.client import InstrumentClient
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.hold import Exclusive, Shared, acquire
from coorch.tasks.meter import Ended


@task(
    name="measure",
    cache_policy=NO_CACHE,
    task_run_name="measure-{decision.instrument}-{decision.measurement_id}",
)
def measure(
    client: InstrumentClient,
    store: CampaignStore,
    decision: Decision,
    hold: Exclusive | Shared | None = None,
) -> Measurement | Ended:
    """Carry out ``decision``: move, measure, store (``hold``: with its budget checks, or in a
    turn on a shared instrument). The task run is named after the request id, so the Prefect
    UI leads from a run to its measurement and decision in the store.

    A measurement the budget or the deadline does not allow is no failure: the task returns
    the :class:`~coorch.tasks.meter.Ended` that says why, having moved nothing."""
    if hold is None:
        return acquire(client, decision, store)
    try:
        return hold.measure(client, store, decision)
    except Ended as exc:
        return exc


def opaque(*args: Any) -> tuple[quote, ...]:
    """``args`` wrapped so that Prefect hands them to :func:`measure` without looking inside.

    Before every task run Prefect walks each argument, element by element, for upstream
    futures and states. A decision's ``trained_on`` listed every measurement the model had
    read until it became a chain (``coorch.storage.training_sets``), so that walk grew with
    the campaign: about 14 ms per measurement on average over 400 on the machine of
    2026-12-03 (py-spy; docs/benchmarks.md, "Orchestration overhead"). The chain keeps the
    list short; the quoting keeps the walk off every argument. None of :func:`measure`'s
    arguments can hold a future; pass ``measure(*opaque(client, store, decision, hold))``."""
    return tuple(quote(a) for a in args)
