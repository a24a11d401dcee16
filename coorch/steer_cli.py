"""``coorch steer``: an operator reviews and redirects a running campaign.

Every command names the campaign's flow run (id or name, from ``coorch steer list``) and needs
its steering token (``--token-file``, or ``COORCH_STEER_TOKEN_FILE``); the operator's name
(``--operator``, default ``$USER``) is recorded with what they did, in the campaign's decisions
table. Talks to the Prefect server named by ``PREFECT_API_URL``.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from coorch.errors import ShortErrorsGroup, debugging, error_lines, fail, user_errors

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

steer_app = typer.Typer(
    help="Review and redirect running campaigns (steering mode, token, operator).",
    no_args_is_help=True,
    cls=ShortErrorsGroup,
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


def _token(path: Path, command: str) -> str:
    """The steering token in ``path``, read before the Prefect server is asked anything."""
    with user_errors(command):
        try:
            token = path.read_text().strip()
        except UnicodeDecodeError:
            token = None
    if not token:
        what = "is empty" if token is not None else "is not text"
        fail(command, [f"--token-file {path} {what}: it must hold the campaign's steering token"])
    return token


def _operator(name: str | None) -> str:
    return name or getpass.getuser()


#: How a field sent to the campaign is spelt on the command line (for messages).
_SPELT = {"x": "--x", "y": "--y", "box": "--box", "value": "VALUE", "score": "SCORE"}


def _finite(command: str, fields: dict[str, Any]) -> None:
    """Refuse NaN and infinities (which click's FLOAT and FloatRange let through) before the
    token is read or the server asked: a campaign cannot measure at x=nan or weigh a map by
    inf."""
    for name, value in fields.items():
        numbers = value if isinstance(value, list) else [value]
        bad = [v for v in numbers if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            fail(command, [f"{_SPELT.get(name, name)}: {bad[0]} is not a finite number"])


@contextlib.contextmanager
def _server(command: str) -> Iterator[None]:
    """The Prefect server unreachable (nothing listens at PREFECT_API_URL, a wrong URL), or a
    steering error (unknown campaign, wrong token, nothing to answer): one or two lines,
    status 2, naming the server or the campaign."""
    import httpx

    from coorch.flows.steer_client import SteeringError

    try:
        yield
    except SteeringError as exc:
        if debugging():
            raise
        fail(command, error_lines(exc))
    except httpx.HTTPError as exc:
        if debugging():
            raise
        url = os.environ.get("PREFECT_API_URL") or "Prefect's local server"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fail(
            command,
            [
                f"cannot reach the Prefect server at {url}: {reason}",
                "(start one with coorch up, or set PREFECT_API_URL)",
            ],
        )


def _bounds(run: FlowRun) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The library bounds (mm) of the campaign ``run`` runs, from its spec parameter; None
    when the run's spec is not one this code reads (the campaign checks positions anyway)."""
    from pydantic import ValidationError

    from coorch.deployments.config import CampaignSpec

    try:
        return CampaignSpec.model_validate(run.parameters.get("spec")).library_extent()
    except (ValidationError, KeyError, TypeError, AttributeError):
        return None


def _check_inside(command: str, run: FlowRun, x: float, y: float) -> None:
    """Refuse a position (``--x``, ``--y``) outside the campaign's library before it is sent:
    the campaign would refuse it later, out of the operator's sight (in its log)."""
    bounds = _bounds(run)
    if bounds is None:
        return
    (x0, x1), (y0, y1) = bounds
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        fail(
            command,
            [
                f"--x {x:g} --y {y:g} is outside the library of campaign {run.name}: "
                f"x in [{x0:g}, {x1:g}] mm, y in [{y0:g}, {y1:g}] mm"
            ],
        )


def _send(run: str, token_file: Path, operator: str | None, action: str, **fields: Any) -> None:
    command = f"steer {action}"
    _finite(command, fields)
    token = _token(token_file, command)
    from coorch.flows.steer_client import find_run, send

    with _server(command):
        r = find_run(run)
        if action == "seed":
            _check_inside(command, r, fields["x"], fields["y"])
        send(r, token, _operator(operator), action, **fields)
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    typer.echo(f"{r.name}: {action} {shown} sent; it applies at the next decision")


def _answer(run: str, token_file: Path, operator: str | None, of: str | None, **fields: Any):
    command = f"steer {fields['action']}"
    _finite(command, fields)
    token = _token(token_file, command)
    from coorch.flows.steer_client import answer, find_run

    with _server(command):
        r = find_run(run)
        if fields["action"] == "override":
            _check_inside(command, r, fields["x"], fields["y"])
        p = answer(r, token, _operator(operator), of=of, **fields)
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
    with _server("steer list"):
        runs = [(r, open_proposals(r)) for r in steerable_runs()]
    for r, proposals in runs:
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
