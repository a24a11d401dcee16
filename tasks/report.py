"""Scoring a campaign against a twin's ground truth, and the campaign report figure.

Ground truth is the descriptor of the twin's noiseless signal on a held-out grid (positions the
policy never chooses among), so the error measures the map the campaign learned, in the same
units the GP models. Runs after a campaign, never on the decision path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coorch.geometry import LibraryGeometry
from coorch.models.descriptors import describe
from coorch.models.incremental import exact_posterior
from coorch.models.mtgp import MTGPHyperparameters, aspect, fit_hyperparameters, standardise
from coorch.records import Measurement, Signal

if TYPE_CHECKING:
    from coorch.models.structured import StructuredGP


@dataclasses.dataclass
class GroundTruth:
    """Descriptor maps of each task on a held-out grid (library mm)."""

    grid: np.ndarray  # (Q, 2)
    values: np.ndarray  # (Q, T)
    tasks: list[str]  # instrument name per task


def ground_truth(
    twins: dict[str, object],
    modalities: dict[str, str],
    extent: np.ndarray,
    shape: tuple[int, int] = (60, 3),
) -> GroundTruth:
    """Noiseless descriptor maps from the twins (``twin.noiseless``: benchmarks only)."""
    grid = LibraryGeometry(extent).cell_centres(shape)  # never on the candidate grid's nodes
    names = list(twins)
    values = np.empty((len(grid), len(names)))
    for t, name in enumerate(names):
        twin, mod = twins[name], modalities[name]
        spec = twin.describe().modality(mod)
        coords = twin.modes[mod].coords
        for q, (x, y) in enumerate(grid):
            sig = Signal.from_array(mod, spec.dims, twin.noiseless(mod, x, y), coords=coords)
            values[q, t] = describe(mod, sig)[0]
    return GroundTruth(grid, values, names)


def training_arrays(
    measurements: list[Measurement], tasks: list[str], extent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x in the unit box, task index, descriptor) in acquisition order."""
    x = np.array([[m.library_x, m.library_y] for m in measurements]).reshape(-1, 2)
    t = np.array([tasks.index(m.instrument) for m in measurements], dtype=int)
    y = np.array([describe(m.modality, m.signal)[0] for m in measurements])
    return LibraryGeometry(extent).to_unit(x), t, y


