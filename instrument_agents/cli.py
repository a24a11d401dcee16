"""``coorch agent serve``: run one instrument agent (twin or replay) in the foreground.

The lead CLI mounts :data:`agent_app` as ``coorch agent``. Tokens are read from files, never
from the command line, so they do not show up in ``ps`` or shell history. Control tokens are
named (one per campaign or person, :mod:`~coorch.instrument_agents.tokens`) so that the lease
records who took it; lease events are always logged (by token name, never the token or the
lease id), whatever ``--log-level`` says about uvicorn's own messages.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import typer
import uvicorn

from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.replay import ReplayDriver
from coorch.instrument_agents.server import create_app
from coorch.instrument_agents.tokens import read_token_file, read_tokens_file
from coorch.instrument_agents.twins import make_twin

agent_app = typer.Typer(
    help="Instrument agents: digital twins and replay over HTTP.", no_args_is_help=True
)


class Instrument(StrEnum):
    afm = "afm"
    raman = "raman"
    wds = "wds"
    stem = "stem"


class Library(StrEnum):
    smbfo = "smbfo"
    alscbn = "alscbn"


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise typer.BadParameter(f"token file {path} is empty")
    return token


def _control_tokens(token_files: list[Path], tokens_file: Path | None) -> dict[str, str]:
    """``{name: token}`` from every ``--token-file`` (named by file stem) and ``--tokens-file``."""
    named: dict[str, str] = {}
    try:
        pairs = [read_token_file(p) for p in token_files]
        if tokens_file is not None:
            pairs += list(read_tokens_file(tokens_file).items())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for name, token in pairs:
        if name in named:
            raise typer.BadParameter(f"two control tokens are named {name!r}")
        named[name] = token
    if not named:
        raise typer.BadParameter("give --token-file or --tokens-file: control needs a token")
    return named


def _log_lease_events(level: str) -> None:
    """Lease events (who took, released, lost the instrument) at INFO on stderr: the audit
    trail of an instrument PC. uvicorn's own loggers keep ``level``."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asked = logging.getLevelName(level.upper())  # an int for a known level name
    own = min(logging.INFO, asked) if isinstance(asked, int) else logging.INFO
    logging.getLogger("coorch.instrument_agents").setLevel(own)


@agent_app.callback()
def _group() -> None:
    """Keep ``serve`` a sub-command even while it is the only one."""


@agent_app.command()
def serve(
    instrument: Instrument = typer.Option(Instrument.afm, help="which twin to run"),
    library: Library = typer.Option(Library.smbfo, help="virtual library under the twin"),
    port: int = typer.Option(8101, help="TCP port (0 picks a free one)"),
    host: str = typer.Option("127.0.0.1", help="bind address; loopback unless you mean it"),
    token_file: list[Path] = typer.Option(
        [],
        exists=True,
        dir_okay=False,
        help="file holding one control token, named after the file (repeatable)",
    ),
    tokens_file: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="file of control tokens, one 'name: token' per line (per campaign or person)",
    ),
    readonly_token_file: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="file holding a read-only token"
    ),
    time_scale: float = typer.Option(1.0, help="instrument seconds -> wall seconds factor"),
    fault_rate: float = typer.Option(0.0, help="probability of a fault per measurement"),
    seed: int = typer.Option(0, help="seed of noise, drift and faults"),
    replay: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="serve this xarray dataset instead of a twin"
    ),
    replay_noise: float = typer.Option(0.0, help="Gaussian noise added to replayed values"),
    log_level: str = typer.Option("warning"),
) -> None:
    """Serve one instrument agent until Ctrl-C."""
    driver: Driver
    if replay is not None:
        driver = ReplayDriver(replay, noise=replay_noise, seed=seed)
    else:
        driver = make_twin(
            instrument.value, library.value, seed=seed, time_scale=time_scale, fault_rate=fault_rate
        )
    tokens = _control_tokens(token_file, tokens_file)
    _log_lease_events(log_level)
    try:
        app = create_app(driver, tokens=tokens, readonly_token=_read_token(readonly_token_file))
    except ValueError as exc:  # e.g. a bad token name, or the read-only token is a control one
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        f"serving {driver.describe().id} on http://{host}:{port} for control tokens "
        f"{sorted(tokens)} (Ctrl-C to stop)"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # pragma: no cover
    agent_app()
