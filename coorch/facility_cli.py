"""``coorch up`` / ``coorch down``: the embedded facility in the background.

Kept out of ``coorch/cli.py`` (which mounts :func:`up_command` and :func:`down_command`) so the
commands sit beside nothing but their output; the work is in
:mod:`coorch.deployments.facility`, imported lazily so ``coorch --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from coorch.errors import debugging, fail, user_errors

_DIR_HELP = "the facility's folder: state, logs, token, facility.json, campaign.yaml"


def _failed(command: str, exc: Exception) -> NoReturn:
    """A facility that did not start or stop (status 1), one line; ``--debug``: the traceback.
    What the user got wrong (a ``FacilityInputError`` is a ``ValueError``) is left to
    :func:`~coorch.errors.user_errors`: two lines, status 2."""
    if debugging():
        raise exc
    fail(command, [" ".join(str(exc).split())], status=1)


def up_command(
    run_dir: Path = typer.Option(Path("runs/facility"), "--dir", help=_DIR_HELP),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="FACILITY.yaml (a FacilityConfig); default: the demo's four twins on smbfo",
    ),
    port: int = typer.Option(
        4200, "--port", min=1, max=65535, help="port of the Prefect API and UI (127.0.0.1)"
    ),
) -> None:
    """Start a local Prefect server with its UI, twin instrument agents and a Dask cluster in
    the background; return once all answer. Stop them with `coorch down`."""
    from coorch.deployments.facility import FacilityError, FacilityInputError, up

    with user_errors("up"):
        try:
            info, already = up(run_dir, config=config, port=port)
        except FacilityInputError:
            raise
        except FacilityError as exc:
            _failed("up", exc)
    state = "already up" if already else "up"
    typer.echo(f"facility {state} in {run_dir} (supervisor pid {info.supervisor_pid})")
    typer.echo(f"  Prefect UI  {info.ui_url}")
    for a in info.instruments:
        typer.echo(f"  agent       {a.name:<12} {a.modality:<11} {a.url}")
    typer.echo(f"  Dask        {info.dask_address}")
    typer.echo(f"  log         {info.log_file}")
    typer.echo("Submit campaigns to its worker (the UI shows them under Runs, flow coorchestrate);")
    typer.echo("they share the instruments one measurement at a time, by priority:")
    typer.echo(f"  coorch campaign submit {info.campaign_spec} --dir {run_dir}")
    typer.echo(f"  coorch campaign list --dir {run_dir}")
    typer.echo(f"  coorch facility plan --dir {run_dir}")
    typer.echo(f"Steer it (token {info.steer_token_file}):")
    typer.echo("  coorch steer list")
    typer.echo("  coorch steer override RUN --x 2.5 --y 1 --token-file " + info.steer_token_file)
    typer.echo(
        "(coorch commands use a facility in runs/facility, or in $COORCH_FACILITY, without "
        "the export)"
    )
    typer.echo(f"Stop it: coorch down --dir {run_dir}")


def down_command(
    run_dir: Path = typer.Option(Path("runs/facility"), "--dir", help=_DIR_HELP),
) -> None:
    """Stop the facility started by `coorch up` in --dir: every agent, Dask, the Prefect
    server (its state stays in <dir>/.prefect for the next `up`)."""
    from coorch.deployments.facility import FacilityError, FacilityInputError, down

    with user_errors("down"):
        try:
            stopped = down(run_dir)
        except FacilityInputError:
            raise
        except FacilityError as exc:
            _failed("down", exc)
    if stopped is None:
        typer.echo(f"no facility running in {run_dir}")
        return
    info, pid = stopped
    if info is None:
        typer.echo(f"stopped a facility that was still starting (supervisor pid {pid})")
        return
    names = ", ".join(a.name for a in info.instruments)
    typer.echo(
        f"stopped: Prefect server and UI {info.ui_url}, agents {names}, "
        f"Dask {info.dask_address} (supervisor pid {pid})"
    )
