"""The ``coorch`` command line: demo, instrument agents, the store, benchmarks.

Errors a user can fix (a spec that is not YAML, a field pydantic refuses, a token file that is
missing, a store folder that cannot be written) end a command with one or two lines naming the
file and the field, and exit status 2, before any Prefect server starts: see
:func:`user_errors`, :func:`load_spec`, :func:`check_local_files`. A campaign that fails while
it runs ends with one line and status 1 (:func:`flow_failures`). ``coorch --debug`` shows the
full tracebacks instead.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    M = TypeVar("M", bound=BaseModel)

app = typer.Typer(
    help="Co-orchestration of characterisation instruments.",
    no_args_is_help=True,
    add_completion=False,
)

#: Set (to "1" or "0") by ``--debug``, read by :func:`debugging`. An environment variable rather
#: than a module global so that it holds whichever copy of this module reads it (``python -m
#: coorch.cli`` runs it as ``__main__`` while sub-commands import ``coorch.cli``) and in the
#: processes the command starts.
DEBUG_ENV = "COORCH_DEBUG"


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


def debugging() -> bool:
    """Whether ``--debug`` (or ``COORCH_DEBUG``, spelt as click reads a flag) asked for
    tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "t", "yes", "y", "on"}


def fail(command: str, lines: list[str], status: int = 2) -> NoReturn:
    """Print at most two ``coorch COMMAND: ...`` lines on stderr and exit with ``status``."""
    for line in lines[:2]:
        typer.echo(f"coorch {command}: {line}", err=True)
    raise typer.Exit(status)


