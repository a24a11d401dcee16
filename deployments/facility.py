"""The embedded facility behind ``coorch up`` / ``coorch down``: a Prefect server with its UI,
twin instrument agents and a Dask cluster, kept alive by one detached supervisor process.

This module is the facility's front door: every public name is importable from here, and
``python -m coorch.deployments.facility serve`` runs the supervisor (what ``up`` starts). The
work is in modules with one job each:

- :mod:`~coorch.deployments.facility_config`: :class:`FacilityConfig`, what ``up`` runs;
- :mod:`~coorch.deployments.facility_state`: the facility's folder (its files, the lock that
  says whether a supervisor holds it, ``facility.json``) and the errors ``up``/``down`` raise;
- :mod:`~coorch.deployments.facility_services`: starting the twins, the Prefect server, Dask
  and ``campaign.yaml``;
- :mod:`~coorch.deployments.facility_supervisor`: the detached process that owns them all;
- :mod:`~coorch.deployments.facility_control`: ``up``, ``down`` and ``facility()``.

Those modules never import this one: run with ``-m`` it is ``__main__``, and importing it back
would load it a second time under its own name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coorch.deployments.facility_config import FacilityConfig, TwinConfig
from coorch.deployments.facility_control import down, facility, up
from coorch.deployments.facility_services import campaign_spec
from coorch.deployments.facility_state import (
    STARTUP_ERROR,
    AgentInfo,
    FacilityError,
    FacilityInfo,
    FacilityInputError,
    read_info,
    running_pid,
)
from coorch.deployments.facility_supervisor import serve

__all__ = [
    "STARTUP_ERROR",
    "AgentInfo",
    "FacilityConfig",
    "FacilityError",
    "FacilityInfo",
    "FacilityInputError",
    "TwinConfig",
    "campaign_spec",
    "down",
    "facility",
    "main",
    "read_info",
    "running_pid",
    "serve",
    "up",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m coorch.deployments.facility serve --dir D [--config F] [--port P]``."""
    parser = argparse.ArgumentParser(prog="python -m coorch.deployments.facility")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the supervisor in the foreground (coorch up runs it)")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--config", type=Path, default=None)
    s.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    return serve(args.dir, args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
