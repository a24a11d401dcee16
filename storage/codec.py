"""Records <-> rows: the encoders and the decoders of the store, side by side.

``schema.py`` says what the arrays are; this module says how a record becomes a row of them and
how a row becomes a record again, as xarray's ``VariableCoder`` keeps ``encode`` and ``decode``
together. The identity ``decode(encode(r)) == r`` holds for every record up to these
normalisations, which the round-trip test (``tests/test_storage_codec.py``) states:

- measurements: ``campaign`` is not stored (decodes to ``None``); ``signal.long_name`` equal to
  the signal name, or empty, decodes to ``""``; ``coord_units`` of names that are not coordinates
  are not stored; values come back as nested lists of floats;
- measurements and decisions: an empty ``decision_id`` / ``flow_run_id`` / ``task_run_id`` /
  ``campaign`` decodes to ``None`` (they are stored as ``''`` when absent);
- decisions: ``human_input`` is a :class:`HumanInput` as a JSON object; ``"null"`` decodes to
  ``None``.

The decoders are column-wise (``*_from_columns``: one ``tolist`` per column, then one record per
row) because a campaign is read back whole on resume; ``*_from_row`` decode one row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coorch.records import Decision, Measurement, Signal

from .schema import DECISION_COLUMNS, MEASUREMENT_COORDS

_OPTIONAL_IDS = ("trained_since", "flow_run_id", "task_run_id", "campaign")
_NAN_TO_NONE = ("library_x", "library_y", "created")  # acquisition_value keeps its NaN


# -- measurements ---------------------------------------------------------------------------------
def content_hash(values: np.ndarray) -> str:
    """sha256 of the data bytes, in the stored representation (float64 LE, C order)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def measurement_row(m: Measurement) -> tuple[dict[str, Any], np.ndarray]:
    """One measurement as scalar column values and its data array (hash included)."""
    values = m.signal.array()
    row = {
        "measurement_id": m.measurement_id,
        "library_x": float(m.library_x),
        "library_y": float(m.library_y),
        "stage_x": float(m.stage_x),
        "stage_y": float(m.stage_y),
        "instrument": m.instrument,
        "sample": m.sample,
        "start_time": float(m.started),
        "end_time": float(m.ended),
        "content_hash": content_hash(values),
        "decision_id": m.decision_id or "",
        "flow_run_id": m.flow_run_id or "",
    }
    return row, values


@dataclass(frozen=True)
class SignalGrid:
    """What every measurement of one modality shares: the signal's name, dims, units, coords.

    Encoded once per modality group (group attrs, the signal array's attrs, the coordinate
    arrays: ``schema.measurement_columns`` and ``schema.signal_coords``).
    """

    name: str
    dims: tuple[str, ...]
    units: str = ""
    long_name: str = ""
    coords: Mapping[str, list[Any]] = field(default_factory=dict)
    coord_units: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, m: Measurement) -> SignalGrid:
        """The grid of a measurement's signal, as the store keeps it."""
        return cls.of_signal(m.signal)

    @classmethod
    def of_signal(cls, sig: Signal) -> SignalGrid:
        """The grid of a signal (a measurement's, a simulation's), as the store keeps it."""
        coords = {k: np.asarray(v).tolist() for k, v in sig.coords.items()}
        return cls(
            sig.name,
            tuple(sig.dims),
            sig.units,
            "" if sig.long_name == sig.name else sig.long_name,
            coords,
            {k: u for k, u in sig.coord_units.items() if k in coords},
        )

    @classmethod
    def from_metadata(
        cls,
        group_attrs: Mapping[str, Any],
        arrays: Mapping[str, Mapping[str, Any]],
        coords: Mapping[str, np.ndarray],
    ) -> SignalGrid:
        """Decode a modality group: its attrs, its arrays' zarr metadata (name -> zarr.json
        document) and the values of its signal coordinates (name -> array)."""
        name = str(group_attrs["signal"])
        data_attrs = arrays[name].get("attributes", {})
        long_name = str(data_attrs.get("long_name", ""))
        units = {
            k: str(arrays[k]["attributes"]["units"])
            for k in coords
            if "units" in arrays.get(k, {}).get("attributes", {})
        }
        return cls(
            name,
            tuple(group_attrs["signal_dims"]),
            str(data_attrs.get("units", "")),
            "" if long_name == name else long_name,
            {k: np.asarray(v).tolist() for k, v in coords.items()},
            units,
        )

    def signal(self, values: Any) -> Signal:
        """A validated signal on this grid (coords and units copied, not shared)."""
        coords = {k: list(v) for k, v in self.coords.items()}
        return Signal(
            name=self.name,
            dims=list(self.dims),
            values=values,
            units=self.units,
            long_name=self.long_name,
            coords=coords,
            coord_units=dict(self.coord_units),
        )


