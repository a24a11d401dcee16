"""A campaign's Dask scheduler serves its health and metrics on a free loopback port, not 8787.

distributed starts a scheduler's HTTP server even with the dashboard off, on port 8787 unless
told otherwise; a second cluster on the same host (two campaigns, two campaigns on one HPC login
node, two test processes) then warns that the port is taken. Real LocalCluster, real SLURM-style
cluster object (nothing submitted), a real socket holding 8787.
"""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import Iterator

import pytest

from coorch.deployments.config import DaskConfig
from coorch.deployments.dask_cluster import dask_client

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def port_8787_taken() -> Iterator[None]:
    """8787 in use for the duration: held here, or already held by someone else."""
    sock = socket.socket()
    try:
        with contextlib.suppress(OSError):  # already taken: as good
            sock.bind(("127.0.0.1", 8787))
            sock.listen()
        yield
    finally:
        sock.close()


def test_a_local_cluster_serves_http_on_a_free_loopback_port_without_a_warning():
    with port_8787_taken(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask_client(DaskConfig(n_workers=1, threads_per_worker=1)) as client:
            http = client.cluster.scheduler.http_server
            assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3
    assert http.address == "127.0.0.1" and http.port != 8787
    assert not [w for w in caught if "already in use" in str(w.message)]


def test_a_jobqueue_scheduler_is_told_the_same():
    from coorch.deployments.jobqueue_cluster import cluster_kwargs

    options = cluster_kwargs(DaskConfig(jobqueue="slurm", cores=1, memory="1GB"), {})
    assert options["scheduler_options"]["dashboard"] is False
    assert options["scheduler_options"]["dashboard_address"] == "127.0.0.1:0"
