"""Scoring a campaign against a twin's ground truth, and the campaign report figure.

Ground truth is the expected measured descriptor of each twin on a held-out grid (positions the
policy never chooses among), so the error measures the map the campaign learned, in the same
units the GP models (:func:`ground_truth` says why the expectation). Runs after a campaign,
never on the decision path.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coorch.geometry import LibraryGeometry
from coorch.models.descriptors import BATCHED, PHYSICS, describe
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


#: Noisy acquisitions averaged per truth position: the truth's Monte Carlo error is then
#: 1/sqrt(32) = 0.18 of one measurement's noise, 0.003-0.02 nRMSE on the twins (maps score
#: 0.1-0.5), and a 20 x 20 grid of three twins takes a few seconds, once per process.
TRUTH_DRAWS = 32
_TRUTH_CACHE: dict[tuple, np.ndarray] = {}


def ground_truth(
    twins: dict[str, object],
    modalities: dict[str, str],
    extent: np.ndarray,
    shape: tuple[int, int] = (60, 3),
    *,
    draws: int = TRUTH_DRAWS,
    draws_seed: int = 0,
) -> GroundTruth:
    """The expected *measured* descriptor of each twin on a held-out grid (benchmarks only).

    Why the expectation and not the descriptor of the noiseless signal: a descriptor is a
    nonlinear function of the signal, so noise moves its mean. The Raman centroid clips the
    spectrum at a baseline (noise above it is kept, noise below it is clipped), so the measured
    centroid sits ~10 cm^-1 above the noiseless one on smbfo, 4 measurement stds: against the
    noiseless value every map has an error floor no agent can get under. The truth at a
    position is the mean descriptor of ``draws`` noisy acquisitions of its noiseless signal
    (``twin.modes[m].noise``; drift, micrometres, left out), drawn from
    ``np.random.default_rng(draws_seed)``: the twins' own generators are never touched, so
    scoring changes nothing a campaign measures. ``draws=0``: the noiseless descriptor.

    The values are a function of the noiseless signals alone (and of the twin kind, library,
    modality and draws), so they are cached per process under a digest of those signals: a
    benchmark builds the same truth for every agent seed.
    """
    grid = LibraryGeometry(extent).cell_centres(shape)  # never on the candidate grid's nodes
    names = list(twins)
    clean = {n: [twins[n].noiseless(modalities[n], x, y) for x, y in grid] for n in names}
    key = _truth_key(twins, modalities, clean, draws, draws_seed)
    values = _TRUTH_CACHE.get(key)
    if values is None:
        rng = np.random.default_rng(draws_seed)
        values = np.empty((len(grid), len(names)))
        for t, n in enumerate(names):
            values[:, t] = expected_descriptor(twins[n], modalities[n], clean[n], draws, rng)
        if len(_TRUTH_CACHE) >= 16:
            _TRUTH_CACHE.pop(next(iter(_TRUTH_CACHE)))
        _TRUTH_CACHE[key] = values
    return GroundTruth(grid, values.copy(), names)


def _truth_key(
    twins: dict[str, object],
    modalities: dict[str, str],
    clean: dict[str, list[np.ndarray]],
    draws: int,
    draws_seed: int,
) -> tuple:
    """What the truth depends on: per task the twin kind (its noise model), library, modality,
    coords and noiseless signals in grid order; the draws and their seed."""
    h = hashlib.sha1()
    for n, signals in clean.items():
        twin, mod = twins[n], modalities[n]
        kind = f"{type(twin).__module__}.{type(twin).__qualname__}"
        h.update(f"{kind}|{twin.library.name}|{mod}|{twin.modes[mod].coords}|".encode())
        for c in signals:
            h.update(np.ascontiguousarray(c, float).tobytes())
    return h.hexdigest(), draws, draws_seed


def expected_descriptor(
    twin, modality: str, clean: list[np.ndarray], draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Per noiseless signal, the mean descriptor of ``draws`` noisy acquisitions of it (its own
    descriptor when ``draws`` is 0): :func:`descriptor_draws` averaged."""
    return descriptor_draws(twin, modality, clean, draws, rng).mean(1)


def descriptor_draws(
    twin, modality: str, clean: list[np.ndarray], draws: int, rng: np.random.Generator
) -> np.ndarray:
    """(Q, draws) per noiseless signal, the descriptors of ``draws`` noisy acquisitions of it
    ((Q, 1): its own descriptor when ``draws`` is 0): repeat acquisitions at one spot.

    Each draw is one call of the twin's noise model (it draws per acquisition: a gain, a
    cosmic-ray spike). A position's draws are described at once where the descriptor has a
    batched form (:data:`~coorch.models.descriptors.BATCHED`: a per-draw call costs ~0.2 ms,
    mostly scipy's Python wrappers, 8 s for a 20 x 20 grid of three twins)."""
    spec = twin.describe().modality(modality)
    mode = twin.modes[modality]
    template = Signal.from_array(modality, spec.dims, clean[0], coords=mode.coords)

    def each(_: Signal, values: np.ndarray) -> np.ndarray:  # one Signal, values swapped in
        return np.array(
            [describe(modality, template.model_copy(update={"values": v}))[0] for v in values]
        )

    if draws <= 0:
        return each(template, clean)[:, None]
    batched = BATCHED.get(PHYSICS.get(modality), each) if spec.dims != ["latent"] else each
    out = np.empty((len(clean), draws))
    for q, c in enumerate(clean):
        noisy = np.stack([np.asarray(mode.noise(c, rng), float) for _ in range(draws)])
        out[q] = batched(template, noisy)
    return out


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
                lo, hi = physics[name].center_interval()
                ax.axvspan(lo, hi, color="C3", alpha=0.12, label="centre, 90 % interval")
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
