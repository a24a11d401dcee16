"""``coorch steer``: an operator reviews and redirects a running campaign.

Every command names the campaign's flow run (id or name, from ``coorch steer list``) and needs
its steering token (``--token-file``, or ``COORCH_STEER_TOKEN_FILE``); the operator's name
(``--operator``, default ``$USER``) is recorded with what they did, in the campaign's decisions
table. Talks to the Prefect server named by ``PREFECT_API_URL``.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

steer_app = typer.Typer(
    help="Review and redirect running campaigns (steering mode, token, operator).",
    no_args_is_help=True,
)

TOKEN = typer.Option(
    ...,
    "--token-file",
    envvar="COORCH_STEER_TOKEN_FILE",
    exists=True,
    dir_okay=False,
    help="file holding the campaign's steering token",
)
OPERATOR = typer.Option(None, help="your name, recorded with what you do (default: $USER)")
RUN = typer.Argument(..., help="the campaign's flow run id or name (coorch steer list)")


def _fail(message: str) -> None:
    typer.echo(f"coorch steer: {message}", err=True)
    raise typer.Exit(2)


def _token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        _fail(f"{path} is empty: it must hold the campaign's steering token")
    return token


def _operator(name: str | None) -> str:
    return name or getpass.getuser()


def _send(run: str, token_file: Path, operator: str | None, action: str, **fields) -> None:
    from coorch.flows.steer_client import SteeringError, find_run, send

    try:
        r = find_run(run)
        send(r, _token(token_file), _operator(operator), action, **fields)
    except SteeringError as exc:
        _fail(str(exc))
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    typer.echo(f"{r.name}: {action} {shown} sent; it applies at the next decision")


def _answer(run: str, token_file: Path, operator: str | None, of: str | None, **fields):
    from coorch.flows.steer_client import SteeringError, answer, find_run

    try:
        p = answer(find_run(run), _token(token_file), _operator(operator), of=of, **fields)
    except SteeringError as exc:
        _fail(str(exc))
    d = p.decision
    typer.echo(
        f"{fields['action']}: {d['instrument']} at ({d['library_x']:.2f}, {d['library_y']:.2f}) mm"
        f" (proposal {d['measurement_id']})"
    )


@steer_app.command("list")
def list_command() -> None:
    """Steerable campaigns that are running, and their proposals waiting for an answer."""
    from coorch.flows.steer_client import open_proposals, steerable_runs

    table = Table("run", "name", "proposal", "instrument", "x (mm)", "y (mm)", "value", "since")
    for r in steerable_runs():
        proposals = open_proposals(r)
        if not proposals:
            table.add_row(str(r.id), r.name, "-", "", "", "", "", "")
        for p in proposals:
            d = p.decision
            table.add_row(
                str(r.id),
                r.name,
                d["measurement_id"],
                d["instrument"],
                f"{d['library_x']:.2f}",
                f"{d['library_y']:.2f}",
                f"{d['acquisition_value']:.3g}" if d["acquisition_value"] is not None else "-",
                p.review_run.start_time.strftime("%H:%M:%S") if p.review_run.start_time else "",
            )
    Console().print(table)


@steer_app.command("accept")
def accept_command(
    run: str = RUN,
    instrument: str | None = typer.Option(None, help="the proposal of this instrument"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Accept the oldest waiting proposal (of INSTRUMENT)."""
    _answer(run, token_file, operator, instrument, action="accept")


@steer_app.command("override")
def override_command(
    run: str = RUN,
    x: float = typer.Option(..., help="library x to measure instead (mm)"),
    y: float = typer.Option(..., help="library y to measure instead (mm)"),
    instrument: str | None = typer.Option(None, help="the proposal of this instrument"),
    to: str | None = typer.Option(None, help="send another instrument there instead"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Measure at (X, Y) instead of the oldest waiting proposal (of INSTRUMENT)."""
    _answer(run, token_file, operator, instrument, action="override", x=x, y=y, instrument=to)


@steer_app.command("vote")
def vote_command(
    run: str = RUN,
    measurement: str = typer.Argument(..., help="the measurement id scored"),
    score: float = typer.Argument(..., min=1, max=5, help="1 (bad) to 5 (good)"),
    comment: str | None = typer.Option(None, help="why"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Score a measured signal; the agent then also seeks what scores high (votes mode)."""
    _send(
        run, token_file, operator, "vote", measurement_id=measurement, score=score, comment=comment
    )


@steer_app.command("exclude")
def exclude_command(
    run: str = RUN,
    box: tuple[float, float, float, float] = typer.Option(..., help="X0 X1 Y0 Y1 (mm)"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Never measure inside a box of the library again."""
    _send(run, token_file, operator, "exclude", box=list(box))


@steer_app.command("seed")
def seed_command(
    run: str = RUN,
    instrument: str = typer.Option(..., help="the instrument to send"),
    x: float = typer.Option(..., help="library x (mm)"),
    y: float = typer.Option(..., help="library y (mm)"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Add a point to measure next with INSTRUMENT."""
    _send(run, token_file, operator, "seed", instrument=instrument, x=x, y=y)


@steer_app.command("weight")
def weight_command(
    run: str = RUN,
    instrument: str = typer.Argument(...),
    value: float = typer.Argument(..., min=0, help="1: as much as any other map"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """How much INSTRUMENT's map matters to the agent."""
    _send(run, token_file, operator, "weight", instrument=instrument, value=value)


@steer_app.command("budget")
def budget_command(
    run: str = RUN,
    value: int = typer.Argument(..., min=0, help="measurements in all"),
    instrument: str | None = typer.Option(None, help="only this instrument's"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """Change the campaign's budget (or one instrument's), in measurements."""
    _send(run, token_file, operator, "budget", instrument=instrument, value=value)


@steer_app.command("hold")
def hold_command(
    run: str = RUN,
    instrument: str = typer.Argument(...),
    token_file: Path = TOKEN,
    operator=OPERATOR,
) -> None:
    """Give INSTRUMENT no new work until released (what it is doing finishes)."""
    _send(run, token_file, operator, "hold", instrument=instrument)


@steer_app.command("release")
def release_command(
    run: str = RUN,
    instrument: str = typer.Argument(...),
    token_file: Path = TOKEN,
    operator=OPERATOR,
) -> None:
    """Let a held INSTRUMENT work again."""
    _send(run, token_file, operator, "release", instrument=instrument)


@steer_app.command("explore")
def explore_command(
    run: str = RUN,
    value: float = typer.Argument(..., min=0, max=1, help="0: knowledge everywhere; 1: voted"),
    token_file: Path = TOKEN,
    operator: str | None = OPERATOR,
) -> None:
    """The weight between exploring the library and what operators voted for."""
    _send(run, token_file, operator, "explore", value=value)


@steer_app.command("stop")
def stop_command(run: str = RUN, token_file: Path = TOKEN, operator: str | None = OPERATOR) -> None:
    """Stop the campaign: no new decisions; what is being measured is stored; it ends Completed."""
    _send(run, token_file, operator, "stop")
