"""Dask cluster factories: a LocalCluster by default, an HPC cluster through dask-jobqueue.

Models are fitted here, never in the flow's thread (DESIGN.md, "Performance"). The same
:class:`~coorch.deployments.config.DaskConfig` shape serves a laptop and a facility.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator

from distributed import Client, LocalCluster

from coorch.deployments.config import DaskConfig


@contextlib.contextmanager
def dask_client(config: DaskConfig | None = None) -> Iterator[Client]:
    """A connected client for ``config``; clusters it started are closed on exit."""
    config = config or DaskConfig()
    logging.getLogger("distributed").setLevel(logging.WARNING)  # per-connection chatter
    if config.address:
        with Client(config.address) as client:
            yield client
        return
    if config.jobqueue:
        try:
            jq = importlib.import_module("dask_jobqueue")
        except ImportError as exc:
            raise RuntimeError("jobqueue clusters need `pip install dask-jobqueue`") from exc
        cls = getattr(jq, f"{config.jobqueue.upper()}Cluster")
        cluster = cls(**config.jobqueue_kwargs)
        cluster.scale(jobs=config.n_workers)
    else:
        cluster = LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=40,
        )
    with cluster, Client(cluster) as client:
        yield client
