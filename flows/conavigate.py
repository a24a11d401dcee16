"""The co-navigation flow: the experiment and a physics simulation steer each other.

Story: everything the co-orchestration flow does (:mod:`coorch.flows.coorchestrate`: connect,
resume, keep every instrument busy, steer, report), and beside it the theory
(:mod:`coorch.tasks.theory`): simulations of the Landau-Ginzburg-Devonshire ferroelectric run
as Dask tasks on a cluster of their own (a LocalCluster, or an HPC queue through dask-jobqueue)
while the instruments measure; a surrogate over (composition, parameters) and the instrument's
measurements give a posterior over the simulator's parameters and a discrepancy map over the
library; the next simulations go where that posterior is least settled, and the instrument the
theory predicts is sent where plausible parameters disagree. The run's result carries the
posterior over time (mean and 90 % credible interval after every fit) and where theory and
experiment disagree; the store carries every simulation with the decision that asked for it.
"""

from __future__ import annotations

from prefect import flow

from coorch.deployments.theory_config import ConavigateSpec
from coorch.flows.coorchestrate import run_campaign, run_name
from coorch.tasks.setup import CampaignResult


@flow(name="conavigate", flow_run_name=run_name, log_prints=False)
def conavigate(spec: ConavigateSpec) -> CampaignResult:
    """Run (or resume) the co-navigated campaign ``spec`` until its measurement budget is
    spent; the simulations in flight then land (or are dropped) and the theory is fitted on
    everything."""
    return run_campaign(spec)
