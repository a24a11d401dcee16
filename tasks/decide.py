"""Deciding: ask the policy, record why, before anything moves.

The decision is stored *before* its measurement is requested, so a crash between the two leaves a
decision without a measurement, which :func:`coorch.tasks.resume.resume` finds and re-issues with
the same request id (nothing lost, nothing measured twice). Called inside the ``measure`` task.
"""

from __future__ import annotations

from coorch.models.policies import BasePolicy, Suggestion
from coorch.records import Decision
from coorch.storage import CampaignStore


def to_decision(s: Suggestion, modality: str, *, campaign: str, flow_run_id: str | None,
                task_run_id: str | None = None, human_input: str | None = None) -> Decision:
    """A policy's suggestion as the stored record."""
    x = [float(v) for v in s.x] + [0.0]
    return Decision(measurement_id=s.measurement_id, instrument=s.instrument,
                    modality=modality, library_x=x[0], library_y=x[1], policy=s.policy,
                    model_version=s.model_version, trained_on=list(s.trained_on),
                    pending=list(s.pending), acquisition_value=s.acquisition_value,
                    n_candidates=s.n_candidates, human_input=human_input,
                    flow_run_id=flow_run_id, task_run_id=task_run_id, campaign=campaign)


def decide(policy: BasePolicy, instrument: str, modality: str, store: CampaignStore, *,
           campaign: str, flow_run_id: str | None, task_run_id: str | None = None) -> Decision:
    """The policy's next position for ``instrument``, recorded in the store."""
    d = to_decision(policy.ask(instrument), modality, campaign=campaign,
                    flow_run_id=flow_run_id, task_run_id=task_run_id)
    store.append_decision(d)
    return d
