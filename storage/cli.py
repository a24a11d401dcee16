"""``coorch store ...``: look into, check and export a campaign store from a shell.

``coorch/cli.py`` registers ``store_app`` as ``coorch store`` (the ingest benchmark,
``coorch bench ingest``, lives in ``coorch.benchmarks.ingest``). Every command takes a local
path or an fsspec URL; S3 endpoint and credentials come from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...) or ``--option key=value`` (values are never
printed).

A store that is missing or is not a campaign store, a bad ``--option``, an export that cannot
be written: one or two ``coorch store CMD: ...`` lines and status 2, before any work
(:mod:`coorch.errors`; ``coorch --debug`` shows the traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from coorch.errors import ShortErrorsGroup, check_writable, fail, user_errors

if TYPE_CHECKING:  # imported when a command runs: xarray and zarr cost every `coorch` a second
    from .store import CampaignStore

store_app = typer.Typer(
    help="Inspect, verify and export campaign stores.",
    no_args_is_help=True,
    cls=ShortErrorsGroup,
)


class _Console:
    """A rich console made at print time: wide when the output is not a terminal (pipes,
    logs, tests), so tables are not cut at 80 columns."""

    def __getattr__(self, name: str) -> Any:
        import sys

        return getattr(Console(width=None if sys.stdout.isatty() else 160), name)


console = _Console()

OptionsArg = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="storage option key=value (e.g. endpoint_url=http://...)"),
]


def _options(opts: list[str] | None) -> dict[str, Any] | None:
    if not opts:
        return None
    out: dict[str, Any] = {}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key:  # the item is not shown: it may hold a secret
            raise typer.BadParameter(
                "expected key=value (e.g. endpoint_url=http://127.0.0.1:9000), got "
                + ("an empty key" if sep else "an item without '='"),
                param_hint="'--option'",
            )
        out[key] = value
    return out


def _open(url: str, opts: list[str] | None, command: str) -> CampaignStore:
    """The campaign store at ``url``; a missing one, or a folder or zarr store that is not a
    campaign store: two lines naming it, status 2 (``coorch store COMMAND: ...``)."""
    options = _options(opts)
    with user_errors(f"store {command}"):
        from .store import CampaignStore

        return CampaignStore.open(url, create=False, storage_options=options)


@store_app.command("ls")
def ls(url: str, option: OptionsArg = None) -> None:
    """Modalities (rows, signal, dims), decisions and campaign metadata of a store."""
    store = _open(url, option, "ls")
    md = store.metadata()
    table = Table(title=f"campaign {store.url}")
    for col in ("group", "rows", "signal", "dims", "instruments"):
        table.add_column(col)
    mt = store.measurements_table()
    for g in store.modalities():
        ds = store.read_modality(g)
        sig = ds.attrs.get("signal", "")
        sub = mt[mt["modality"] == g]
        table.add_row(
            g,
            str(ds.sizes["measurement"]),
            sig,
            " x ".join(f"{d}={ds.sizes[d]}" for d in ds[sig].dims),
            ", ".join(sorted(set(sub["instrument"]))),
        )
    table.add_row("decisions", str(len(store.decisions())), "", "", "")
    console.print(table)
    cv = md.get("code_version", {})
    console.print(
        f"code: coorch {cv.get('version')} commit {cv.get('git_commit') or '-'}; "
        f"metadata keys: {', '.join(sorted(md))}"
    )


@store_app.command("show")
def show(
    url: str,
    modality: Annotated[str | None, typer.Option("--modality", "-m")] = None,
    rows: int = 10,
    option: OptionsArg = None,
) -> None:
    """Campaign metadata, or one modality as xarray sees it plus its latest measurements."""
    store = _open(url, option, "show")
    if modality is None:
        console.print_json(json.dumps(store.metadata(), default=str))
        console.print(f"modalities: {', '.join(store.modalities()) or '-'}")
        return
    if modality not in store.modalities():
        have = ", ".join(store.modalities()) or "none"
        fail("store show", [f"--modality: {store.url} has no modality {modality!r} (has {have})"])
    console.print(store.read_modality(modality))
    mt = store.measurements_table()
    sub = mt[mt["modality"] == modality].tail(rows)
    table = Table(title=f"last {len(sub)} measurements of {modality}")
    cols = [
        "measurement_id",
        "instrument",
        "library_x",
        "library_y",
        "end_time",
        "decision_id",
        "content_hash",
    ]
    for c in cols:
        table.add_column(c)
    for _, r in sub.iterrows():
        table.add_row(*(str(r[c])[:19] if c != "content_hash" else str(r[c])[:12] for c in cols))
    console.print(table)


@store_app.command("lineage")
def lineage_cmd(
    url: str,
    measurement_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    option: OptionsArg = None,
) -> None:
    """Where a measurement came from (decision, its training data), what it influenced, and
    what operators did about it (an override of its proposal, votes on its signal)."""
    store = _open(url, option, "lineage")
    with user_errors("store lineage", also=(KeyError,)):
        lin = store.lineage(measurement_id)
    if as_json:
        console.print_json(json.dumps(lin, default=str))
        return
    m = lin["measurement"]
    tree = Tree(
        f"[bold]{measurement_id}[/bold] {m['modality']} by {m['instrument']} at "
        f"({m['library_x']:.3g}, {m['library_y']:.3g}) mm"
    )
    back = tree.add("[cyan]back[/cyan]")
    d = lin["back"]["decision"]
    if d is None:
        back.add("not requested by a stored decision")
    elif d.get("missing"):
        back.add(f"[red]decision {d['decision_id']} is missing from the store[/red]")
    else:
        node = back.add(
            f"decision {d['decision_id']}: policy {d['policy']} model "
            f"{d['model_version'] or '-'} acquisition {d['acquisition_value']:.4g} "
            f"over {d['n_candidates']} candidates"
        )
        node.add(
            f"trained on {len(lin['back']['trained_on'])} measurements: "
            + ", ".join(lin["back"]["trained_on"][:8])
            + (" ..." if len(lin["back"]["trained_on"]) > 8 else "")
        )
        if lin["back"]["chain_broken"]:
            node.add(f"[red]training set cut short: {lin['back']['chain_broken']}[/red]")
    fwd = tree.add("[magenta]forward[/magenta]")
    fwd.add(
        f"{len(lin['forward']['decisions'])} decisions trained on it: "
        + ", ".join(lin["forward"]["decisions"][:8])
    )
    fwd.add(
        f"{len(lin['forward']['measurements'])} measurements they caused: "
        + ", ".join(lin["forward"]["measurements"][:8])
    )
    _add_human(tree, lin["human"])
    console.print(tree)


def _add_human(tree: Tree, inputs: list[dict[str, Any]]) -> None:
    """The ``human`` branch of ``lineage``: one line per operator input, and under an accept or
    override the agent's proposal it answered, so an audit sees what the machine wanted."""
    human = tree.add("[yellow]human[/yellow]")
    if not inputs:
        human.add("no operator input")
    for h in inputs:
        detail = {k: v for k, v in h["detail"].items() if k != "measurement_id"}
        node = human.add(
            f"{h['action']} by {h['operator']} at {(h['at'] or '-')[:19]} "
            f"(decision {h['decision_id']})"
            + (": " + ", ".join(f"{k}={v}" for k, v in detail.items()) if detail else "")
        )
        r = h["replaced"]
        if r:
            node.add(
                f"replaced proposal {r.get('decision_id', '-')}: {r.get('modality', '-')} by "
                f"{r.get('instrument', '-')} at ({_num(r.get('library_x'), '.3g')}, "
                f"{_num(r.get('library_y'), '.3g')}) mm, policy {r.get('policy', '-')} "
                f"acquisition {_num(r.get('acquisition_value'), '.4g')}"
            )