def error_lines(exc: BaseException) -> list[str]:
    """What to tell a user about ``exc``: its message's lines, a validation error's fields
    (:func:`validation_lines`), an OS error as ``file: reason`` (not ``[Errno 2] ...``)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return validation_lines(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return [f"{exc.filename}: {exc.strerror}"]
    return [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]


@contextlib.contextmanager
def user_errors(command: str) -> Iterator[None]:
    """Errors the user can fix become one or two lines on stderr and exit status 2.

    ``ValueError`` (``pydantic.ValidationError`` is one), ``OSError`` (``FileNotFoundError``
    is one) and ``yaml.YAMLError`` raised in the block are what a bad spec or a missing file
    raises; their traceback is 30 lines of typer, pydantic and this module that hide the one
    naming the field, so ``--debug`` alone shows it. Status 2 is click's usage-error status:
    scripts tell a bad input from a failed campaign (1). Anything else propagates untouched.
    """
    import yaml

    try:
        yield
    except (ValueError, OSError, yaml.YAMLError) as exc:
        if debugging():
            raise
        fail(command, error_lines(exc))


def validation_lines(
    exc: ValidationError, model: type[BaseModel] | None = None, most: int = 2
) -> list[str]:
    """``field.path: message`` for the first ``most`` errors of ``exc``, the fields of the
    others counted on the last line: pydantic's own text takes four lines per error and shows
    the whole input. ``model`` (the validated class) lets an unknown key suggest a known one."""
    errors = exc.errors(include_url=False, include_input=False)
    # Unknown keys first: a misspelt key ("tokenfile") explains the "missing" that follows.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    lines = [_error_line(e, model) for e in errors[:most]]
    rest = [_path(e["loc"]) or "(top level)" for e in errors[most:]]
    if rest:
        lines[-1] += f" (and {len(rest)} more: {', '.join(rest)})"
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _error_line(error: Any, model: type[BaseModel] | None) -> str:
    """One pydantic error as ``path: message``, with the messages a spec author meets most
    often (missing field, unknown key, a validator's ValueError) said plainly."""
    path = _path(error["loc"])
    if error["type"] == "extra_forbidden":
        message = _unknown_key(error["loc"], model)
    elif error["type"] == "missing":
        message = "missing (a required field)"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def _unknown_key(loc: tuple[int | str, ...], model: type[BaseModel] | None) -> str:
    """Name the known key closest to a misspelt one, else list the keys known there."""
    known = _fields_at(model, loc[:-1]) if model is not None else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known: {', '.join(known)}" if known else "unknown key"


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the (nested) model found at ``loc`` in ``model``, or []."""
    for part in loc:
        if isinstance(part, int):  # an item of a list of models
            continue
        field = model.model_fields.get(part)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in a field's annotation (``M``, ``list[M]``, ``M | None``)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (inner := _model_in(arg)) is not None:
            return inner
    return None


def load_spec(path: Path, model: type[M]) -> M:
    """The spec in ``path`` (YAML, or JSON, which YAML reads) validated as ``model``.

    Every way the file can be wrong is raised as an ``OSError`` (cannot read it) or a
    ``ValueError`` whose lines name the file and then the field (for :func:`user_errors`); the
    original error is chained, for ``--debug``. The flow validates its parameters again, but
    only once a Prefect server has started: this is the check a user waits seconds for.
    """
    import yaml
    from pydantic import ValidationError

    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not YAML or JSON (not text: {exc.reason})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise ValueError(f"{path}: a {model.__name__} is a mapping of fields, this is {what}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, model)
        raise ValueError("\n".join(f"{path}: {line}" for line in lines)) from exc


def _yaml_problem(exc: Exception) -> str:
    """A YAML error's problem and where (1-based line and column), on one line."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def check_local_files(spec_file: Path, tokens: dict[str, Path | None], store: str) -> None:
    """Raise a ``ValueError`` naming the field when a token file (``tokens``: field path ->
    file, None for an unset one) cannot be read or is empty, or when a local ``store`` (the
    field ``store``) cannot be written.

    Checked by the command, not by the spec's model: the flow may run on a worker where paths
    differ, so a spec stays valid without its files; but ``coorch run`` runs the flow here, and
    a missing token otherwise shows only after a Prefect server has started (about 20 s).
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
    _check_store_writable(spec_file, store)


def _check_store_writable(spec_file: Path, store: str) -> None:
    """A local store, or the nearest folder that exists above a new one, takes a file.

    Probed by creating (and at once removing) an anonymous file rather than by ``os.access``,
    which answers yes to root on a read-only mount. Remote (fsspec URL) stores are left to the
    flow: their credentials are configured where it runs.
    """
    local = store.removeprefix("file://")
    if "://" in local:
        return
    folder = Path(local)
    while not folder.exists():  # ends: "." (relative) or "/" exists
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{spec_file}: store: cannot write {store}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{spec_file}: store: cannot write {store} in {folder}: {reason}") from exc


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


bench_app = typer.Typer(help="Benchmarks (figures go to docs/benchmarks.md).", no_args_is_help=True)
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
    from coorch.demo import run_demo

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
    """Sub-commands owned by the layers and the benchmarks."""
    from coorch.benchmarks.decision import bench_decision_command
    from coorch.benchmarks.efficiency import bench_efficiency_command
    from coorch.benchmarks.ingest import bench_ingest_command
    from coorch.benchmarks.overhead import bench_overhead_command
    from coorch.benchmarks.pareto import bench_pareto_command
    from coorch.facility_cli import down_command, up_command
    from coorch.im2spec_cli import im2spec_command
    from coorch.instrument_agents.cli import agent_app
    from coorch.report_cli import report_command
    from coorch.steer_cli import steer_app
    from coorch.storage.cli import store_app

    app.add_typer(agent_app, name="agent", help="Instrument agents (serve a twin or replay).")
    app.add_typer(store_app, name="store", help="Inspect, verify and export stores.")
    app.add_typer(steer_app, name="steer", help="Review and redirect running campaigns.")
    app.command("im2spec")(im2spec_command)
    app.command("report")(report_command)
    app.command("up")(up_command)
    app.command("down")(down_command)
    bench_app.command("decision")(bench_decision_command)
    bench_app.command("efficiency")(bench_efficiency_command)
    bench_app.command("overhead")(bench_overhead_command)
    bench_app.command("pareto")(bench_pareto_command)
    bench_app.command("ingest")(bench_ingest_command)


_mount()

if __name__ == "__main__":
    app()
