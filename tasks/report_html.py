"""``coorch report``: one self-contained HTML page about a campaign, from its store alone.

Why from the store alone: the store is the campaign's truth (``tasks/runtime.py``), so a report
written from it works during a run (a partial store), after a crash, or years later on another
machine, with no instrument, no Prefect server and no agent state. What is read and fitted is
:mod:`coorch.tasks.report_data`; this module lays it out. A campaign that modelled a VAE's
latents kept no latents in its store, so its latent space is stood in for by a PCA of its
signals, labelled as such.

Why self-contained: a report is mailed, attached to an e-logbook, opened on a beamline PC with
no network. Figures are inline base64 PNGs (:mod:`coorch.tasks.report_figures`), styles inline,
and one tiny script that, once the page has loaded, counts the images the browser could decode
into ``document.body.dataset.plots`` (so a headless browser can tell that the plots rendered).
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from coorch.models.incremental import exact_posterior
from coorch.storage import CampaignStore
from coorch.storage.training_sets import links_of, training_set_sizes
from coorch.tasks import report_figures as figures
from coorch.tasks.report import GroundTruth, nrmse_curve
from coorch.tasks.report_data import (
    CampaignView,
    Model,
    cumulative_seconds,
    fit_model,
    read_campaign,
    uncertainty_curve,
)

N_DECISIONS = 50  # rows of the decisions table: the recent ones, which a reader asks about
MAP_NX = 72  # map resolution along x; y follows the library's aspect


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _when(t: float | None) -> str:
    if t is None or not np.isfinite(t):
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _plain(v: object) -> str:
    """A metadata value as text: a dict as ``key: value`` pairs, not Python's repr."""
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def _img(data: str, alt: str, cls: str, **attrs: str) -> str:
    extra = "".join(f' data-{k}="{_esc(v)}"' for k, v in attrs.items())
    return f'<img class="{cls}"{extra} alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def header_section(view: CampaignView) -> str:
    """Campaign name, store, policy, measurements per instrument, time span."""
    meta, ms = view.metadata, view.measurements
    name = meta.get("campaign") or (view.spec.name if view.spec else Path(view.url).stem)
    counts = Counter(m.instrument for m in ms)
    start = min((m.started for m in ms), default=None)
    end = max((m.ended for m in ms), default=None)
    span = f"{_when(start)} to {_when(end)} ({(end - start) / 60:.1f} min)" if ms else "-"
    operator = sum(not d.requests_measurement and d.human_input is not None for d in view.decisions)
    # an instrument that stopped answering, or came back (coorch.tasks.availability)
    lost = Counter(d.instrument for d in view.decisions if d.policy == "unavailable")
    facts = [
        ["store", view.url],
        ["policy", view.policy],
        ["library / sample", f"{meta.get('library', '-')} / {meta.get('sample', '-')}"],
        ["library extent (mm)", f"{view.geometry.bounds.tolist()} ({view.extent_source})"],
        ["measurements", f"{len(ms)} (" + ", ".join(f"{k}: {counts[k]}" for k in view.tasks) + ")"],
        ["decisions", f"{len(view.decisions)} ({operator} operator inputs without a measurement)"],
        ["instruments unavailable", ", ".join(f"{k}: {n} times" for k, n in lost.items()) or "-"],
        ["time span", span],
        ["code version", _plain(meta.get("code_version", "-"))],
        ["report written", _when(datetime.now(UTC).timestamp())],
    ]
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    return f"<h1>Campaign {_esc(name)}</h1><table class='facts'>{rows}</table>"


