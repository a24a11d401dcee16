"""``coorch campaign``: submit campaigns to a facility and follow, cancel and resume them.

A submitted campaign is a flow run of the facility's ``coorchestrate`` deployment, run by the
process worker ``coorch up`` started (:mod:`coorch.deployments.work_pool`). Submission refuses
what would fail later out of sight, before anything moves
(:mod:`coorch.deployments.campaign_checks`); the rest is Prefect's
(:mod:`coorch.deployments.campaign_runs`). Every command finds the facility by ``--dir``
(default ``runs/facility``, or ``$COORCH_FACILITY``) and talks to its server, whatever
``PREFECT_API_URL`` says. Errors are one or two ``coorch campaign CMD: ...`` lines, status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from coorch.errors import ShortErrorsGroup, fail, load_spec, user_errors

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from coorch.deployments.config import CampaignSpec
    from coorch.deployments.facility_state import FacilityInfo

campaign_app = typer.Typer(
    help="Submit campaigns to the facility of `coorch up`; list, show, cancel, resume them.",
    no_args_is_help=True,
    cls=ShortErrorsGroup,
)

DIR = typer.Option(
    Path("runs/facility"),
    "--dir",
    envvar="COORCH_FACILITY",
    help="the facility's folder (coorch up --dir)",
)
RUN = typer.Argument(..., help="a campaign's flow run: its id, an id prefix, or its name")


def _facility(command: str, run_dir: Path) -> FacilityInfo:
    """The running facility in ``run_dir``, or two lines saying how to start one."""
    from coorch.deployments.facility_state import read_info

    with user_errors(command):
        info = read_info(run_dir)
    if info is None:
        fail(
            command, [f"no facility is up in {run_dir}", f"(start one: coorch up --dir {run_dir})"]
        )
    return info


@campaign_app.command("submit")
def submit_command(
    spec_file: Path = typer.Argument(..., help="campaign spec, YAML or JSON (a CampaignSpec)"),
    run_dir: Path = DIR,
) -> None:
    """Submit the campaign in SPEC_FILE to the facility's worker.

    It shares the instruments with the facility's other campaigns (submit sets its `facility`
    field). Refused before anything moves: instruments the facility lacks, a store that cannot
    be written, a deadline past, a sample or a store another campaign holds."""
    from coorch.deployments import campaign_checks as checks
    from coorch.deployments import campaign_runs as runs
    from coorch.deployments.config import CampaignSpec

    command = "campaign submit"
    with user_errors(command):
        spec = load_spec(spec_file, CampaignSpec)
    info = _facility(command, run_dir)
    with user_errors(command):
        spec = checks.prepare(spec, str(spec_file), info, run_dir)
        with runs.facility_client(info, run_dir) as client:
            deployment = runs.deployment_id(client, run_dir)
            everything = [(r, runs.spec_of(r)) for r in runs.campaign_runs(client, deployment)]
            known = [(runs.label(r), s) for r, s in everything if s is not None]
            active = [(runs.label(r), s) for r, s in everything if s and runs.is_active(r)]
            checks.conflicts(spec, str(spec_file), active, known)
            run = runs.create_run(client, deployment, {"spec": spec.model_dump(mode="json")}, spec)
    typer.echo(
        f"submitted campaign {spec.name!r} (owner {spec.owner}, priority {spec.priority}): "
        f"flow run {run.id} ({run.name})"
    )
    _follow_lines(info, run, run_dir)


def _where(run_dir: Path) -> str:
    """``--dir`` as a command line repeats it (nothing for the default)."""
    return "" if run_dir == Path("runs/facility") else f" --dir {run_dir}"


def _follow_lines(info: FacilityInfo, run: FlowRun, run_dir: Path) -> None:
    """How to follow a run just created: ``show``, the UI, the worker's log, ``cancel``."""
    from coorch.deployments.campaign_runs import short

    where = _where(run_dir)
    typer.echo(f"  follow it: coorch campaign show {short(run)}{where}")
    typer.echo(f"             {info.ui_url}/runs/flow-run/{run.id}")
    typer.echo(f"  its log:   {info.worker_log}")
    typer.echo(f"  cancel it: coorch campaign cancel {short(run)}{where}")


@campaign_app.command("list")
def list_command(run_dir: Path = DIR) -> None:
    """The facility's campaigns (flow runs of its coorchestrate deployment), newest first."""
    from coorch.deployments import campaign_runs as runs

    command = "campaign list"
    info = _facility(command, run_dir)
    with user_errors(command), runs.facility_client(info, run_dir) as client:
        found = runs.campaign_runs(client, runs.deployment_id(client, run_dir))
    if not found:
        typer.echo(f"no campaign submitted to the facility in {run_dir} yet")
        return
    table = Table("name", "id", "owner", "priority", "state", "measured", "created")
    counts: dict[str, int | None] = {}
    for run in found:
        spec = runs.spec_of(run)
        if spec is not None and spec.store not in counts:
            counts[spec.store] = runs.measured(spec.store)
        count = counts.get(spec.store) if spec is not None else None
        table.add_row(
            run.name,
            runs.short(run),
            spec.owner if spec else "?",
            str(spec.priority) if spec else "?",
            runs.state_name(run),
            "" if count is None else str(count),
            run.created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if run.created else "",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)  # piped: not 80 wide


