"""``coorch agent serve``: run one instrument agent (twin or replay) in the foreground.

The lead CLI mounts :data:`agent_app` as ``coorch agent``. Tokens are read from files, never
from the command line, so they do not show up in ``ps`` or shell history. Control tokens are
named (one per campaign or person, :mod:`~coorch.instrument_agents.tokens`) so that the lease
records who took it; lease events are always logged (by token name, never the token or the
lease id), whatever ``--log-level`` says about uvicorn's own messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import NoReturn

import typer
import uvicorn

from coorch.instrument_agents.command_log import attach_command_log
from coorch.instrument_agents.libraries import LIBRARY_NAMES
from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.replay import ReplayDriver
from coorch.instrument_agents.server import create_app
from coorch.instrument_agents.tokens import read_token_file, read_tokens_file
from coorch.instrument_agents.twins import make_twin

#: The environment variable ``coorch --debug`` sets (read here: this layer may not import the
#: top-level CLI).
DEBUG_ENV = "COORCH_DEBUG"

agent_app = typer.Typer(
    help="Instrument agents: digital twins and replay over HTTP.", no_args_is_help=True
)


class Instrument(StrEnum):
    afm = "afm"
    raman = "raman"
    wds = "wds"
    stem = "stem"


Library = StrEnum("Library", {name: name for name in LIBRARY_NAMES})


def _fail(lines: list[str]) -> NoReturn:
    """At most two ``coorch agent serve: ...`` lines on stderr, exit status 2 (a usage error:
    scripts tell a bad input from an agent that failed while serving)."""
    for line in lines[:2]:
        typer.echo(f"coorch agent serve: {line}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A missing or empty token file, a bad token name, a port in use, an unwritable command
    log: one or two lines naming the file or option, not a traceback (``coorch --debug`` or
    ``COORCH_DEBUG=1`` shows it). Like ``coorch.cli.user_errors``, which this layer may not
    import."""
    try:
        yield
    except (ValueError, OSError) as exc:
        if os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "t", "yes", "y", "on"}:
            raise
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            _fail([f"{exc.filename}: {exc.strerror}"])
        _fail([line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__])


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def _control_tokens(token_files: list[Path], tokens_file: Path | None) -> dict[str, str]:
    """``{name: token}`` from every ``--token-file`` (named by file stem) and ``--tokens-file``."""
    named: dict[str, str] = {}
    pairs = [read_token_file(p) for p in token_files]
    if tokens_file is not None:
        pairs += list(read_tokens_file(tokens_file).items())
    for name, token in pairs:
        if name in named:
            raise ValueError(f"two control tokens are named {name!r}")
        named[name] = token
    if not named:
        raise ValueError("give --token-file or --tokens-file: control needs a token")
    return named


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is a one-line error, and with
    SO_REUSEADDR so that an agent restarted after a crash gets its port back at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    return sock


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
        [], help="file holding one control token, named after the file (repeatable)"
    ),
    tokens_file: Path | None = typer.Option(
        None, help="file of control tokens, one 'name: token' per line (per campaign or person)"
    ),
    readonly_token_file: Path | None = typer.Option(None, help="file holding a read-only token"),
    time_scale: float = typer.Option(1.0, help="instrument seconds -> wall seconds factor"),
    fault_rate: float = typer.Option(0.0, help="probability of a fault per measurement"),
    seed: int = typer.Option(0, help="seed of noise, drift and faults"),
    replay: Path | None = typer.Option(None, help="serve this xarray dataset instead of a twin"),
    replay_noise: float = typer.Option(0.0, help="Gaussian noise added to replayed values"),
    command_log: Path | None = typer.Option(
        None,
        help="append every control command to this JSON-lines file (fsynced); on start, "
        "measurements it holds answer their retries instead of measuring again",
    ),
    log_level: str = typer.Option("warning"),
) -> None:
    """Serve one instrument agent until Ctrl-C."""
    with _user_errors():
        tokens = _control_tokens(token_file, tokens_file)
        readonly = _read_token(readonly_token_file)
        driver: Driver
        if replay is not None:
            driver = ReplayDriver(replay, noise=replay_noise, seed=seed)
        else:
            driver = make_twin(
                instrument.value,
                library.value,
                seed=seed,
                time_scale=time_scale,
                fault_rate=fault_rate,
            )
        # ValueError: a bad token name, or the read-only token is also a control one
        app = create_app(driver, tokens=tokens, readonly_token=readonly)
        sock = _bind(host, port)
        log = attach_command_log(app, command_log) if command_log is not None else None
    _log_lease_events(log_level)
    bound = sock.getsockname()[1]
    typer.echo(
        f"serving {driver.describe().id} on http://{host}:{bound} for control tokens "
        f"{sorted(tokens)}" + (f", command log {command_log}" if log else "") + " (Ctrl-C to stop)"
    )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
    finally:
        sock.close()
        if log is not None:
            log.close()


if __name__ == "__main__":  # pragma: no cover
    agent_app()
