"""The problems the efficiency benchmark poses: replayed real data, and digital twins.

A :class:`Problem` is what a campaign simulation needs whatever answers its measurements:
candidates, instruments with their costs, the seeds every policy starts from, and where and
against what the map is scored. A ``Measure`` answers one decision with a measurement record
and the instrument-seconds it took, so the simulated campaign runs through the same runtime
(describe, tell, refit) as a real one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from coorch.geometry import LibraryGeometry
from coorch.models.agent import farthest_point_order
from coorch.models.cost import InstrumentCost
from coorch.records import Decision, Measurement, Signal

Measure = Callable[[Decision], tuple[Measurement, float]]  # decision -> (measurement, seconds)


@dataclasses.dataclass(frozen=True)
class Problem:
    """``candidates`` (M, d) library coordinates the policies choose among; ``bounds`` (d, 2);
    ``query`` (Q, d) where the map is scored and ``truth`` (Q, T) its true values; ``seeds``
    (instrument, candidate index) measured first by every policy; ``modalities`` per
    instrument; ``passthrough``: the measurements carry their descriptor already (replay)."""

    tasks: tuple[str, ...]
    instruments: tuple[InstrumentCost, ...]
    candidates: np.ndarray
    bounds: np.ndarray
    query: np.ndarray
    truth: np.ndarray
    seeds: tuple[tuple[str, int], ...]
    modalities: dict[str, str]
    passthrough: bool = False

    @property
    def geometry(self) -> LibraryGeometry:
        return LibraryGeometry(self.bounds)


def record(d: Decision, signal: Signal, stage: tuple[float, float] | None = None) -> Measurement:
    """A simulated measurement of decision ``d``."""
    now = time.time()
    sx, sy = stage or (d.library_x, d.library_y)
    return Measurement(
        measurement_id=d.measurement_id,
        instrument=d.instrument,
        modality=d.modality,
        sample="simulated",
        library_x=d.library_x,
        library_y=d.library_y,
        stage_x=sx,
        stage_y=sy,
        started=now,
        ended=now,
        signal=signal,
        decision_id=d.decision_id,
        campaign=d.campaign,
    )


# ---------------------------------------------------------------------------- real data
@dataclasses.dataclass(frozen=True)
class Replay:
    """A replay file reduced to what the benchmark needs: ``values`` (P, T) of one latent
    component per position and modality, the published seeds and published final errors."""

    problem: Problem
    values: np.ndarray
    published: dict[str, dict[str, float]]


def load_replay(path: str | Path, component: int = 1) -> Replay:
    """Read a ``descriptor(modality, position, latent)`` file. Positions are their index along
    the library (1-D: the published run's composition axis); every position is a candidate and
    is scored; one task per modality, equal cost (the published agent ignored cost)."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        ds = ds.load()
    desc = ds["descriptor"].transpose("modality", "position", ...)
    modalities = tuple(str(m) for m in desc["modality"].values)
    values = np.asarray(desc.values, float).reshape(len(modalities), desc.sizes["position"], -1)
    values = values[:, :, component].T  # (P, T)
    n = len(values)
    candidates = np.arange(n, dtype=float)[:, None]
    instruments = tuple(InstrumentCost(m, (k,), cost_s=1.0) for k, m in enumerate(modalities))
    seeds = tuple(
        (modalities[int(m)], int(p))
        for p, m in zip(ds["seed_position"].values, ds["seed_modality"].values, strict=True)
    )
    problem = Problem(
        tasks=modalities,
        instruments=instruments,
        candidates=candidates,
        bounds=np.array([[0.0, max(n - 1.0, 1.0)]]),
        query=candidates,
        truth=values,
        seeds=seeds,
        modalities={m: m for m in modalities},
        passthrough=True,
    )
    return Replay(problem, values, published_errors(ds, modalities))


def published_errors(ds, modalities: Sequence[str]) -> dict[str, dict[str, float]]:
    """The file's published RMSE after its last step, per model and modality (task index =
    modality index), only for the variables the file has."""
    out: dict[str, dict[str, float]] = {}
    for key, var in (("mtgp", "published_rmse_mtgp"), ("gp", "published_rmse_gp")):
        if var in ds.data_vars:
            last = np.asarray(ds[var].values, float)[-1]
            out[key] = {m: float(last[k]) for k, m in enumerate(modalities) if k < len(last)}
    return out


def replay_measure(replay: Replay) -> Measure:
    """Answer a decision with the stored value at the nearest position, one second each."""
    tasks = list(replay.problem.tasks)
    cand = replay.problem.candidates

    def measure(d: Decision) -> tuple[Measurement, float]:
        p = int(np.argmin(np.abs(cand[:, 0] - d.library_x)))
        value = replay.values[p, tasks.index(d.instrument)]
        return record(d, Signal(name="descriptor", dims=["value"], values=[value])), 1.0

    return measure


# ---------------------------------------------------------------------------- digital twins
TWIN_INSTRUMENTS = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"))
TWIN_GRIDS = {  # candidates, truth
    "smbfo": ((25, 3), (60, 3)),
    "smbfo-lgd": ((25, 3), (60, 3)),
    "alscbn": ((9, 9), (20, 20)),
}
#: Modalities modelled as their log, per library, as a campaign declares them
#: (``InstrumentConfig.log_scale``): how the library was made. alscbn's Sc comes from a sputter
#: gun and falls off exponentially away from it; smbfo's Sm is a linear wedge from ~0 at.%,
#: whose log the trend cannot follow (docs/benchmarks.md, "Efficiency").
TWIN_LOG_SCALE = {"alscbn": ("wds",)}
#: A twin's repeatability is calibrated as an operator would before a campaign: this many
#: spots, evenly spread over the held-out grid, each acquired this many times.
REPEAT_SPOTS, REPEATS = 30, 32


@dataclasses.dataclass
class TwinSetup:
    """Twins of the instruments over one library, and the problem they pose."""

    problem: Problem
    twins: dict[str, object]


def twin_setup(
    library: str = "smbfo", seed: int = 0, instruments: Sequence[tuple[str, str]] = TWIN_INSTRUMENTS
) -> TwinSetup:
    """Twins seeded by the agent seed (their noise differs per seed; the truth does not).
    Candidates are grid nodes, the truth grid is cell centres (held out); each instrument is
    seeded at the two farthest-apart candidates. Cost = the modality's measurement time from
    ``describe()`` plus the twin's stage-move time. Each instrument declares its repeatability
    (:func:`repeatability`), as a campaign's ``InstrumentConfig.repeatability`` does."""
    from coorch.instrument_agents.twins import make_twin
    from coorch.tasks.report import ground_truth

    twins = {
        kind: make_twin(kind, library, seed=seed + k) for k, (kind, _) in enumerate(instruments)
    }
    modalities = dict(instruments)
    geo = LibraryGeometry(np.asarray(next(iter(twins.values())).library.extent, float))
    cand_shape, truth_shape = TWIN_GRIDS.get(library, ((15, 15), (20, 20)))
    candidates = geo.cell_centres(cand_shape)
    truth = ground_truth(twins, modalities, geo.bounds, truth_shape)
    logs = {kind: mod in TWIN_LOG_SCALE.get(library, ()) for kind, mod in instruments}
    spots = truth.grid[:: max(1, len(truth.grid) // REPEAT_SPOTS)]
    costs = tuple(
        InstrumentCost(
            kind,
            (k,),
            cost_s=twins[kind].describe().modality(mod).cost_s,
            move_cost_s_per_mm=twins[kind].move_cost_s_per_mm,
            log_scale=logs[kind],
            repeatability=repeatability(twins[kind], mod, spots, log=logs[kind]),
        )
        for k, (kind, mod) in enumerate(instruments)
    )
    ends = farthest_point_order(candidates)[:2]
    seeds = tuple((kind, int(c)) for kind, _ in instruments for c in ends)
    problem = Problem(
        tasks=tuple(twins),
        instruments=costs,
        candidates=candidates,
        bounds=geo.bounds,
        query=truth.grid,
        truth=truth.values,
        seeds=seeds,
        modalities=modalities,
    )
    return TwinSetup(problem, twins)


def twin_measure(setup: TwinSetup) -> Measure:
    """Move the twin (in its stage frame) and measure (noise, drift and all); the seconds are
    the measurement's cost plus the move's."""
    costs = {i.name: i for i in setup.problem.instruments}
    where = {name: setup.problem.geometry.centre for name in setup.twins}  # start at the centre

    def measure(d: Decision) -> tuple[Measurement, float]:
        twin, x = setup.twins[d.instrument], np.array([d.library_x, d.library_y])
        stage = twin.frame.to_stage(x[0], x[1])
        twin.move(*stage)
        signal = twin.measure(d.modality, {})
        inst = costs[d.instrument]
        move_mm = float(np.hypot(*(x - where[d.instrument])))
        seconds = inst.cost_s + inst.move_cost_s_per_mm * move_mm
        where[d.instrument] = x
        return record(d, signal, (float(stage[0]), float(stage[1]))), seconds

    return measure


def repeatability(twin, modality: str, spots: np.ndarray, *, log: bool = False) -> float:
    """The standard deviation of one measured descriptor at a spot (of its log for a ``log``
    task), pooled over ``spots`` (S, 2) library positions: :data:`REPEATS` acquisitions of each
    through the twin's noise model (drift left out, as in a short repeat series), the same for
    every agent seed. Cached per process: a benchmark builds the same twins for every seed."""
    from coorch.tasks.report import descriptor_draws

    key = (type(twin).__qualname__, twin.library.name, modality, log, spots.tobytes())
    if key not in _REPEATABILITY:
        clean = [twin.noiseless(modality, x, y) for x, y in spots]
        d = descriptor_draws(twin, modality, clean, REPEATS, np.random.default_rng(1))
        if log:
            d = np.log(np.maximum(d, np.finfo(float).tiny))
        _REPEATABILITY[key] = float(np.sqrt(d.var(1, ddof=1).mean()))
    return _REPEATABILITY[key]


_REPEATABILITY: dict[tuple, float] = {}