def maps_section(view: CampaignView, model: Model) -> str:
    """Per task: posterior mean and sd over the library, or its positions and why no map."""
    geo = view.geometry
    ny = int(np.clip(round(MAP_NX * geo.span[1] / geo.span[0]), 12, MAP_NX))
    grid = geo.grid((MAP_NX, ny))
    mean = var = None
    if model.hyper is not None:
        mean, var = exact_posterior(model.hyper, model.x, model.t, model.y, geo.to_unit(grid))
    xy = np.array([[m.library_x, m.library_y] for m in view.measurements]).reshape(-1, 2)
    who = np.array([m.instrument for m in view.measurements])
    parts = ["<h2>Maps: GP posterior per task</h2>"]
    note = (
        "MAP multi-task GP refitted on the stored physics descriptors; white dots: this task's "
        "measurements, crosses: the other instruments'."
    )
    parts.append(f"<p>{_esc(note)}</p>")
    for k, name in enumerate(view.tasks):
        n = int((model.t == k).sum())
        where, others = xy[who == name], xy[who != name]
        if mean is None or n < 2:
            why = model.why if mean is None else f"{n} value(s): too few for a map"
            data = figures.positions_only(name, geo.bounds, where, why)
            parts.append(f"<p>{_esc(name)}: {_esc(why)}; positions only.</p>")
        else:
            z, sd = mean[:, k].reshape(ny, MAP_NX), np.sqrt(var[:, k]).reshape(ny, MAP_NX)
            data = figures.task_map(name, z, sd, geo.bounds, where, others)
        parts.append(_img(data, f"map of {name}", "map", task=name))
    return "\n".join(parts)


def curves_section(view: CampaignView, model: Model, truth: GroundTruth | None) -> str:
    """Posterior sd (and, with a truth, the error) against cumulative instrument-seconds."""
    head = "<h2>Uncertainty against instrument time</h2>"
    if model.hyper is None:
        return f"{head}<p>No curves: {_esc(model.why)}.</p>"
    geo = view.geometry
    query = geo.to_unit(geo.cell_centres((40, max(4, int(40 * geo.span[1] / geo.span[0])))))
    steps, sd = uncertainty_curve(model.hyper, model.x, model.t, query)
    described = view.metadata.get("instruments") or {}
    seconds = cumulative_seconds(model.measurements, described)
    timed = seconds[-1] > 0
    clock = seconds if timed else np.arange(1, len(seconds) + 1, dtype=float)
    xlabel = "instrument-seconds" if timed else "measurements (the store records no durations)"
    nrmse = None
    if truth is not None:
        ms = [m for m in model.measurements if m.instrument in truth.tasks]
        same = list(truth.tasks) == view.tasks
        if len(ms) >= 2:
            at, err = nrmse_curve(
                ms,
                truth,
                geo.bounds,
                hyper=model.hyper if same else None,
                log_tasks=np.array([view.log_scale.get(n, False) for n in truth.tasks]),
            )
            own = (
                cumulative_seconds(ms, described)
                if timed
                else np.arange(1, len(ms) + 1, dtype=float)
            )
            nrmse = (own[at - 1], err)
    data = figures.learning_curves(clock[steps - 1], sd, view.tasks, xlabel, nrmse)
    return head + _img(data, "uncertainty against instrument time", "curve")


def timeline_section(view: CampaignView) -> str:
    """A Gantt chart of the measurements, coloured by the deciding policy, human inputs marked,
    and a table of every human input."""
    by_id = {d.decision_id: d for d in view.decisions}
    humans = sorted(
        (d for d in view.decisions if d.human_input is not None), key=lambda d: d.human_input.at
    )
    times = [m.started for m in view.measurements] + [d.created for d in view.decisions]
    t0 = min(times + [d.human_input.at for d in humans], default=0.0)
    rows = list(view.tasks)
    colours: dict[str, str] = {}
    for d in view.decisions:
        if d.requests_measurement:
            colours.setdefault(d.policy, f"C{len(colours) % 10}")
    bars = []
    for m in view.measurements:
        d = by_id.get(m.decision_id or "")
        policy = d.policy if d is not None else "unknown"
        colours.setdefault(policy, "0.5")
        row = rows.index(m.instrument) if m.instrument in rows else len(rows)
        human = d is not None and d.human_input is not None
        bars.append((row, m.started - t0, m.ended - m.started, policy, human))
    marks = [(d.human_input.at - t0, d.human_input.action) for d in humans]
    data = figures.timeline(rows, bars, marks, colours)
    parts = ["<h2>Decision timeline</h2>", _img(data, "decision timeline", "timeline")]
    parts.append(f"<h3>Human inputs ({len(humans)})</h3>")
    if not humans:
        return "\n".join([*parts, "<p>None: the agent decided alone.</p>"])
    table = []
    for d in humans:
        hi = d.human_input
        asked = (
            f"measure {d.instrument} at ({d.library_x:.2f}, {d.library_y:.2f}) mm"
            if d.requests_measurement
            else "no measurement"
        )
        detail = json.dumps(hi.detail, default=str)
        table.append(
            [hi.operator, _when(hi.at), hi.action, detail[:200], _replaced(hi.replaced), asked]
        )
    header = ["who", "when", "what", "detail", "proposal replaced", "outcome"]
    return "\n".join([*parts, _table(header, table)])


