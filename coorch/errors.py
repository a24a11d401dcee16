"""How every ``coorch`` command tells a user what they got wrong: one or two lines, status 2.

Errors a user can fix (a spec that is not YAML, a field pydantic refuses, a file that is
missing, a folder that cannot be written, an option click refuses) end a command with at most
two ``coorch COMMAND: ...`` lines on stderr naming the file and the field, and exit status 2
(click's usage-error status: scripts tell a bad input from a failed run, 1). ``coorch --debug``
(or ``COORCH_DEBUG=1``) shows the full traceback instead.

Kept in the lowest layer, beside ``records``, because every command group uses it: the CLI in
``coorch/cli.py`` and the store's own ``storage/cli.py`` (which may not import ``coorch.cli``,
a layer above it). Depends on typer, click, pydantic and PyYAML only.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 carries its own copy of click, whose exceptions its commands raise
    from typer._click import Context
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # older typer: click itself
    from click import Context
    from click.exceptions import NoArgsIsHelpError, UsageError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    M = TypeVar("M", bound=BaseModel)

#: Set (to "1" or "0") by ``coorch --debug``, read by :func:`debugging`. An environment
#: variable rather than a module global so that it holds whichever copy of the CLI module reads
#: it (``python -m coorch.cli`` runs it as ``__main__``) and in the processes a command starts.
DEBUG_ENV = "COORCH_DEBUG"


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
    (:func:`validation_lines`), an OS error as ``file: reason`` (not ``[Errno 2] ...``), a
    ``KeyError``'s message without the quotes ``str`` adds."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return validation_lines(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        name = os.fsdecode(exc.filename) if isinstance(exc.filename, bytes) else exc.filename
        return [f"{name}: {exc.strerror}"]
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return [str(exc.args[0])]
    return [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]


@contextlib.contextmanager
def user_errors(command: str, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Errors the user can fix become one or two lines on stderr and exit status 2.

    ``ValueError`` (``pydantic.ValidationError`` is one), ``OSError`` (``FileNotFoundError``
    is one) and ``yaml.YAMLError`` raised in the block are what a bad spec or a missing file
    raises (``also``: more, e.g. ``KeyError`` for an unknown library); their traceback is 30
    lines of typer, pydantic and coorch that hide the one naming the field, so ``--debug``
    alone shows it. Anything else propagates untouched.
    """
    import yaml

    try:
        yield
    except (ValueError, OSError, yaml.YAMLError, *also) as exc:
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


def check_writable(target: str | os.PathLike[str], what: str, *, folder: bool) -> None:
    """Raise a ``ValueError`` starting with ``what`` unless ``target`` could be written: a
    folder (``folder=True``: a store, a Parquet export) or a file (a report, a NetCDF export)
    that exists or that could be created, the nearest folder that exists above it taking a file.

    Probed by creating (and at once removing) an anonymous file rather than by ``os.access``,
    which answers yes to root on a read-only mount. Asked before a command does its work, so
    an export or a report does not fail after minutes of it.
    """
    path = Path(os.path.abspath(target))
    if path.exists() and path.is_dir() != folder:
        kind = "is not a folder" if folder else "is a folder, not a file"
        raise ValueError(f"{what}: cannot write {target}: {path} {kind}")
    where = path if path.is_dir() else path.parent
    while not where.exists():  # ends: "/" exists
        where = where.parent
    if not where.is_dir():
        raise ValueError(f"{what}: cannot write {target}: {where} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{what}: cannot write {target} in {where}: {reason}") from exc


@contextlib.contextmanager
def short_usage_errors() -> Iterator[None]:
    """Click's usage errors (a missing argument, ``--port x``, a ``--token-file`` that does not
    exist) as two lines: ``coorch CMD: message`` and where the usage is, status 2.

    Typer draws them in a box under the usage line, six lines for one fact. Help asked for by
    no arguments (``NoArgsIsHelpError``) and ``--debug`` keep typer's own output.
    """
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except UsageError as exc:
        if debugging():
            raise
        where = exc.ctx.command_path if exc.ctx is not None else "coorch"
        typer.echo(f"{where}: {' '.join(exc.format_message().split())}", err=True)
        typer.echo(f"{where}: see {where} --help", err=True)
        raise typer.Exit(2) from None


class ShortErrorsGroup(TyperGroup):
    """A typer group whose usage errors are :func:`short_usage_errors`' two lines: the class of
    every ``coorch`` command group (``typer.Typer(cls=ShortErrorsGroup)``), so a group run on
    its own (tests, ``python -m``) says the same as under ``coorch``."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        with short_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Context) -> Any:
        with short_usage_errors():
            return super().invoke(ctx)
