"""The ``coorch`` command line: demo, instrument agents, the store, benchmarks.

Errors a user can fix (a spec that is not YAML, a field pydantic refuses, a token file that is
missing, a store folder that cannot be written) end a command with one or two lines naming the
file and the field, and exit status 2, before any Prefect server starts: see
:func:`user_errors`, :func:`load_spec` (in :mod:`coorch.errors`, shared with the store's
commands) and :func:`check_local_files`; click's usage errors say the same in two lines
(:class:`~coorch.errors.ShortErrorsGroup`). A campaign that fails while it runs ends with one
line and status 1 (:func:`flow_failures`). ``coorch --debug`` shows the full tracebacks instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from coorch.errors import (
    DEBUG_ENV,
    Context,
    ShortErrorsGroup,
    check_writable,
    debugging,
    error_lines,
    fail,
    load_spec,
    user_errors,
    validation_lines,
)

__all__ = [
    "app",
    "check_local_files",
    "debugging",
    "error_lines",
    "fail",
    "flow_failures",
    "load_spec",
    "user_errors",
    "validation_lines",
]

app = typer.Typer(
    help="Co-orchestration of characterisation instruments.",
    no_args_is_help=True,
    add_completion=False,
    cls=ShortErrorsGroup,
)


@app.callback()
def main(
    facility: Path = typer.Option(
        Path("runs/facility"),
        envvar="COORCH_FACILITY",
        help="a facility started by `coorch up`: its Prefect server is used when "
        "PREFECT_API_URL is not set",
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help="show the full traceback of an error instead of its one- or two-line summary",
    ),
) -> None:
    """Co-orchestration of characterisation instruments."""
    os.environ[DEBUG_ENV] = "1" if debug else "0"
    info = facility / "facility.json"
    if "PREFECT_API_URL" not in os.environ and info.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.environ["PREFECT_API_URL"] = json.loads(info.read_text())["prefect_api_url"]


def check_local_files(spec_file: Path, tokens: dict[str, Path | None], store: str) -> None:
    """Raise a ``ValueError`` naming the field when a token file (``tokens``: field path ->
    file, None for an unset one) cannot be read or is empty, or when a local ``store`` (the
    field ``store``) cannot be written.

    Checked by the command, not by the spec's model: the flow may run on a worker where paths
    differ, so a spec stays valid without its files; but ``coorch run`` runs the flow here, and
    a missing token otherwise shows only after a Prefect server has started (about 20 s).
    Remote (fsspec URL) stores are left to the flow: their credentials are configured where it
    runs.
    """
    for field, token_file in tokens.items():
        if token_file is None:
            continue
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ValueError(f"{spec_file}: {field}: cannot read {token_file}: {reason}") from exc
        if not token:
            raise ValueError(f"{spec_file}: {field}: {token_file} is empty (it holds the token)")
    local = store.removeprefix("file://")
    if "://" not in local:
        check_writable(local, f"{spec_file}: store", folder=True)


class _WithoutTraceback(logging.Formatter):
    """A handler's formatter, minus the traceback of the records it formats."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # The record is shared with the other handlers (the API's keeps the traceback).
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@contextlib.contextmanager
def flow_failures(command: str, campaign: str) -> Iterator[None]:
    """A campaign that fails while it runs (an agent refusing connections, a worker gone) ends
    the command with one line naming the error, a hint on the second, and exit status 1.

    Prefect logs the failure with its traceback on the console, then the exception reaches
    typer, which prints it again: a hundred lines for "connection refused". Here Prefect's
    console lines keep their messages but lose their tracebacks (its API handler, hence the
    UI, keeps them) and the exception is summed up. ``--debug``: everything, as before.
    Imports Prefect (whose logging is set up on import), so enter it after validation.
    """
    if debugging():
        yield
        return
    import prefect.main  # noqa: F401 - sets up Prefect's logging, whose console is quieted
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = [
        h
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    formatters = [h.formatter for h in consoles]
    for h in consoles:
        h.setFormatter(_WithoutTraceback(h.formatter))
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the run: one line, not a traceback
        what = f"{type(exc).__name__}: {error_lines(exc)[0]}"
        hint = (
            f"(coorch --debug {command} ... shows the traceback; a re-run resumes from the store)"
        )
        fail(command, [f"campaign {campaign!r} failed: {what}", hint], status=1)
    finally:
        for h, f in zip(consoles, formatters, strict=True):
            h.setFormatter(f)


#: ``coorch bench NAME`` -> (module, command function): imported only when a benchmark runs.
BENCHMARKS = {
    "decision": ("coorch.benchmarks.decision", "bench_decision_command"),
    "efficiency": ("coorch.benchmarks.efficiency", "bench_efficiency_command"),
    "defaults": ("coorch.benchmarks.defaults_cv", "bench_defaults_command"),
    "overhead": ("coorch.benchmarks.overhead", "bench_overhead_command"),
    "pareto": ("coorch.benchmarks.pareto", "bench_pareto_command"),
    "ingest": ("coorch.benchmarks.ingest", "bench_ingest_command"),
    "load": ("coorch.benchmarks.load", "bench_load_command"),
    "theory": ("coorch.benchmarks.theory", "bench_theory_command"),
    "theory-flow": ("coorch.benchmarks.theory_flow", "bench_theory_flow_command"),
    "theory-calibration": (
        "coorch.benchmarks.theory_calibration",
        "bench_theory_calibration_command",
    ),
}


class _LazyGroup(ShortErrorsGroup):
    """A command group whose commands are imported when one is asked for (its list, its help,
    a run), not when ``coorch`` starts: the benchmarks import torch and gpytorch, the agents
    FastAPI, the store xarray and zarr, seconds that every other command (``coorch run`` on a
    bad spec) would otherwise pay before it says a word. ``coorch --help`` shows the group's
    own help only, so it imports nothing either."""

    def _commands(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self) -> None:
        if not self.commands:
            self.commands.update(self._commands())

    def list_commands(self, ctx: Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: Context, cmd_name: str) -> Any:
        self._load()
        return super().get_command(ctx, cmd_name)


class _LazyBenchmarks(_LazyGroup):
    """``coorch bench``: :data:`BENCHMARKS`, each with :func:`_argument_errors`."""

    def _commands(self) -> dict[str, Any]:
        import importlib

        bench = typer.Typer(cls=ShortErrorsGroup)
        for name, (module, function) in BENCHMARKS.items():
            command = getattr(importlib.import_module(module), function)
            bench.command(name)(_argument_errors(f"bench {name}", command))
        return dict(typer.main.get_group(bench).commands)


class _LazyAgents(_LazyGroup):
    """``coorch agent``: the commands of ``coorch.instrument_agents.cli.agent_app`` (whose
    group callback takes no options: only its commands are needed)."""

    def _commands(self) -> dict[str, Any]:
        from coorch.instrument_agents.cli import agent_app

        return dict(typer.main.get_group(agent_app).commands)


class _LazyStore(_LazyGroup):
    """``coorch store``: the commands of ``coorch.storage.cli.store_app`` (importing the
    storage package loads xarray, zarr and pandas)."""

    def _commands(self) -> dict[str, Any]:
        from coorch.storage.cli import store_app

        return dict(typer.main.get_group(store_app).commands)


class _LazyFacility(_LazyGroup):
    """``coorch facility``: the plan (``coorch.facility_plan``) and the simulated day
    (``coorch.benchmarks.facility_day``, which starts twins, Dask and a Prefect server)."""

    def _commands(self) -> dict[str, Any]:
        from coorch.benchmarks.facility_day import simulate_command
        from coorch.facility_plan import plan_command

        facility = typer.Typer(cls=ShortErrorsGroup)
        facility.command("plan")(_argument_errors("facility plan", plan_command))
        facility.command("simulate")(_argument_errors("facility simulate", simulate_command))
        return dict(typer.main.get_group(facility).commands)


def _argument_errors(command: str, function: Callable[..., None]) -> Callable[..., None]:
    """``function`` (a typer command) with :func:`user_errors`: a benchmark's argument it cannot
    use (a dataset file that is missing, an unknown library, a count of zero) ends in two lines
    and status 2, as every command's does. Its signature is ``function``'s (typer reads it
    through ``functools.wraps``)."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> None:
        with user_errors(command, also=(KeyError,)):
            function(*args, **kwargs)

    return guarded


bench_app = typer.Typer(
    help="Benchmarks (figures go to docs/benchmarks.md).",
    no_args_is_help=True,
    cls=_LazyBenchmarks,
)
app.add_typer(bench_app, name="bench")


@app.command()
def demo(
    run_dir: Path = typer.Option(
        Path("runs/demo"), help="where the store, report and Prefect state go"
    ),
    budget: int = typer.Option(40, min=12, help="measurements per campaign, seeds included"),
    seed: int = typer.Option(0, help="seed of the twins and the policies"),
    facility: Path | None = typer.Option(
        None,
        "--against",
        help="run on the facility of `coorch up` in this folder (its twins, Dask, Prefect "
        "server: the runs stay in its UI) instead of starting the demo's own",
    ),
) -> None:
    """Run a co-orchestrated PFM + Raman + WDS + STEM campaign on digital twins, then the same
    budget at random positions, and report both against the ground truth."""
    from coorch.demo import check_arguments, run_demo

    with user_errors("demo"):
        check_arguments(run_dir, facility)
    run_demo(run_dir, budget=budget, seed=seed, facility=facility)


@app.command()
def run(
    spec_file: Path = typer.Argument(..., help="campaign spec, YAML or JSON (a CampaignSpec)"),
) -> None:
    """Run, or resume from its store, the campaign in SPEC_FILE against running agents.

    Uses the Prefect server named by PREFECT_API_URL (Prefect's local ephemeral server when
    unset). Safe to re-run after a crash: the store says what is done. The spec, its token
    files and its store folder are checked before Prefect is imported.
    """
    with user_errors("run"):
        from coorch.deployments.config import CampaignSpec

        spec = load_spec(spec_file, CampaignSpec)
        tokens = {
            f"instruments.{k}.token_file": i.token_file for k, i in enumerate(spec.instruments)
        }
        tokens["steering.token_file"] = spec.steering.token_file
        check_local_files(spec_file, tokens, spec.store)
    with flow_failures("run", spec.name):
        from coorch.flows.coorchestrate import coorchestrate

        result = coorchestrate(spec)
    typer.echo(f"{spec.name}: {result.n_measurements} measurements in {result.store}")


def _mount() -> None:
    """Sub-commands owned by the layers (the agents', the store's and the benchmarks' are
    imported when used: :class:`_LazyGroup`)."""
    from coorch.campaign_cli import campaign_app
    from coorch.facility_cli import down_command, up_command
    from coorch.im2spec_cli import im2spec_command
    from coorch.report_cli import report_command
    from coorch.steer_cli import steer_app

    agents = typer.Typer(no_args_is_help=True, cls=_LazyAgents)
    app.add_typer(agents, name="agent", help="Instrument agents (serve a twin or replay).")
    stores = typer.Typer(no_args_is_help=True, cls=_LazyStore)
    app.add_typer(stores, name="store", help="Inspect, verify and export stores.")
    app.add_typer(steer_app, name="steer", help="Review and redirect running campaigns.")
    app.add_typer(campaign_app, name="campaign", help="Submit and follow a facility's campaigns.")
    facility = typer.Typer(no_args_is_help=True, cls=_LazyFacility)
    app.add_typer(
        facility, name="facility", help="A facility's schedule: plan it, simulate a day of it."
    )
    app.command("im2spec")(im2spec_command)
    app.command("report")(report_command)
    app.command("up")(up_command)
    app.command("down")(down_command)


_mount()

if __name__ == "__main__":
    app()
