"""``coorch report STORE``: the campaign's self-contained HTML report, from its store alone.

Kept out of ``coorch/cli.py`` so the command stays beside nothing but its one task; the CLI
mounts it (``app.command("report")(report_command)``). Imports are lazy: ``coorch --help``
must not pay for torch and matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    store: Path = typer.Argument(..., help="campaign store (the zarr folder a campaign wrote)"),
    out: Path = typer.Option(
        None, help="where to write the HTML page (default: report.html beside the store)"
    ),
) -> None:
    """Write one self-contained HTML report of the campaign in STORE: GP maps per task,
    uncertainty against instrument time, the decision timeline with human inputs, the recent
    decisions and their reasons. Works on a store still being written."""
    from coorch.storage import CampaignStore
    from coorch.tasks.report_html import write_report

    out = out or store.parent / "report.html"
    try:
        opened = CampaignStore.open(str(store), create=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable store: one line, not a traceback
        typer.echo(f"coorch report: cannot read a campaign store at {store}: {exc}", err=True)
        raise typer.Exit(2) from None
    with opened:
        path = write_report(opened, out)
    typer.echo(f"report: {path}")
