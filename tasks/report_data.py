"""What the campaign report reads and fits: the store's records, the campaign's tasks and
geometry, and the multi-task GP that the maps and curves are drawn from.

Why apart from the page (:mod:`coorch.tasks.report_html`): these are the report's numbers, which
a notebook or a test wants without HTML; the page only lays them out. The GP is refitted here
with the project's own model code (``mtgp.fit_hyperparameters``, ``exact_posterior``) on the
physics descriptors of the stored signals (:func:`coorch.tasks.report.training_arrays`): the
store keeps no hyperparameters, and no VAE latents either (a VAE campaign's maps are therefore
of the physics descriptor).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
from pydantic import ValidationError

from coorch.deployments.config import CampaignSpec
from coorch.geometry import LibraryGeometry
from coorch.models.descriptors import PHYSICS
from coorch.models.incremental import exact_posterior
from coorch.models.mtgp import MTGPHyperparameters, aspect, fit_hyperparameters
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.report import training_arrays


@dataclasses.dataclass
class CampaignView:
    """What the report reads from a store, read once: records in time order, the campaign's
    tasks (one per instrument, spec order) and its library's geometry."""

    url: str
    metadata: dict[str, Any]
    spec: CampaignSpec | None
    measurements: list[Measurement]  # by end time
    decisions: list[Decision]  # by creation time
    tasks: list[str]
    modalities: dict[str, str]
    log_scale: dict[str, bool]
    geometry: LibraryGeometry
    extent_source: str

    @property
    def policy(self) -> str:
        if self.spec is not None:
            return self.spec.policy
        policies = Counter(d.policy for d in self.decisions if d.requests_measurement)
        return policies.most_common(1)[0][0] if policies else "unknown"


@dataclasses.dataclass
class Model:
    """The multi-task GP the maps and curves are drawn from: the describable measurements in
    time order, their training arrays (unit box), and the fitted hyperparameters (None, with
    ``why``, when there is nothing to fit or the fit failed)."""

    measurements: list[Measurement]
    x: np.ndarray
    t: np.ndarray
    y: np.ndarray
    hyper: MTGPHyperparameters | None
    why: str = ""


def read_campaign(store: CampaignStore) -> CampaignView:
    """Records, spec and geometry of the campaign in ``store`` (the spec as the flow wrote it
    in the store's metadata; a spec this code cannot read leaves the report to the records)."""
    meta = store.metadata()
    try:
        spec = CampaignSpec(**meta["spec"]) if "spec" in meta else None
    except (ValidationError, TypeError):
        spec = None
    ms = sorted(store.read_measurements(), key=lambda m: (m.ended, m.started))
    decisions = sorted(store.read_decisions(), key=lambda d: d.created)
    tasks = [i.name for i in spec.instruments] if spec is not None else []
    modalities = {i.name: i.modality for i in spec.instruments} if spec is not None else {}
    for m in ms:  # instruments the spec does not name (a spec-less store) in order of appearance
        if m.instrument not in tasks:
            tasks.append(m.instrument)
        modalities.setdefault(m.instrument, m.modality)
    log_scale = {i.name: i.log_scale for i in spec.instruments} if spec is not None else {}
    geometry, source = _geometry(spec, ms)
    return CampaignView(
        url=str(store.url),
        metadata=meta,
        spec=spec,
        measurements=ms,
        decisions=decisions,
        tasks=tasks,
        modalities=modalities,
        log_scale={n: log_scale.get(n, False) for n in tasks},
        geometry=geometry,
        extent_source=source,
    )


def _geometry(spec: CampaignSpec | None, ms: list[Measurement]) -> tuple[LibraryGeometry, str]:
    """The campaign's own geometry (:func:`coorch.tasks.setup.geometry`: the spec's extent, else
    its known library's); else the box around the measured positions. Instruments'
    ``stage_limits`` are not used: they are in each stage's frame, not the library's."""
    from coorch.tasks.setup import geometry

    if spec is not None:
        try:
            return geometry(spec), "spec" if spec.extent is not None else f"library {spec.library}"
        except KeyError:  # a library this code does not know
            pass
    xy = np.array([[m.library_x, m.library_y] for m in ms]).reshape(-1, 2)
    if len(xy) == 0:
        return LibraryGeometry(np.array([[0.0, 1.0], [0.0, 1.0]])), "none known (unit box)"
    lo, hi = xy.min(0), xy.max(0)
    pad = np.maximum(0.05 * (hi - lo), 0.5)
    return LibraryGeometry(np.column_stack([lo - pad, hi + pad])), "measured positions"