def _summary(spec: CampaignSpec) -> list[tuple[str, str]]:
    """A spec's fields worth a line in ``show``."""
    samples = spec.samples()
    instruments = ", ".join(f"{i.name} ({i.modality}, {samples[i.name]})" for i in spec.instruments)
    return [
        ("campaign", f"{spec.name} (owner {spec.owner}, priority {spec.priority})"),
        ("policy", f"{spec.policy}, budget {spec.budget} measurements"),
        ("budget_s", "none" if spec.budget_s is None else f"{spec.budget_s:g} instrument-s"),
        ("deadline", "none" if spec.deadline is None else spec.deadline.isoformat()),
        ("instruments", instruments),
        ("store", spec.store),
        ("facility", spec.facility or "none (instruments held for the whole run)"),
    ]


@campaign_app.command("show")
def show_command(run: str = RUN, run_dir: Path = DIR) -> None:
    """One campaign: spec, state, store, measurements, instrument time used."""
    from coorch.deployments import campaign_runs as runs

    command = "campaign show"
    info = _facility(command, run_dir)
    with user_errors(command), runs.facility_client(info, run_dir) as client:
        deployment = runs.deployment_id(client, run_dir)
        found = runs.find_run(client, deployment, run)
        spec = runs.spec_of(found)
        history = [
            r
            for r in runs.campaign_runs(client, deployment)
            if spec is not None and (s := runs.spec_of(r)) is not None and s.name == spec.name
        ]
    typer.echo(f"{found.name}  (flow run {found.id})")
    message = " ".join((found.state.message or "").split()) if found.state is not None else ""
    message = message if len(message) <= 160 else f"{message[:157]}..."
    typer.echo(f"  {'state':<12} {runs.state_name(found)}{f': {message}' if message else ''}")
    if spec is None:
        typer.echo("  (its spec is not one this code reads)")
        return
    for key, value in _summary(spec):
        typer.echo(f"  {key:<12} {value}")
    count = runs.measured(spec.store)
    typer.echo(f"  {'measured':<12} {'?' if count is None else count} of {spec.budget}")
    typer.echo(f"  {'used':<12} {_usage(spec)}")
    if len(history) > 1:
        shown = ", ".join(f"{runs.short(r)} {runs.state_name(r)}" for r in history)
        typer.echo(f"  {'runs':<12} {shown} (newest first)")
    typer.echo(f"  {'UI':<12} {info.ui_url}/runs/flow-run/{found.id}")


def _usage(spec: CampaignSpec) -> str:
    """Instrument-seconds the facility's arbiter has charged the campaign (its database only:
    no server asked)."""
    if spec.facility is None:
        return "not metered (no facility database)"
    from coorch.deployments.arbiter import Arbiter

    try:
        with Arbiter(spec.facility) as arbiter:
            return f"{arbiter.used(spec.name):.1f} instrument-s (the arbiter's charges)"
    except Exception as exc:  # noqa: BLE001 - a summary line, not the command's purpose
        return f"unknown ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"


@campaign_app.command("cancel")
def cancel_command(
    run: str = RUN,
    run_dir: Path = DIR,
    wait: float = typer.Option(
        30.0, "--wait", min=0, help="seconds to wait for the worker to stop it (0: do not)"
    ),
) -> None:
    """Cancel a campaign; what it stored stays.

    Its worker stops the flow run (Prefect's Cancelling state); `coorch campaign resume`
    continues it from its store."""
    from coorch.deployments import campaign_runs as runs

    command = "campaign cancel"
    info = _facility(command, run_dir)
    with user_errors(command), runs.facility_client(info, run_dir) as client:
        found = runs.find_run(client, runs.deployment_id(client, run_dir), run)
        if not runs.is_active(found):
            typer.echo(f"{runs.label(found)} is {runs.state_name(found)}: nothing to cancel")
            return
        state = runs.cancel_run(client, found)
        if state != "Cancelled" and wait > 0:
            state = runs.state_name(runs.wait_final(client, found, wait))
    if state in ("Cancelling",):
        typer.echo(f"cancelling {runs.label(found)}: its worker stops it shortly")
    else:
        typer.echo(f"{runs.label(found)}: {state}")
    typer.echo(f"  resume it: coorch campaign resume {runs.short(found)}{_where(run_dir)}")


@campaign_app.command("resume")
def resume_command(run: str = RUN, run_dir: Path = DIR) -> None:
    """Run a campaign again from its store (nothing measured twice).

    A new flow run with the same parameters; refused while the campaign is still active."""
    from coorch.deployments import campaign_checks as checks
    from coorch.deployments import campaign_runs as runs

    command = "campaign resume"
    info = _facility(command, run_dir)
    with user_errors(command), runs.facility_client(info, run_dir) as client:
        deployment = runs.deployment_id(client, run_dir)
        found = runs.find_run(client, deployment, run)
        spec = runs.spec_of(found)
        if spec is None:
            raise runs.CampaignRunError(f"{runs.label(found)}: its spec is not one this code reads")
        where = f"run {runs.short(found)}"
        active = runs.campaign_runs(client, deployment, active_only=True)
        mine = [r for r in active if (s := runs.spec_of(r)) is not None and s.name == spec.name]
        if mine:
            raise runs.CampaignRunError(
                f"campaign {spec.name!r} is still active as run {runs.label(mine[0])} "
                f"({runs.state_name(mine[0])}): cancel it first, or wait for it to end"
            )
        spec, moved = checks.refresh(spec, info)
        checks.prepare(spec, where, info, run_dir)  # still the facility's, deadline ahead
        parameters = {**found.parameters, "spec": spec.model_dump(mode="json")}
        new = runs.create_run(client, deployment, parameters if moved else found.parameters, spec)
    typer.echo(
        f"resumed campaign {spec.name!r} from its store {spec.store}: flow run {new.id} "
        f"({new.name})"
    )
    if moved:
        typer.echo(f"  the facility restarted since: {'; '.join(moved)}")
    _follow_lines(info, new, run_dir)
