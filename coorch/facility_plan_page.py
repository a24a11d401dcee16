"""The page of ``coorch facility plan``: a Gantt chart of the facility's instruments and one
self-contained HTML page around it.

Why its own module: :mod:`coorch.facility_plan_summary` computes, :mod:`coorch.facility_plan`
reads the database and runs the command; the drawing and the markup have nothing to say about
either. Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never pyplot:
no global backend switch and no figure registry to leak from a long-running process.

Why self-contained: a plan is attached to an e-logbook or a ticket ("my campaign waited all
night") and opened with no network, so the chart is an inline base64 PNG and the styles are
inline; one tiny script counts the images the browser decoded into
``document.body.dataset.plots`` (a headless browser can tell the chart rendered). Every name
on the page (campaign, owner, instrument) went through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from coorch.facility_plan_summary import Clock

if TYPE_CHECKING:
    from coorch.deployments.arbiter_records import Grant, Waiter
    from coorch.storage.samples import Transfer

DPI = 100
BAR = 0.6  # bar height, in rows
HOURS_FROM_S = 2 * 3600  # a span at least this long is drawn in hours, a shorter one in minutes
_TAB20 = colormaps["tab20"].colors
PALETTE = _TAB20[0::2] + _TAB20[1::2]  # the ten strong colours first, then their light pairs


def campaign_colours(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per campaign, stable across plans: the palette slot is a CRC32 of the name
    (Python's ``hash`` changes per process). Two names on one slot: the later (in name order)
    takes the next free slot, so a plan never shows two campaigns in one colour while it has
    at most 20 (beyond that the palette repeats)."""
    out, taken = {}, set()
    for name in sorted(set(names)):
        slot = zlib.crc32(name.encode("utf-8")) % len(PALETTE)
        while slot in taken and len(taken) < len(PALETTE):
            slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        out[name] = PALETTE[slot]
    return out


def _transfer_spans(
    grants: Sequence[Grant], transfers: Sequence[Transfer], clock: Clock
) -> list[tuple[Any, str, float, float]]:
    """Where each transfer is drawn: (transfer, instrument row, start, width) in instrument
    seconds. A transfer whose ``at`` falls in a turn on its destination instrument is drawn at
    that turn's start (the turn began by loading the sample; the campaign's own turn first,
    if two match); one in no turn, at its own time. ``cost_s`` is instrument seconds."""
    out = []
    for tr in transfers:
        hits = [
            g
            for g in grants
            if g.instrument == tr.destination and g.granted <= tr.at <= clock.grant_end(g)
        ]
        hits.sort(key=lambda g: (g.campaign != tr.campaign, g.granted))
        if hits:
            g = hits[0]
            length = clock.seconds(clock.grant_end(g) - g.granted)
            out.append((tr, g.instrument, clock.at(g.granted), min(tr.cost_s, length)))
        else:
            out.append((tr, tr.destination, clock.at(tr.at), tr.cost_s))
    return out


def _legend(ax: Axes, grants: Sequence[Grant], waiting: Sequence[Waiter], colours: dict) -> None:
    """Campaigns (owner, priority), highest priority first; then what the other marks mean,
    for those the chart shows."""
    who: dict[str, tuple[str, int]] = {}
    for r in [*grants, *waiting]:
        who.setdefault(r.campaign, (r.owner, r.priority))
    handles: list[Any] = [
        Patch(facecolor=colours[c], label=_label(f"{c} ({who[c][0]}, priority {who[c][1]})"))
        for c in sorted(who, key=lambda c: (-who[c][1], c))
    ]
    if any(g.released is None for g in grants):
        handles.append(Patch(facecolor="none", edgecolor="black", ls="--", label="held now"))
    if any((p.get_gid() or "").startswith("transfer-") for p in ax.patches):
        hatched = Patch(facecolor="white", edgecolor="0.2", hatch="////", label="sample transfer")
        handles.append(hatched)
    if waiting:
        handles.append(
            Line2D([], [], marker="v", ls="none", color="0.5", mec="black", label="waiting since")
        )
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8
    )


