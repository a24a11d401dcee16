"""``coorch facility plan``: the queue and the instrument schedule of a facility, as a Gantt
chart in one self-contained HTML page and a PNG.

Why: campaigns share instruments through the facility's arbiter, and "why is my campaign not
measuring?" is answered by who held the instrument, for how long, and who waits in front. The
arbiter's records (:mod:`coorch.deployments.arbiter_records`: one ``Grant`` per turn, one
``Waiter`` per waiting measurement) and the sample registry's transfers are all it takes: no
Prefect server and no agent is asked. The work is in modules with one job each, whose public
names are importable from here:

- :mod:`coorch.facility_plan_summary`: :func:`plan_summary`, the numbers, and the clock that
  turns wall-clock records into instrument time;
- :mod:`coorch.facility_plan_page`: :func:`plan_figure` (the Gantt chart) and :func:`plan_html`
  (the page);
- this module: reading the facility database (:func:`write_plan`) and the command
  (:func:`plan_command`, which ``coorch/cli.py`` mounts as ``coorch facility plan``).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coorch.errors import check_writable, user_errors
from coorch.facility_plan_summary import Clock, plan_summary

if TYPE_CHECKING:  # imported on first use (__getattr__)
    from coorch.facility_plan_page import plan_figure, plan_html, png_bytes

__all__ = [
    "Clock",
    "facility_source",
    "plan_command",
    "plan_figure",
    "plan_html",
    "plan_summary",
    "png_bytes",
    "write_plan",
]

_PAGE = ("plan_figure", "plan_html", "png_bytes")


def __getattr__(name: str) -> Any:
    """The page's names, imported on first use: ``coorch/cli.py`` imports this module for
    every command, and matplotlib must not slow ``coorch --help`` down."""
    if name in _PAGE:
        from coorch import facility_plan_page

        return getattr(facility_plan_page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _paths(out: Path) -> tuple[Path, Path]:
    """``<out>.html`` and ``<out>.png`` (an ``out`` already ending in either keeps its stem)."""
    base = out.with_suffix("") if out.suffix.lower() in {".html", ".png"} else out
    return base.with_name(base.name + ".html"), base.with_name(base.name + ".png")


def _public_url(url: str) -> str:
    """A database URL fit to print on a page that is mailed around: no password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def _records(db_url: str) -> tuple[list, list, list]:
    """Every turn, waiter and transfer of the facility database (imported here: the arbiter
    pulls in Prefect, which ``coorch --help`` must not pay for)."""
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import SampleRegistry

    arbiter = Arbiter(db_url)
    try:
        grants, waiting = list(arbiter.grants()), list(arbiter.waiting())
    finally:
        arbiter.close()
    with SampleRegistry(db_url) as registry:
        transfers = list(registry.transfers())
    return grants, waiting, transfers


def _write(
    db_url: str, out: Path, *, time_scale: float, now: float | None
) -> tuple[dict, Path, Path]:
    from coorch.facility_plan_page import plan_figure, plan_html, png_bytes

    grants, waiting, transfers = _records(db_url)
    now = time.time() if now is None else now
    kw = {"time_scale": time_scale, "now": now}
    summary = plan_summary(grants, waiting, **kw)
    png = png_bytes(plan_figure(grants, waiting, transfers, t0=summary["t0"], **kw))
    html_path, png_path = _paths(out)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(png)
    page = plan_html(summary, png, title=f"facility plan: {_public_url(db_url)}")
    html_path.write_text(page, encoding="utf-8")
    return summary, html_path, png_path


def write_plan(
    db_url: str, out: Path, *, time_scale: float = 1.0, now: float | None = None
) -> tuple[Path, Path]:
    """Read the facility database at ``db_url`` and write ``<out>.html`` and ``<out>.png``.

    ``now`` (default: the present) ends the turns still held; a facility that finished
    earlier keeps its own span (:class:`Clock`)."""
    _, html_path, png_path = _write(db_url, out, time_scale=time_scale, now=now)
    return html_path, png_path


def facility_source(
    run_dir: Path, db: str | None, time_scale: float | None
) -> tuple[str, float, str | None]:
    """The database URL and time scale of the facility in ``run_dir``, and a note for the
    user (or None). An explicit ``--db`` / ``--time-scale`` wins; then ``facility.json``'s;
    then ``sqlite:////<dir>/facility.db`` and 1 (wall seconds)."""
    from coorch.deployments.facility import read_info

    info = read_info(run_dir)
    known = info.facility_db if info is not None else None
    url = db or known or f"sqlite:///{(run_dir / 'facility.db').resolve()}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ValueError(f"no facility database at {url} (give --db, or --dir of a facility)")
    note = None
    if time_scale is None:
        time_scale = getattr(info, "time_scale", None)  # once facility.json records it
        if time_scale == 0:
            note = "the facility's twins run at time scale 0: the plan shows wall seconds"
        if not time_scale:
            time_scale = 1.0
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"--time-scale must be > 0 (wall s per instrument s), got {time_scale}")
    return url, time_scale, note


def _print_table(summary: dict) -> None:
    """Per instrument: utilisation, turns, charged time, and who waits (names as plain text:
    a campaign called ``[bold]`` is not rich markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    scale = summary["time_scale"]
    table = Table(
        "instrument",
        "utilisation",
        "turns",
        "charged (s)",
        "waiting",
        title="utilisation and queue, in instrument time"
        + ("" if scale == 1 else f" (time scale {scale:g})"),
    )
    for name, row in summary["instruments"].items():
        counts = Counter((w["campaign"], w["priority"]) for w in summary["queue"].get(name, []))
        waiting = ", ".join(f"{c} (p{p}) x{n}" for (c, p), n in counts.items()) or "-"
        table.add_row(
            Text(name),
            f"{row['utilisation']:.0%}",
            str(row["turns"]),
            f"{row['charged_s']:.0f}",
            Text(waiting),
        )
    Console().print(table)


_DIR_HELP = "the facility's folder (facility.json names its database)"


def plan_command(
    run_dir: Path = typer.Option(Path("runs/facility"), "--dir", help=_DIR_HELP),
    db: str | None = typer.Option(
        None,
        "--db",
        help="the facility database's URL; default: facility.json's, else <dir>/facility.db",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="where to write OUT.html and OUT.png (default: <dir>/plan)"
    ),
    time_scale: float | None = typer.Option(
        None,
        "--time-scale",
        help="wall seconds per instrument second of the facility's twins (e.g. 0.002); "
        "default: the facility's, else 1",
    ),
) -> None:
    """Show the facility's queue and instrument schedule: who waits for which instrument,
    each instrument's utilisation, and a Gantt chart of every turn (HTML page and PNG)."""
    out = out or run_dir / "plan"
    with user_errors("facility plan"):
        url, scale, note = facility_source(run_dir, db, time_scale)
        for path in _paths(out):
            check_writable(path, "--out", folder=False)
    summary, html_path, png_path = _write(url, out, time_scale=scale, now=None)
    if note:
        typer.echo(note)
    _print_table(summary)
    typer.echo(f"plan: {html_path}")
    typer.echo(f"chart: {png_path}")
