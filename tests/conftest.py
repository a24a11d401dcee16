"""Fixtures shared by the tests: one Prefect test server per session, twin agents, a fitted
two-task GP."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect's state must not leak into ~/.prefect, and its logs must stay quiet in test output.
_PREFECT_HOME = tempfile.mkdtemp(prefix="coorch-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("PREFECT_API_URL", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a slow test run first. ``make test`` gives two xdist workers one file at a
    time (``--dist loadfile``); xdist's default order, most tests first, started the 2-4 minute
    single-test files last, and the suite ended with one worker idle while the other ran them.
    Longest first is the schedule that leaves the least idle tail (with --no-loadscope-reorder,
    which keeps this order)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: collection order within


@pytest.fixture(scope="session")
def prefect_server():
    """A real (temporary, SQLite) Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module", autouse=True)
def _close_module_http_client(request):
    """Close a test module's shared loopback client (its ``HTTP``, an ``httpx.Client``) when
    the module is done: its pooled connections would otherwise be left for the interpreter to
    find open at exit (a ``ResourceWarning``)."""
    yield
    import httpx

    client = getattr(request.module, "HTTP", None)
    if isinstance(client, httpx.Client):
        client.close()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A PFM and a Raman twin served over loopback HTTP, as campaign instrument configs."""
    from coorch.deployments.config import InstrumentConfig
    from coorch.instrument_agents.launch import start_twin

    token = "flow-test-token"
    token_file = tmp_path_factory.mktemp("tokens") / "agent.token"
    token_file.write_text(token)
    agents = [start_twin("afm", token=token, seed=1), start_twin("raman", token=token, seed=2)]
    cfgs = [
        InstrumentConfig(
            name=a.driver.describe().id, kind=kind, modality=mod, url=a.url, token_file=token_file
        )
        for a, (kind, mod) in zip(agents, [("afm", "pfm_loop"), ("raman", "raman")], strict=True)
    ]
    yield cfgs
    for a in agents:
        a.stop()


@pytest.fixture(scope="session")
def fitted():
    """(x, task, y, fitted MTGP hyperparameters) of 40 noisy values of :func:`two_tasks`."""
    import numpy as np
    from shared_data import two_tasks

    from coorch.models.mtgp import fit_hyperparameters

    rng = np.random.default_rng(0)
    x = rng.random((40, 1))
    t = rng.integers(0, 2, 40)
    y = two_tasks(x[:, 0])[np.arange(40), t] + 0.02 * rng.standard_normal(40)
    return x, t, y, fit_hyperparameters(x, t, y, 2)