def _label(name: str) -> str:
    """A name as matplotlib text, never mathtext: ``a$b$`` would be parsed as a formula (and
    one that does not parse fails the whole figure)."""
    return name.replace("$", r"\$")


def _draw(
    ax: Axes,
    clock: Clock,
    y: dict[str, int],
    per: float,
    colours: dict[str, Any],
    grants: Sequence[Grant],
    waiting: Sequence[Waiter],
    transfers: Sequence[Transfer],
) -> None:
    """The turns (a held one edged in dashes), the transfers over them, the waiters' markers
    just above their row."""
    for g in grants:
        start, stop = clock.at(g.granted), clock.at(clock.grant_end(g))
        ax.barh(
            y[g.instrument],
            (stop - start) / per,
            left=start / per,
            height=BAR,
            color=colours[g.campaign],
            edgecolor="black" if g.released is None else "none",
            linestyle="--",
            gid=f"grant-{g.id}",
        )
    for tr, row, start, width in _transfer_spans(grants, transfers, clock):
        if row in y:  # a transfer to a shelf, not an instrument, has no row
            ax.barh(
                y[row],
                width / per,
                left=start / per,
                height=BAR,
                facecolor=(1, 1, 1, 0.45),
                edgecolor="0.2",
                hatch="////",
                linewidth=0.5,
                gid=f"transfer-{tr.id}",
            )
    for w in waiting:
        ax.plot(
            clock.at(w.enqueued) / per,
            y[w.instrument] - BAR / 2 - 0.08,
            marker="v",
            ls="none",
            ms=8,
            color=colours[w.campaign],
            mec="black",
            gid=f"waiter-{w.id}",
        )


def plan_figure(
    grants: Sequence[Grant],
    waiting: Sequence[Waiter],
    transfers: Sequence[Transfer] = (),
    *,
    time_scale: float = 1.0,
    t0: float | None = None,
    now: float | None = None,
) -> Figure:
    """The Gantt chart: one row per instrument (in name order, top down), one bar per turn
    from grant to release (held: to ``now``) in its campaign's colour, hatched bars for the
    sample transfers at the start of the turn that needed them, a marker per waiting
    measurement at its enqueue time, a dotted line at ``now`` while anything is live. The x
    axis is instrument time since ``t0``, in hours (minutes under two hours).

    Artists carry ids for whoever inspects the figure: ``grant-<id>`` and ``transfer-<id>`` on
    the bars (``ax.patches``), ``waiter-<id>`` on the markers (``ax.lines``)."""
    clock = Clock.of(grants, waiting, transfers, time_scale=time_scale, t0=t0, now=now)
    rows = sorted({g.instrument for g in grants} | {w.instrument for w in waiting})
    y = {name: k for k, name in enumerate(rows)}
    unit, per = ("h", 3600.0) if clock.span_s >= HOURS_FROM_S else ("min", 60.0)
    colours = campaign_colours([r.campaign for r in [*grants, *waiting]])
    fig = Figure(figsize=(11, 1.6 + 0.55 * max(len(rows), 2)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, clock, y, per, colours, grants, waiting, transfers)
    if clock.live:
        ax.axvline(clock.at(clock.now) / per, color="0.3", ls=":", lw=1)
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.7)  # top down, room for the markers above the first row
    ax.set_xlim(left=0, right=max(clock.span_s, clock.at(clock.now), 1.0) / per * 1.02)
    scale = "" if time_scale == 1 else f"; time scale {time_scale:g}"
    ax.set_xlabel(f"instrument time since the start of the plan ({unit}{scale})")
    ax.set_title("instrument schedule")
    ax.grid(axis="x", alpha=0.3)
    if rows:
        _legend(ax, grants, waiting, colours)
    else:
        ax.text(0.5, 0.5, "no turns and nobody waiting", ha="center", transform=ax.transAxes)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (constrained layout: no second, "tight" draw)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _dur(s: float | None) -> str:
    """Instrument seconds as a reader counts them: seconds, minutes or hours."""
    if s is None:
        return "-"
    if abs(s) < 120:
        return f"{s:.1f} s"
    if abs(s) < HOURS_FROM_S:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(v: float) -> str:
    return f"{v:.0%}"


