"""Session fixtures shared by the flow tests: one Prefect test server per session."""

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


@pytest.fixture(scope="session")
def prefect_server():
    """A real (temporary, SQLite) Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
