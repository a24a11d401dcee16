"""``coorch report STORE``: the campaign's self-contained HTML report, from its store alone.

Kept out of ``coorch/cli.py`` so the command stays beside nothing but its one task; the CLI
mounts it (``app.command("report")(report_command)``). Imports are lazy: ``coorch --help``
must not pay for torch and matplotlib. A store that is missing or is not a campaign store, or
a page that cannot be written, ends in one or two lines and status 2 before any work
(:func:`coorch.errors.user_errors`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from coorch.errors import check_writable, user_errors


def default_out(store: str) -> Path:
    """``report.html`` beside a local store (a path or ``file://`` URL); in the current folder
    for a remote one (``s3://bucket/c.zarr`` has no folder here to put it beside)."""
    local = store.removeprefix("file://")
    if "://" in local:
        return Path("report.html")
    return Path(local.rstrip("/") or "/").parent / "report.html"


def report_command(
    store: str = typer.Argument(
        ..., help="campaign store: the zarr folder a campaign wrote, or its URL (s3://...)"
    ),
    out: Path = typer.Option(
        None,
        help="where to write the HTML page (default: report.html beside a local store, in "
        "the current folder for a remote one)",
    ),
) -> None:
    """Write one self-contained HTML report of the campaign in STORE: GP maps per task,
    uncertainty against instrument time, the decision timeline with human inputs, the recent
    decisions and their reasons. Works on a store still being written."""
    out = out or default_out(store)
    with user_errors("report"):
        check_writable(out, "--out", folder=False)
        from coorch.storage import CampaignStore

        opened = CampaignStore.open(store, create=False)
    from coorch.tasks.report_html import write_report

    with opened:
        path = write_report(opened, out)
    typer.echo(f"report: {path}")
