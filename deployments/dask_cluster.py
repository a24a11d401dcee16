"""Dask cluster factories: a LocalCluster by default, an HPC cluster through dask-jobqueue.

Models are fitted here, never in the flow's thread (DESIGN.md, "Performance"); a
co-navigation's simulations run here too, on a cluster of their own. The same
:class:`~coorch.deployments.dask_config.DaskConfig` shape serves a laptop, a facility's
scheduler and an HPC queue (:mod:`~coorch.deployments.jobqueue_cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster
from distributed.deploy import Cluster

from coorch.deployments.dask_config import SCHEDULER_HTTP, DaskConfig

log = logging.getLogger(__name__)

#: Seconds a cluster's close may take before the worker processes it started are SIGKILLed, and
#: before the close is given up. A close takes a few seconds (a nanny waits 4 s for its worker to
#: stop, then kills it); but a nanny whose replacement worker was SIGKILLed while it started has
#: two starts waiting for one worker, one of them forever, and its close waits for that start.
CLOSE_KILL_AFTER_S = 10.0
CLOSE_GIVE_UP_AFTER_S = 30.0
#: How long a LocalCluster waits for a nanny's worker to come back before it gives the nanny up.
LOCAL_LOST_WORKER_TIMEOUT = "1 day"


@contextlib.contextmanager
def dask_client(config: DaskConfig | None = None) -> Iterator[Client]:
    """A connected client for ``config``; clusters it started are closed on exit, the client
    first (:func:`close_cluster`: a close that cannot finish must not hold the campaign's end).

    A jobqueue cluster adapts between ``minimum_jobs`` and ``maximum_jobs`` jobs, or runs
    ``n_workers`` jobs; its jobs may still be queued when the client is yielded (tasks wait for
    a worker), and its close cancels them all."""
    config = config or DaskConfig()
    logging.getLogger("distributed").setLevel(logging.WARNING)  # per-connection chatter
    if config.address:
        with Client(config.address) as client:
            yield client
        return
    if config.jobqueue:
        from coorch.deployments.jobqueue_cluster import jobqueue_cluster, start_jobs

        cluster = jobqueue_cluster(config)
        with _closing(cluster) as client:  # its close cancels every job still queued or running
            start_jobs(cluster, config)
            yield client
        return
    # A LocalCluster's nannies restart their workers; by default the cluster also closes and
    # forgets a nanny whose worker has been away for 15 s (a restart slowed by a loaded machine,
    # or killed again while it starts), leaving the campaign's fits without a worker.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": LOCAL_LOST_WORKER_TIMEOUT}):
        cluster = LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            scheduler_kwargs=SCHEDULER_HTTP,
            host="127.0.0.1",
            silence_logs=40,
        )
        with _closing(cluster) as client:
            yield client


@contextlib.contextmanager
def _closing(cluster: Cluster) -> Iterator[Client]:
    """A client of ``cluster``; on exit the client is closed, then the cluster, bounded."""
    try:
        with Client(cluster) as client:
            yield client
    finally:
        close_cluster(cluster)


def close_cluster(
    cluster: Cluster,
    kill_after_s: float = CLOSE_KILL_AFTER_S,
    give_up_after_s: float = CLOSE_GIVE_UP_AFTER_S,
) -> None:
    """Close ``cluster``; past ``kill_after_s`` SIGKILL its local worker processes (their work
    is in by now, and a nanny stuck waiting for a worker's start lets go once it is dead); past
    ``give_up_after_s`` leave it with a warning (its processes end with this one)."""
    killer = threading.Timer(kill_after_s, kill_workers, args=(cluster,))
    killer.daemon = True
    killer.start()
    try:
        cluster.close(timeout=give_up_after_s)
    except TimeoutError:
        log.warning(
            "the Dask cluster did not close in %.0f s; left to end with us", give_up_after_s
        )
    finally:
        killer.cancel()


def kill_workers(cluster: Cluster) -> int:
    """SIGKILL the worker processes of ``cluster``'s nannies on this machine (a jobqueue
    cluster's workers are jobs elsewhere: none); returns how many were signalled."""
    pids = [getattr(w, "pid", None) for w in list(getattr(cluster, "workers", {}).values())]
    pids = [p for p in pids if isinstance(p, int) and p != os.getpid()]
    if pids:
        log.warning("the Dask cluster is slow to close: SIGKILL to its workers %s", pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
