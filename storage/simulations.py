"""Simulations <-> rows of the ``simulations`` group: the encoder and the decoder side by side.

Why a table with columns that appear over time: a co-navigation campaign steers theory
parameters whose names only the simulator knows (``s_c``, ``depol`` ...), and a plain xarray
reader should find each as a float variable along ``simulation`` (``param_s_c``), not as JSON
in a string. So each parameter and output name gets its own float64 column the first time a
simulation carries it (NaN in the rows before), and the simulated signal, a loop with the dims
and coords of a ``pfm_loop`` measurement, becomes a ``(simulation, <signal dims>)`` array with
the first simulation that has one (NaN in the rows of failed and dropped runs). Adding the
columns is ``sim_staging.py``; this module says what a row is and what a record is.

The identity ``decode(encode(s)) == s`` holds up to these normalisations (as in ``codec.py``):

- ``flow_run_id``, ``error``, ``worker`` stored as ``''`` when absent decode to ``None``;
- a parameter or output whose value is NaN decodes as absent (a NaN cell is how the table says
  "this simulation has no such key");
- a signal of only NaN decodes to ``None`` (NaN fills the rows of runs without one); its
  ``long_name`` equal to its name, or empty, decodes to ``""``; ``coord_units`` of
  names that are not coordinates are not stored; values come back as nested lists of floats;
- times come back in UTC, to the microsecond.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from coorch.records import Simulation

from .codec import SignalGrid
from .schema import OUTPUT_PREFIX, PARAM_PREFIX, SIMULATION_COLUMNS, SIMULATION_DIM

FIXED = tuple(name for name, _, _ in SIMULATION_COLUMNS)
_OPTIONAL = ("flow_run_id", "error", "worker")


def param_column(name: str) -> str:
    return PARAM_PREFIX + name


def output_column(name: str) -> str:
    return OUTPUT_PREFIX + name


def check_names(s: Simulation) -> None:
    """Raise ``ValueError`` for a simulation whose names cannot become arrays of the group:
    an empty id or one starting with '.', a parameter or output name that is empty or holds
    '/', '\\' or NUL, a signal (or signal coordinate or dim) named like a column of the table
    or ``simulation``, a signal whose values do not have its dims. Checked before the append
    is acknowledged."""
    if not s.simulation_id or s.simulation_id.startswith("."):
        raise ValueError(f"simulation id {s.simulation_id!r} is empty or starts with '.'")
    for kind, names in (("parameter", s.parameters), ("output", s.outputs)):
        for name in names:
            if not name or any(c in name for c in "/\\\0"):
                raise ValueError(f"simulation {kind} name {name!r} cannot name an array")
    if s.signal is None:
        return
    sig = s.signal
    taken = [sig.name, *sig.dims, *sig.coords]
    for name in taken:
        if (
            name in FIXED
            or name.startswith((PARAM_PREFIX, OUTPUT_PREFIX))
            or name == SIMULATION_DIM
            or not name
            or any(c in name for c in "/\\\0")
            or name.startswith(".")
        ):
            raise ValueError(f"simulated signal name {name!r} collides with the table's columns")
    if len(set(taken[: 1 + len(sig.dims)])) != 1 + len(sig.dims):
        raise ValueError(f"simulated signal {sig.name!r}: its name is one of its dims")
    shape = sig.array().shape
    if len(shape) != len(sig.dims):
        raise ValueError(f"simulated signal {sig.name!r}: dims {sig.dims}, values {shape}")


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def simulation_row(s: Simulation) -> tuple[dict[str, Any], np.ndarray | None]:
    """One simulation as column values (fixed, then ``param_*`` and ``out_*``) and its signal
    values (None without a signal)."""
    row: dict[str, Any] = {
        "simulation_id": s.simulation_id,
        "campaign": s.campaign,
        "flow_run_id": s.flow_run_id or "",
        "requested_at": s.requested_at.timestamp(),
        "finished_at": s.finished_at.timestamp(),
        "composition": float(s.composition),
        "status": s.status,
        "attempts": int(s.attempts),
        "error": s.error or "",
        "worker": s.worker or "",
        "runtime_s": float(s.runtime_s),
        "surrogate_version": s.surrogate_version,
        "acquisition_value": float(s.acquisition_value),
        "n_measurements": int(s.n_measurements),
        "n_simulations": int(s.n_simulations),
    }
    row.update({param_column(k): float(v) for k, v in s.parameters.items()})
    row.update({output_column(k): float(v) for k, v in s.outputs.items()})
    return row, None if s.signal is None else s.signal.array()


def _prefixed(row: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {
        k[len(prefix) :]: float(v)
        for k, v in row.items()
        if k.startswith(prefix) and not math.isnan(float(v))
    }


def simulation_from_row(
    row: Mapping[str, Any], values: np.ndarray | None, grid: SignalGrid | None
) -> Simulation:
    """Inverse of :func:`simulation_row`; a signal only for a done run with non-NaN values."""
    rec = {name: row[name] for name in FIXED}
    for key in ("simulation_id", "campaign", "status", "surrogate_version"):
        rec[key] = str(rec[key])
    for key in _OPTIONAL:
        rec[key] = str(rec[key]) or None
    rec["requested_at"] = _utc(float(rec["requested_at"]))
    rec["finished_at"] = _utc(float(rec["finished_at"]))
    signal = None
    if grid is not None and values is not None and rec["status"] == "done":
        arr = np.asarray(values, dtype=float)
        if not np.isnan(arr).all():
            signal = grid.signal(arr.tolist())
    return Simulation(
        **rec,
        parameters=_prefixed(row, PARAM_PREFIX),
        outputs=_prefixed(row, OUTPUT_PREFIX) if rec["status"] == "done" else {},
        signal=signal,
    )


def simulations_from_columns(
    columns: Mapping[str, np.ndarray], grid: SignalGrid | None
) -> list[Simulation]:
    """Every row of the simulations table (column name -> array over ``simulation``)."""
    names = [n for n in columns if grid is None or n != grid.name]
    lists = {n: np.asarray(columns[n]).tolist() for n in names}
    data = None if grid is None else np.asarray(columns[grid.name], dtype=float)
    n_rows = len(lists["simulation_id"])
    return [
        simulation_from_row(
            {k: lists[k][i] for k in names}, None if data is None else data[i], grid
        )
        for i in range(n_rows)
    ]


__all__ = [
    "check_names",
    "output_column",
    "param_column",
    "simulation_from_row",
    "simulation_row",
    "simulations_from_columns",
]
