"""What the store's arrays are: columns of a modality group, the decisions and simulations tables.

This is the one place that maps the shared records (``coorch.records``) onto named, CF-style
zarr arrays, so that a reader with only xarray can understand a campaign years later. How one
record becomes one row of these arrays, and back, is ``codec.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from coorch.records import Measurement

from .zarr_table import Column

MEASUREMENT_DIM = "measurement"
DECISION_DIM = "decision"
DECISIONS_GROUP = "decisions"
SIMULATION_DIM = "simulation"
SIMULATIONS_GROUP = "simulations"
#: The id column of each kind of table, by its row dimension (the column appends de-duplicate on).
ROW_KEYS = {
    MEASUREMENT_DIM: "measurement_id",
    DECISION_DIM: "decision_id",
    SIMULATION_DIM: "simulation_id",
}
#: Simulation parameters and outputs are one float64 column each, named with these prefixes.
PARAM_PREFIX = "param_"
OUTPUT_PREFIX = "out_"
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
TIME_ATTRS = {"units": TIME_UNITS, "calendar": "proleptic_gregorian", "time_zone": "UTC"}
HASH_DESCRIPTION = "sha256 of the signal values as float64, little-endian, C order"
#: Target uncompressed size of one data chunk: small enough that rewriting the tail chunk on
#: every append costs well under a millisecond, large enough to keep object counts sane.
DATA_CHUNK_BYTES = 64 * 1024

#: Per-measurement coordinates, in order: (name, dtype, attrs).
MEASUREMENT_COORDS: list[tuple[str, str, dict[str, Any]]] = [
    ("measurement_id", "string", {"long_name": "measurement id (the instrument request id)"}),
    ("library_x", "float64", {"units": "mm", "long_name": "library x (from fiducial origin)"}),
    ("library_y", "float64", {"units": "mm", "long_name": "library y (from fiducial origin)"}),
    ("stage_x", "float64", {"units": "mm", "long_name": "instrument stage x"}),
    ("stage_y", "float64", {"units": "mm", "long_name": "instrument stage y"}),
    ("instrument", "string", {"long_name": "instrument id"}),
    ("sample", "string", {"long_name": "sample (library) id"}),
    ("start_time", "float64", {**TIME_ATTRS, "long_name": "acquisition start"}),
    ("end_time", "float64", {**TIME_ATTRS, "long_name": "acquisition end"}),
    ("content_hash", "string", {"long_name": HASH_DESCRIPTION}),
    (
        "decision_id",
        "string",
        {"long_name": "decision that requested this measurement ('' if none)"},
    ),
    ("flow_run_id", "string", {"long_name": "Prefect flow run id ('' if none)"}),
]

#: The decisions table: (name, dtype, attrs). List fields are JSON arrays in a string.
DECISION_COLUMNS: list[tuple[str, str, dict[str, Any]]] = [
    ("decision_id", "string", {"long_name": "decision id"}),
    ("measurement_id", "string", {"long_name": "request id of the measurement it asked for"}),
    ("instrument", "string", {"long_name": "instrument asked to measure"}),
    ("modality", "string", {"long_name": "modality asked for"}),
    ("library_x", "float64", {"units": "mm", "long_name": "chosen library x"}),
    ("library_y", "float64", {"units": "mm", "long_name": "chosen library y"}),
    ("policy", "string", {"long_name": "policy that decided"}),
    ("model_version", "string", {"long_name": "surrogate model version"}),
    (
        "trained_on",
        "string",
        {
            "long_name": "measurement ids the model read since trained_since (all, if empty)",
            "encoding": "JSON array of strings",
        },
    ),
    (
        "trained_since",
        "string",
        {"long_name": "decision whose training set this one extends ('' if none)"},
    ),
    (
        "pending",
        "string",
        {
            "long_name": "measurement ids pending at decision time",
            "encoding": "JSON array of strings",
        },
    ),
    ("acquisition_value", "float64", {"long_name": "acquisition function value", "units": "1"}),
    ("n_candidates", "int64", {"long_name": "number of candidates considered", "units": "1"}),
    (
        "human_input",
        "string",
        {"long_name": "operator input, JSON (null if none)", "encoding": "JSON value"},
    ),
    ("created", "float64", {**TIME_ATTRS, "long_name": "decision time"}),
    ("flow_run_id", "string", {"long_name": "Prefect flow run id ('' if none)"}),
    ("task_run_id", "string", {"long_name": "Prefect task run id that decided ('' if none)"}),
    ("campaign", "string", {"long_name": "campaign name ('' if none)"}),
]


#: The fixed columns of the simulations table: (name, dtype, attrs). ``simulations.py`` adds a
#: ``param_<name>`` / ``out_<name>`` column per parameter / output name the first time one is
#: stored, and the simulated signal (``simulation x signal dims``) with the first signal.
SIMULATION_COLUMNS: list[tuple[str, str, dict[str, Any]]] = [
    ("simulation_id", "string", {"long_name": "simulation id"}),
    ("campaign", "string", {"long_name": "campaign name"}),
    ("flow_run_id", "string", {"long_name": "Prefect flow run id ('' if none)"}),
    ("requested_at", "float64", {**TIME_ATTRS, "long_name": "simulation requested"}),
    ("finished_at", "float64", {**TIME_ATTRS, "long_name": "simulation finished (or dropped)"}),
    ("composition", "float64", {"units": "1", "long_name": "Sm fraction simulated"}),
    ("status", "string", {"long_name": "done, failed or dropped"}),
    ("attempts", "int64", {"units": "1", "long_name": "attempts made"}),
    ("error", "string", {"long_name": "error of the last attempt ('' if none)"}),
    ("worker", "string", {"long_name": "Dask worker that ran it ('' if none)"}),
    ("runtime_s", "float64", {"units": "s", "long_name": "run time"}),
    ("surrogate_version", "string", {"long_name": "theory surrogate that asked for it"}),
    ("acquisition_value", "float64", {"units": "1", "long_name": "acquisition function value"}),
    (
        "n_measurements",
        "int64",
        {"units": "1", "long_name": "measurements the surrogate had read"},
    ),
    ("n_simulations", "int64", {"units": "1", "long_name": "simulations the surrogate had read"}),
]


def data_chunk_rows(row_shape: tuple[int, ...]) -> int:
    row_bytes = 8 * math.prod(row_shape)
    return int(min(1024, max(8, DATA_CHUNK_BYTES // max(row_bytes, 1))))


def measurement_columns(m: Measurement) -> tuple[list[Column], dict[str, Any]]:
    """Columns for the modality of ``m``, and the group attrs (signal name, dims, coords)."""
    sig = m.signal
    arr = sig.array()
    row_shape = tuple(int(s) for s in arr.shape)
    if len(row_shape) != len(sig.dims):
        raise ValueError(f"signal {sig.name!r}: dims {sig.dims} but values of shape {row_shape}")
    coord_names = " ".join(name for name, _, _ in MEASUREMENT_COORDS)
    cols = [
        Column(name, dtype, (MEASUREMENT_DIM,), (), dict(attrs))
        for name, dtype, attrs in MEASUREMENT_COORDS
    ]
    data_attrs: dict[str, Any] = {
        "long_name": sig.long_name or sig.name,
        "coordinates": coord_names,
    }
    if sig.units:
        data_attrs["units"] = sig.units
    cols.append(
        Column(
            sig.name,
            "float64",
            (MEASUREMENT_DIM, *sig.dims),
            row_shape,
            data_attrs,
            data_chunk_rows(row_shape),
        )
    )
    group_attrs = {
        "modality": m.modality,
        "signal": sig.name,
        "signal_dims": list(sig.dims),
        "Conventions": "CF-1.10",
        "title": f"coorch campaign, modality {m.modality}",
    }
    return cols, group_attrs


def signal_coords(m: Measurement) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The signal's own coordinates (bias, wavenumber, element names ...) with CF attrs."""
    out = {}
    for name, values in m.signal.coords.items():
        arr = np.asarray(values)
        attrs: dict[str, Any] = {"long_name": name}
        if name in m.signal.coord_units:
            attrs["units"] = m.signal.coord_units[name]
        out[name] = (arr, attrs)
    return out


def decision_columns() -> list[Column]:
    return [
        Column(name, dtype, (DECISION_DIM,), (), dict(attrs), 256)
        for name, dtype, attrs in DECISION_COLUMNS
    ]


def simulation_columns() -> list[Column]:
    return [
        Column(name, dtype, (SIMULATION_DIM,), (), dict(attrs), 256)
        for name, dtype, attrs in SIMULATION_COLUMNS
    ]
