"""``coorch agent serve``: run one instrument agent (twin or replay) in the foreground.

The lead CLI mounts :data:`agent_app` as ``coorch agent``. Tokens are read from files, never
from the command line, so they do not show up in ``ps`` or shell history.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
import uvicorn

from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.replay import ReplayDriver
from coorch.instrument_agents.server import create_app
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


@agent_app.callback()
def _group() -> None:
    """Keep ``serve`` a sub-command even while it is the only one."""


@agent_app.command()
def serve(
    instrument: Instrument = typer.Option(Instrument.afm, help="which twin to run"),
    library: Library = typer.Option(Library.smbfo, help="virtual library under the twin"),
    port: int = typer.Option(8101, help="TCP port (0 picks a free one)"),
    host: str = typer.Option("127.0.0.1", help="bind address; loopback unless you mean it"),
    token_file: Path = typer.Option(
        ..., exists=True, dir_okay=False, help="file holding the control bearer token"
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
    app = create_app(
        driver, token=_read_token(token_file) or "", readonly_token=_read_token(readonly_token_file)
    )
    typer.echo(f"serving {driver.describe().id} on http://{host}:{port} (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # pragma: no cover
    agent_app()