def measurement_from_row(
    row: Mapping[str, Any], values: np.ndarray, modality: str, grid: SignalGrid
) -> Measurement:
    """Inverse of :func:`measurement_row` (the hash is dropped: ``verify`` checks it)."""
    return _measurement(row, np.asarray(values, dtype=float).tolist(), modality, grid.signal([]))


def measurements_from_columns(
    columns: Mapping[str, np.ndarray], modality: str, grid: SignalGrid
) -> list[Measurement]:
    """Every row of a modality's columns (name -> array over the measurement dim), in order.

    The signal coordinates are validated once; the records of one modality share them.
    """
    names = [name for name, _, _ in MEASUREMENT_COORDS]
    scalars = {name: np.asarray(columns[name]).tolist() for name in names}
    data = np.asarray(columns[grid.name], dtype=float)
    template = grid.signal([])
    return [
        _measurement({k: scalars[k][i] for k in names}, data[i].tolist(), modality, template)
        for i in range(len(data))
    ]


def _measurement(
    row: Mapping[str, Any], values: list[Any], modality: str, template: Signal
) -> Measurement:
    return Measurement(
        measurement_id=str(row["measurement_id"]),
        instrument=str(row["instrument"]),
        modality=modality,
        sample=str(row["sample"]),
        library_x=float(row["library_x"]),
        library_y=float(row["library_y"]),
        stage_x=float(row["stage_x"]),
        stage_y=float(row["stage_y"]),
        started=float(row["start_time"]),
        ended=float(row["end_time"]),
        signal=template.model_copy(update={"values": values}),
        decision_id=str(row["decision_id"]) or None,
        flow_run_id=str(row["flow_run_id"]) or None,
    )


# -- decisions ------------------------------------------------------------------------------------
def decision_row(d: Decision) -> dict[str, Any]:
    acq = d.acquisition_value
    return {
        "decision_id": d.decision_id,
        "measurement_id": d.measurement_id,
        "instrument": d.instrument,
        "modality": d.modality,
        "library_x": float(d.library_x),
        "library_y": float(d.library_y),
        "policy": d.policy,
        "model_version": d.model_version,
        "trained_on": json.dumps(list(d.trained_on)),
        "trained_since": d.trained_since or "",
        "pending": json.dumps(list(d.pending)),
        "acquisition_value": float(acq) if acq is not None else float("nan"),
        "n_candidates": int(d.n_candidates),
        "human_input": json.dumps(d.human_input and d.human_input.model_dump(mode="json")),
        "created": float(d.created),
        "flow_run_id": d.flow_run_id or "",
        "task_run_id": d.task_run_id or "",
        "campaign": d.campaign or "",
    }


def decision_from_row(row: Mapping[str, Any]) -> Decision:
    """Inverse of :func:`decision_row`: JSON lists parsed, ``human_input`` ``None`` when empty,
    NaN positions/times -> ``None`` (the record then refuses them), ``acquisition_value``
    keeps NaN."""
    rec = {name: row[name] for name, _, _ in DECISION_COLUMNS}
    for key in ("trained_on", "pending"):
        rec[key] = json.loads(rec[key]) if rec[key] else []
    hi = json.loads(rec["human_input"]) if rec["human_input"] else None
    rec["human_input"] = hi if isinstance(hi, dict) else None
    for key in _OPTIONAL_IDS:
        rec[key] = str(rec[key]) or None
    for key in _NAN_TO_NONE:
        v = rec[key]
        rec[key] = None if isinstance(v, float) and math.isnan(v) else v
    return Decision(**rec)


#: Decision columns a store written before they existed lacks: read as this value in every row.
_ADDED_DECISION_COLUMNS = {"trained_since": ""}


def decision_lists(columns: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """The decisions table's columns as lists (name -> values over the decision dim); a
    column added to the schema since the store was written (``trained_since``) is filled."""
    n = len(columns["decision_id"])
    return {
        name: (
            np.asarray(columns[name]).tolist()
            if name in columns
            else [_ADDED_DECISION_COLUMNS[name]] * n
        )
        for name, _, _ in DECISION_COLUMNS
    }


def decisions_from_columns(columns: Mapping[str, np.ndarray]) -> list[Decision]:
    """Every row of the decisions table (name -> array over the decision dim), in row order."""
    lists = decision_lists(columns)
    n = len(lists["decision_id"])
    return [decision_from_row({k: v[i] for k, v in lists.items()}) for i in range(n)]


__all__ = [
    "SignalGrid",
    "content_hash",
    "decision_from_row",
    "decision_row",
    "decision_lists",
    "decisions_from_columns",
    "measurement_from_row",
    "measurement_row",
    "measurements_from_columns",
]