def fit_model(view: CampaignView) -> Model:
    """The MAP multi-task GP on every describable measurement (one physics descriptor per
    instrument, as :func:`coorch.tasks.report.training_arrays` computes them)."""
    usable = [m for m in view.measurements if m.instrument in view.tasks and _describable(m)]
    x, t, y = training_arrays(usable, view.tasks, view.geometry.bounds)
    keep = np.isfinite(y)  # a descriptor of a bad signal: drop it, do not fail the report
    usable, x, t, y = [m for m, k in zip(usable, keep, strict=True) if k], x[keep], t[keep], y[keep]
    if np.bincount(t, minlength=len(view.tasks)).max(initial=0) < 2:
        return Model(usable, x, t, y, None, "fewer than 2 values in every task")
    try:
        hyper = fit_hyperparameters(
            x,
            t,
            y,
            len(view.tasks),
            aspect=aspect(view.geometry.bounds),
            log_tasks=np.array([view.log_scale[n] for n in view.tasks]),
        )
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:  # torch errors: RuntimeError
        return Model(usable, x, t, y, None, f"the GP fit failed: {exc}")
    return Model(usable, x, t, y, hyper)


def _describable(m: Measurement) -> bool:
    return m.modality in PHYSICS or m.signal.dims == ["latent"]


def uncertainty_curve(
    hyper: MTGPHyperparameters, x: np.ndarray, t: np.ndarray, query: np.ndarray, points: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over ``query`` of the posterior sd relative to the prior sd, per task (S, T), after
    the first ``n`` measurements for ``points`` values of ``n`` (returned, (S,)).

    In the GP's own units (standardised, log where modelled as log), where the posterior
    variance depends on positions only: 1 is knowing nothing, 0 knowing all, whatever the
    task's units; one set of hyperparameters (fitted on everything), as ``nrmse_curve`` uses."""
    h = dataclasses.replace(
        hyper,
        y_offset=np.zeros(hyper.num_tasks),
        y_scale=np.ones(hyper.num_tasks),
        task_mean=np.zeros(hyper.num_tasks),
        log_tasks=None,
    )
    _, prior = exact_posterior(h, x[:0], t[:0], np.zeros(0), query)
    steps = np.unique(np.linspace(1, len(t), min(len(t), points)).round().astype(int))
    out = np.empty((len(steps), hyper.num_tasks))
    for i, n in enumerate(steps):
        _, var = exact_posterior(h, x[:n], t[:n], np.zeros(n), query)
        out[i] = np.sqrt(var / np.maximum(prior, 1e-300)).mean(0)
    return steps, out


def cumulative_seconds(
    ms: list[Measurement], instruments: dict[str, dict] | None = None
) -> np.ndarray:
    """Instrument-seconds spent after each measurement (in the order given).

    ``instruments``: the instruments' descriptions as the store's metadata keeps them. A twin
    runs ``time_scale`` times faster than the instrument it stands for, so its wall-clock
    durations are divided by it; an instant twin (``time_scale`` 0) is charged its modality's
    ``cost_s``. Without descriptions, wall-clock durations."""
    return np.cumsum([_instrument_seconds(m, (instruments or {}).get(m.instrument)) for m in ms])


def _instrument_seconds(m: Measurement, desc: dict | None) -> float:
    wall = max(m.ended - m.started, 0.0)
    if not desc:
        return wall
    scale = float(desc.get("time_scale", 1.0) or 0.0)
    if scale > 0:
        return wall / scale
    cost = [
        mod.get("cost_s") for mod in desc.get("modalities", []) if mod.get("name") == m.modality
    ]
    return float(cost[0]) if cost and cost[0] is not None else wall