def nrmse_curve(
    measurements: list[Measurement],
    truth: GroundTruth,
    extent: np.ndarray,
    hyper: MTGPHyperparameters | None = None,
    start: int = 2,
    log_tasks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised RMSE per task (n_steps, T) after each measurement, with one model fitted on
    the whole campaign (so the curve shows the value of the *data*, not of refits);
    ``log_tasks`` (T,) bool: the tasks modelled as their log (``InstrumentConfig.log_scale``)."""
    x, t, y = training_arrays(measurements, truth.tasks, extent)
    hyper = hyper or fit_hyperparameters(
        x, t, y, len(truth.tasks), aspect=aspect(extent), log_tasks=log_tasks
    )
    q = LibraryGeometry(extent).to_unit(truth.grid)
    scale = truth.values.std(0)
    steps = np.arange(start, len(y) + 1)
    err = np.empty((len(steps), len(truth.tasks)))
    for i, n in enumerate(steps):
        mean, _ = exact_posterior(_restandardised(hyper, t[:n], y[:n]), x[:n], t[:n], y[:n], q)
        err[i] = np.sqrt(((mean - truth.values) ** 2).mean(0)) / scale
    return steps, err


def _restandardised(h: MTGPHyperparameters, t: np.ndarray, y: np.ndarray) -> MTGPHyperparameters:
    """Hyperparameters fitted on all data keep their shape but centre on the data seen so far."""
    off, _ = standardise(h.warp(y, t), t, h.num_tasks)
    seen = np.isin(np.arange(h.num_tasks), t)
    return dataclasses.replace(
        h, y_offset=np.where(seen, off, h.y_offset), task_mean=np.zeros_like(h.task_mean)
    )


def plot_report(
    path: Path,
    runs: dict[str, list[Measurement]],
    curves: dict[str, tuple],
    truth: GroundTruth,
    extent: np.ndarray,
    hyper: MTGPHyperparameters,
    physics: Mapping[str, StructuredGP] | None = None,
) -> Path:
    """One figure: where each instrument measured, GP mean and uncertainty per task against the
    truth, and error vs measurements for every run.

    ``physics``: structured GPs by instrument (fitted on library mm, as
    :class:`coorch.tasks.physics.PhysicsFits` fits them); those tasks are drawn with
    the structured GP's mean and uncertainty, and its fitted centre, instead of the MTGP's: a
    map that follows the physics in the gaps is the better map of that task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = next(iter(runs))
    ms = runs[main]
    x, t, y = training_arrays(ms, truth.tasks, extent)
    n_tasks = len(truth.tasks)
    fig, axes = plt.subplots(2, n_tasks + 1, figsize=(5 * (n_tasks + 1), 8))
    ax = axes[0, 0]
    for k, name in enumerate(truth.tasks):
        pts = np.array([[m.library_x, m.library_y] for m in ms if m.instrument == name])
        ax.scatter(pts[:, 0], pts[:, 1] + 0.05 * k, s=18, label=f"{name} ({len(pts)})")
    ax.set(
        title=f"{main}: measured positions",
        xlabel="library x (mm)",
        ylabel="library y (mm)",
        xlim=extent[0],
        ylim=extent[1],
    )
    ax.legend(fontsize=8)
    line = truth.grid[:, 1] == truth.grid[len(truth.grid) // 2, 1]
    q = truth.grid[line]
    geo = LibraryGeometry(extent)
    mean, var = exact_posterior(hyper, x, t, y, geo.to_unit(q))
    physics = physics or {}
    for k, name in enumerate(truth.tasks):
        ax = axes[0, k + 1]
        label = "GP"
        if name in physics:
            label = f"structured GP ({physics[name].kind})"
            mean[:, k], var[:, k] = physics[name].predict(q)
            centre = physics[name].physics_params().get("center")
            if centre is not None:
                ax.axvline(centre, color="C3", lw=1, label=f"fitted centre {centre:.2f} mm")
        sd = np.sqrt(var[:, k])
        ax.fill_between(
            q[:, 0], mean[:, k] - 2 * sd, mean[:, k] + 2 * sd, alpha=0.25, label=f"{label} ±2σ"
        )
        ax.plot(q[:, 0], mean[:, k], label=f"{label} mean")
        ax.plot(q[:, 0], truth.values[line, k], "k--", label="ground truth")
        ax.plot(geo.from_unit(x[t == k])[:, 0], y[t == k], "o", ms=3, label="measured")
        ax.set(title=f"task {name}: descriptor along x (mid y)", xlabel="library x (mm)")
        ax.legend(fontsize=8)
    _plot_errors(axes[1], curves, truth.tasks)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_errors(axes, curves: dict[str, tuple], tasks: list[str]) -> None:
    """Error vs measurements per task, and its mean over tasks, for every run."""
    for k, name in enumerate(tasks):
        ax = axes[k]
        for run, (steps, err) in curves.items():
            ax.plot(steps, err[:, k], label=run)
        ax.set(
            title=f"{name}: error vs measurements",
            xlabel="measurements (all instruments)",
            ylabel="normalised RMSE",
            yscale="log",
        )
        ax.legend(fontsize=8)
    ax = axes[len(tasks)]
    for run, (steps, err) in curves.items():
        ax.plot(steps, err.mean(1), label=run)
    ax.set(title="mean over tasks", xlabel="measurements", ylabel="normalised RMSE", yscale="log")
    ax.legend(fontsize=8)
