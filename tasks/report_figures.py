"""The campaign report's figures, each one PNG as base64 text to inline in the HTML page.

Why its own module: :mod:`coorch.tasks.report_html` reads the store and writes the page; the
drawing is long and has nothing to say about either. Every function takes plain arrays and
returns base64 PNG text, so the page needs no network and no files beside it. Figures are
``matplotlib.figure.Figure`` objects, never pyplot: no global backend switch, no figure
registry to leak from a long-running process (a flow, a notebook) that writes reports.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

DPI = 80  # a 4-task report stays under a megabyte and draws in about a second
STYLES = ("-", "--", "-.", ":")


def png(fig: Figure) -> str:
    """The figure as base64 PNG text (for a ``data:image/png;base64,`` URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout: no second, "tight" draw
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _library_axes(ax, bounds: np.ndarray, title: str) -> None:
    ax.set(
        title=title,
        xlabel="library x (mm)",
        ylabel="library y (mm)",
        xlim=bounds[0],
        ylim=bounds[1],
        aspect="equal",
    )


def task_map(
    name: str,
    mean: np.ndarray,
    sd: np.ndarray,
    bounds: np.ndarray,
    measured: np.ndarray,
    others: np.ndarray,
) -> str:
    """Posterior mean and standard deviation of one task over the library, (ny, nx) each, with
    this task's measured positions (white dots) and the other instruments' (small crosses): a
    low-sd region without white dots is one the task learned from the others."""
    wide = (bounds[0, 1] - bounds[0, 0]) / (bounds[1, 1] - bounds[1, 0])
    fig = Figure(figsize=(11, max(2.6, 11 / wide / 1.7 + 1.2)), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, z, label, cmap in ((axes[0], mean, "mean", "viridis"), (axes[1], sd, "sd", "magma")):
        im = ax.imshow(
            z,
            origin="lower",
            extent=bounds.ravel(),
            aspect="equal",
            cmap=cmap,
            interpolation="bilinear",
        )
        fig.colorbar(im, ax=ax, shrink=0.85)
        if len(others):
            ax.plot(others[:, 0], others[:, 1], "x", color="0.75", ms=3, mew=0.8)
        if len(measured):
            ax.plot(measured[:, 0], measured[:, 1], "o", mfc="white", mec="black", ms=5)
        _library_axes(ax, bounds, f"{name}: posterior {label} ({len(measured)} measured)")
    return png(fig)


def positions_only(name: str, bounds: np.ndarray, measured: np.ndarray, why: str) -> str:
    """A task the report draws no map of: where it was measured, and why there is no map."""
    fig = Figure(figsize=(6, 2.8), layout="constrained")
    ax = fig.subplots()
    if len(measured):
        ax.plot(measured[:, 0], measured[:, 1], "o", mfc="white", mec="black", ms=5)
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="C3")
    _library_axes(ax, bounds, f"{name}: measured positions only ({len(measured)})")
    return png(fig)


def learning_curves(
    seconds: np.ndarray,
    sd: np.ndarray,
    tasks: Sequence[str],
    xlabel: str,
    nrmse: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """Mean posterior sd per task (relative to the prior's) against instrument time, and the
    normalised RMSE against the truth beside it when a truth is known."""
    fig = Figure(figsize=(11 if nrmse is not None else 6, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if nrmse is not None else 1, squeeze=False)[0]
    for k, name in enumerate(tasks):  # styles too: strongly coupled tasks' curves coincide
        axes[0].plot(seconds, sd[:, k], STYLES[k % len(STYLES)], label=name)
    axes[0].set(
        title="mean posterior sd / prior sd", xlabel=xlabel, ylabel="normalised sd", ylim=(0, 1.05)
    )
    axes[0].legend(fontsize=8)
    if nrmse is not None:
        at, err = nrmse
        for k, name in enumerate(tasks):
            axes[1].plot(at, err[:, k], STYLES[k % len(STYLES)], label=name)
        axes[1].set(title="error against the ground truth", xlabel=xlabel, ylabel="normalised RMSE")
        axes[1].set_yscale("log")
        axes[1].legend(fontsize=8)
    return png(fig)


def timeline(
    rows: Sequence[str],
    bars: Sequence[tuple[int, float, float, str, bool]],
    human_at: Sequence[tuple[float, str]],
    colours: dict[str, str],
) -> str:
    """A Gantt chart: one row per instrument (``bars``: row, start s, duration s, policy, asked
    for by a human), and an operator row with a star at every human input (time, action)."""
    labels = [*rows, "operator"]
    fig = Figure(figsize=(11, 1.0 + 0.45 * len(labels)), layout="constrained")
    ax = fig.subplots()
    span = max([s + d for _, s, d, _, _ in bars] + [t for t, _ in human_at] + [1e-9])
    for row, start, dur, policy, human in bars:
        ax.broken_barh(
            [(start, max(dur, span / 400))],
            (row - 0.35, 0.7),
            facecolors=colours.get(policy, "0.5"),
            edgecolors="C3" if human else "none",
            linewidth=1.5,
            hatch="///" if human else None,
        )
    for at, action in human_at:
        ax.plot(at, len(rows), "*", color="C3", ms=11, mec="black", mew=0.5)
        ax.annotate(action, (at, len(rows)), xytext=(3, 6), textcoords="offset points", fontsize=7)
    handles = [
        ax.bar(0, 0, color=c, label=p) for p, c in colours.items()
    ]  # proxies: broken_barh draws no legend entries
    handles.append(ax.plot([], [], "*", color="C3", mec="black", label="human input")[0])
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set(
        yticks=range(len(labels)),
        yticklabels=labels,
        ylim=(-0.6, len(labels) - 0.4),
        xlabel="seconds since the campaign's first record",
        title="decision timeline (hatched, red edge: a measurement a human asked for)",
    )
    return png(fig)


def latent_scatter(name: str, scores: np.ndarray, explained: np.ndarray, x: np.ndarray) -> str:
    """The first two principal components of one instrument's signals, coloured by library x:
    a stand-in for the VAE latent space (the store keeps signals, not latents)."""
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    sc = ax.scatter(scores[:, 0], scores[:, 1], c=x, cmap="viridis", s=40, edgecolors="0.3")
    fig.colorbar(sc, ax=ax, label="library x (mm)")
    ax.set(
        title=f"{name}: PCA of the signals (not the VAE's latents)",
        xlabel=f"PC1 ({100 * explained[0]:.0f} % of variance)",
        ylabel=f"PC2 ({100 * explained[1]:.0f} % of variance)",
    )
    return png(fig)


def pareto_pairs(
    values: np.ndarray, front: np.ndarray, tasks: Sequence[str], directions: np.ndarray, what: str
) -> str:
    """Every pair of tasks (at most three panels), the non-dominated points in red: the front of
    all tasks at once, seen two objectives at a time."""
    pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))][:3]
    fig = Figure(figsize=(4.6 * len(pairs), 4.0), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    sense = {1.0: "max", -1.0: "min"}
    for ax, (i, j) in zip(axes, pairs, strict=True):
        ax.plot(values[~front, i], values[~front, j], "o", color="0.6", ms=5, label="dominated")
        ax.plot(values[front, i], values[front, j], "o", color="C3", ms=7, label="non-dominated")
        ax.set(
            xlabel=f"{tasks[i]} ({sense.get(float(directions[i]), '?')})",
            ylabel=f"{tasks[j]} ({sense.get(float(directions[j]), '?')})",
        )
        ax.legend(fontsize=8)
    fig.suptitle(f"Pareto front: {what}")
    return png(fig)