def _loaded(v: bool) -> str:
    return "yes" if v else "no (needs a transfer)"


#: The page's tables: id, caption, and per column (header, summary key, format).
TABLES: tuple[tuple[str, str, tuple[tuple[str, str, Any], ...]], ...] = (
    ("queue", "the queue: who waits for which instrument, highest priority first", (
        ("instrument", "instrument", str), ("campaign", "campaign", str), ("owner", "owner", str),
        ("priority", "priority", str), ("waiting for", "waited_s", _dur),
        ("sample loaded", "loaded", _loaded),
    )),
    ("instruments", "per instrument (utilisation: busy fraction of the span)", (
        ("instrument", "instrument", str), ("utilisation", "utilisation", _pct),
        ("busy", "busy_s", _dur), ("turns", "turns", str), ("charged", "charged_s", _dur),
        ("held now", "held", str), ("waiting", "waiting", str),
    )),
    ("priorities", "per priority (wait: from enqueued to granted)", (
        ("priority", "priority", str), ("turns", "turns", str),
        ("median wait", "median_wait_s", _dur), ("max wait", "max_wait_s", _dur),
        ("waiting", "waiting", str),
    )),
    ("campaigns", "per campaign (times since the first record; last release: completion)", (
        ("campaign", "campaign", str), ("owner", "owner", str), ("priority", "priority", str),
        ("turns", "turns", str), ("charged", "charged_s", _dur),
        ("first grant", "first_grant_s", _dur), ("last release", "last_release_s", _dur),
        ("held now", "held", str), ("waiting", "waiting", str),
    )),
)  # fmt: skip


def _rows(summary: dict, tid: str) -> list[dict]:
    """A table's rows as flat dicts: the summary's entries with their key as a column."""
    if tid == "queue":
        return [{"instrument": k, **w} for k, ws in summary["queue"].items() for w in ws]
    key = {"instruments": "instrument", "priorities": "priority", "campaigns": "campaign"}[tid]
    return [{key: k, **r} for k, r in summary[tid].items()]


def _table(summary: dict, tid: str, caption: str, columns: tuple) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h, _, _ in columns)
    rows = _rows(summary, tid)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(fmt(r[k]))}</td>" for _, k, fmt in columns) + "</tr>"
        for r in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(columns)}">none</td></tr>'
    return (
        f'<table id="{tid}"><caption>{_esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}caption{text-align:left;font-weight:bold}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    "img{max-width:100%}.note{color:#555}"
)
COUNT_PLOTS = (
    "<script>window.addEventListener('load',()=>{document.body.dataset.plots="
    "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length;});</script>"
)


def plan_html(summary: dict, png_bytes: bytes, *, title: str) -> str:
    """One self-contained page: the chart (``png_bytes``, inlined as base64) and the tables of
    :func:`~coorch.facility_plan_summary.plan_summary`: the queue, per instrument, per
    priority, per campaign (``id`` attributes of the same names)."""
    chart = base64.b64encode(png_bytes).decode("ascii")
    scale = summary["time_scale"]
    clock = "instrument time" + ("" if scale == 1 else f" (wall seconds / {scale:g})")
    state = "live: turns held or measurements waiting" if summary["live"] else "nothing live"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="note">{_esc(_when(summary["t0"]))} to {_esc(_when(summary["end"]))}: '
        f"{_esc(_dur(summary['span_s']))} of {_esc(clock)}; {_esc(state)}.</p>"
        f'<img class="plan" alt="instrument schedule" src="data:image/png;base64,{chart}">'
        + "".join(_table(summary, *t) for t in TABLES)
        + f"{COUNT_PLOTS}</body></html>"
    )
