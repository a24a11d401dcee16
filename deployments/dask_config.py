"""Where a campaign's Dask work runs: a LocalCluster, an existing scheduler, or an HPC queue.

Its own module so that the cluster factory (:mod:`coorch.deployments.dask_cluster`) and every
spec that names a cluster (a campaign's fits, a co-navigation's simulations) share one shape.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from coorch.deployments.steering_config import STRICT


class DaskConfig(BaseModel):
    """Where models are fitted: a LocalCluster by default, an existing scheduler, or jobqueue."""

    model_config = STRICT

    address: str | None = Field(None, description="scheduler address; None starts a LocalCluster")
    n_workers: int = Field(1, ge=1, le=1024)
    threads_per_worker: int = Field(1, ge=1, le=256)
    jobqueue: str | None = Field(None, description="e.g. 'slurm': dask-jobqueue cluster class")
    jobqueue_kwargs: dict = Field(default_factory=dict)