def _replaced(p: dict[str, Any] | None) -> str:
    if not p:
        return "-"
    acq = p.get("acquisition_value")
    acq_s = f", acquisition {acq:.3g}" if isinstance(acq, (int, float)) else ""
    return (
        f"{p.get('instrument', '?')} at ({p.get('library_x', float('nan')):.2f}, "
        f"{p.get('library_y', float('nan')):.2f}) mm by {p.get('policy', '?')}{acq_s}"
    )


def latent_section(view: CampaignView) -> str:
    """Instruments with VAE descriptors: a PCA of their signals (the store keeps no latents,
    and a report trains nothing heavy)."""
    vae = [i.name for i in view.spec.instruments if i.descriptor == "vae"] if view.spec else []
    if not vae:
        return ""
    parts = [
        "<h2>Latent space (VAE instruments)</h2>",
        "<p>The store keeps signals, not the campaign's VAE latents: shown is a 2-D PCA of "
        "each VAE instrument's stored signals, a cheap stand-in, not the VAE.</p>",
    ]
    for name in vae:
        ms = [m for m in view.measurements if m.instrument == name]
        arrays = [m.signal.array().ravel() for m in ms]
        size = Counter(a.size for a in arrays).most_common(1)[0][0] if arrays else 0
        keep = [i for i, a in enumerate(arrays) if a.size == size]
        if len(keep) < 3:
            parts.append(f"<p>{_esc(name)}: {len(keep)} signal(s), too few for a PCA.</p>")
            continue
        a = np.stack([arrays[i] for i in keep])
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        s2 = np.pad(s, (0, max(0, 2 - len(s))))
        scores = np.pad(u * s, ((0, 0), (0, max(0, 2 - len(s)))))[:, :2]
        explained = s2[:2] ** 2 / max(float((s**2).sum()), 1e-300)
        x = np.array([ms[i].library_x for i in keep])
        data = figures.latent_scatter(name, scores, explained, x)
        parts.append(_img(data, f"PCA of {name} signals", "latent", task=name))
    return "\n".join(parts)