def _num(value: Any, spec: str) -> str:
    """A number of a stored record, formatted; '-' when absent (JSON writes NaN as null)."""
    return "-" if value is None else format(float(value), spec)


@store_app.command("verify")
def verify_cmd(url: str, option: OptionsArg = None) -> None:
    """Hashes, dangling references, duplicates, partial writes. Exit 1 on any problem."""
    store = _open(url, option, "verify")
    problems = store.verify()
    if not problems:
        n = len(store.measurement_ids())
        console.print(
            f"[green]OK[/green] {store.url}: {n} measurements, {len(store.decisions())} decisions"
        )
        return
    for p in problems:
        console.print(f"[red]PROBLEM[/red] {p}")
    console.print(f"{len(problems)} problem(s)")
    raise typer.Exit(1)


@store_app.command("export")
def export_cmd(
    url: str,
    to: Annotated[str, typer.Option("--to", help="netcdf | parquet")] = "netcdf",
    out: Annotated[Path | None, typer.Option("--out")] = None,
    option: OptionsArg = None,
) -> None:
    """Export to one NetCDF-4 file (a group per modality + decisions) or a Parquet folder."""
    if to not in ("netcdf", "parquet"):
        raise typer.BadParameter(f"{to!r} is neither netcdf nor parquet", param_hint="'--to'")
    base = Path(url.rstrip("/").rsplit("/", 1)[-1]).stem or "campaign"
    out = out or Path(f"{base}.nc" if to == "netcdf" else f"{base}-parquet")
    with user_errors("store export"):
        check_writable(out, "--out", folder=to == "parquet")
    store = _open(url, option, "export")
    from .export import export_netcdf, export_parquet

    with user_errors("store export"):
        path = (export_netcdf if to == "netcdf" else export_parquet)(store, out)
    console.print(f"wrote {path}")


__all__ = ["store_app"]