def pareto_section(view: CampaignView, model: Model) -> str:
    """For a 'pareto' campaign: the front of the measured task values (positions every task
    was measured at); with none such, of the GP means at the measured positions, said so."""
    if view.policy != "pareto":
        return ""
    from coorch.models.pareto import pareto_front  # botorch's is_non_dominated

    head = "<h2>Pareto front</h2>"
    n_tasks = len(view.tasks)
    if n_tasks < 2:
        return f"{head}<p>One task: no front to draw.</p>"
    opts = view.spec.policy_options if view.spec else {}
    directions = np.asarray(opts.get("directions") or np.ones(n_tasks), float)
    sums: dict[tuple[float, float], np.ndarray] = {}
    counts: dict[tuple[float, float], np.ndarray] = {}
    xy_all = view.geometry.from_unit(model.x) if len(model.x) else np.zeros((0, 2))
    for (px, py), k, v in zip(xy_all, model.t, model.y, strict=True):
        key = (round(float(px), 3), round(float(py), 3))
        sums.setdefault(key, np.zeros(n_tasks))[k] += v
        counts.setdefault(key, np.zeros(n_tasks))[k] += 1
    empty = [n for k, n in enumerate(view.tasks) if not (model.t == k).any()]
    if empty:
        return f"{head}<p>No front yet: {_esc(', '.join(empty))} has no values.</p>"
    full = [p for p, c in counts.items() if (c > 0).all()]
    if full:
        values = np.array([sums[p] / counts[p] for p in full])
        what = f"measured values at the {len(full)} positions every instrument measured"
    elif model.hyper is not None and counts:
        pos = np.array(list(counts))
        values, _ = exact_posterior(
            model.hyper, model.x, model.t, model.y, view.geometry.to_unit(pos)
        )
        what = "GP posterior means at the measured positions (no position has every task)"
    else:
        return f"{head}<p>No position has every task measured, and no GP to fill in.</p>"
    front = pareto_front(values * directions)
    data = figures.pareto_pairs(values, front, view.tasks, directions, what)
    return (
        head
        + f"<p>{_esc(what)}; {int(front.sum())} non-dominated.</p>"
        + _img(data, "Pareto front", "pareto")
    )


def decisions_section(view: CampaignView) -> str:
    """The last decisions with their reasons: policy, acquisition value, model version."""
    measured = {m.measurement_id for m in view.measurements}
    sizes = training_set_sizes(
        links_of((d.decision_id, d.trained_since, d.trained_on) for d in view.decisions)
    )
    rows = []
    for d in view.decisions[-N_DECISIONS:]:
        where = f"({d.library_x:.2f}, {d.library_y:.2f})" if d.requests_measurement else "-"
        acq = "-" if not np.isfinite(d.acquisition_value) else f"{d.acquisition_value:.4g}"
        rows.append(
            [
                _when(d.created),
                d.instrument or "-",
                d.modality or ("(operator input)" if d.human_input else "(instrument state)"),
                where,
                d.policy,
                acq,
                d.model_version or "-",
                sizes[d.decision_id] if sizes[d.decision_id] >= 0 else "? (chain broken)",
                d.human_input.action if d.human_input is not None else "-",
                "yes" if d.measurement_id in measured else "no",
            ]
        )
    header = ["created", "instrument", "modality", "x, y (mm)", "policy", "acquisition"]
    header += ["model version", "trained on", "human input", "measured"]
    shown = f"last {len(rows)} of {len(view.decisions)}"
    return f"<h2>Decisions ({shown})</h2>" + _table(header, rows)


# ------------------------------------------------------------------------------ the page
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
table.facts th { background: #f4f4f4; } img { display: block; max-width: 100%; margin: 0.4em 0; }
"""
# after load: how many images the browser decoded (a headless browser's --dump-dom shows it)
SCRIPT = """
window.addEventListener("load", function () {
  var ok = Array.prototype.filter.call(document.images, function (i) {
    return i.naturalWidth > 0;
  });
  document.body.dataset.plots = String(ok.length);
});
"""


def render(view: CampaignView, model: Model, truth: GroundTruth | None = None) -> str:
    """The whole page as one string."""
    sections = [
        header_section(view),
        maps_section(view, model),
        curves_section(view, model, truth),
        timeline_section(view),
        latent_section(view),
        pareto_section(view, model),
        decisions_section(view),
    ]
    title = _esc(view.metadata.get("campaign") or Path(view.url).stem)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>coorch report: {title}</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )


def write_report(
    store: str | os.PathLike[str] | CampaignStore, out: Path, *, truth: GroundTruth | None = None
) -> Path:
    """Write the campaign report for ``store`` (a URL or path, or an open store) to ``out``.

    ``truth`` (a twin's :class:`GroundTruth`, benchmarks and demos only) adds the error
    against it. A store opened here is closed again; an open one is left open."""
    if isinstance(store, CampaignStore):
        view = read_campaign(store)
    else:
        with CampaignStore.open(store, create=False) as opened:
            view = read_campaign(opened)
    page = render(view, fit_model(view), truth)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
