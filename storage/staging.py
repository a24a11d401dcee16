"""Staging one commit: records -> new groups, chunks and per-array metadata, nothing visible.

Steps 2 and 3 of the protocol in ``zarr_table.py``: everything here only encodes objects and
updates the in-memory hierarchy; ``writer.py`` writes them and then the root (the commit). The
caller holds the campaign lock and ``Tables.mutex``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coorch.records import Decision, Measurement, Signal

from . import codec, schema
from .tables import Tables
from .zarr_table import (
    KIND_ATTR,
    ROW_DIM_ATTR,
    Column,
    TableWriter,
    array_metadata,
    encode_chunk,
    group_metadata,
)

Row = tuple[dict[str, Any], np.ndarray]


@dataclass
class Staged:
    """The objects of one commit, in write order, and what the tables learn once it is in."""

    pre: dict[str, bytes] = field(default_factory=dict)  # new groups: metadata, coords
    chunks: dict[str, bytes] = field(default_factory=dict)
    metas: dict[str, bytes] = field(default_factory=dict)  # per-array zarr.json
    done: list[tuple[TableWriter, int, list[str], int]] = field(default_factory=list)

    def merge(self, other: Staged) -> None:
        self.pre.update(other.pre)
        self.chunks.update(other.chunks)
        self.metas.update(other.metas)
        self.done += other.done

    @property
    def empty(self) -> bool:
        return not self.done and not self.pre


def create_group(
    tables: Tables,
    group: str,
    kind: str,
    row_dim: str,
    cols: list[Column],
    attrs: dict[str, Any],
    static: dict[str, tuple[np.ndarray, dict[str, Any]]],
) -> dict[str, bytes]:
    """Add a group to the (uncommitted) hierarchy; return the objects to write first."""
    nodes = tables.hierarchy.nodes
    gattrs = {**attrs, ROW_DIM_ATTR: row_dim, KIND_ATTR: kind}
    nodes[group] = group_metadata(gattrs)
    writes = {f"{group}/zarr.json": json.dumps(nodes[group]).encode()}
    writes.update(static_arrays(tables, group, static))
    for col in cols:
        meta = array_metadata(
            col.dtype, (0, *col.row_shape), (col.chunk_rows, *col.row_shape), col.dims, col.attrs
        )
        nodes[f"{group}/{col.name}"] = meta
    tables.add(
        group,
        TableWriter(tables.backend, group, cols, cols[0].name),
        {k: v for k, (v, _) in static.items()},
    )
    return writes


def static_arrays(
    tables: Tables, group: str, static: dict[str, tuple[np.ndarray, dict[str, Any]]]
) -> dict[str, bytes]:
    """Add a group's non-row arrays (a signal's own coordinates) to the uncommitted
    hierarchy; return their objects, to be written before the commit."""
    writes = {}
    for name, (values, cattrs) in static.items():
        dtype = _dtype_of(values)
        shape = tuple(values.shape)
        meta = array_metadata(dtype, shape, tuple(max(1, s) for s in shape), (name,), cattrs)
        tables.hierarchy.nodes[f"{group}/{name}"] = meta
        writes[f"{group}/{name}/zarr.json"] = json.dumps(meta).encode()
        if values.size:
            writes[f"{group}/{name}/c/0"] = encode_chunk(dtype, values)
    return writes


def check_compatible(tables: Tables, group: str, m: Measurement, values: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``m`` fits the stored signal grid of ``group``."""
    check_signal_fits(tables, group, m.signal, values)


def check_signal_fits(tables: Tables, group: str, signal: Signal, values: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``signal`` fits the stored signal grid of ``group`` (a
    modality, or the simulations table once it holds a signal)."""
    attrs = tables.hierarchy.nodes[group]["attributes"]
    if signal.name != attrs["signal"] or list(signal.dims) != attrs["signal_dims"]:
        raise ValueError(
            f"{_kind(attrs)} {group!r} stores signal {attrs['signal']!r} with dims "
            f"{attrs['signal_dims']}; got {signal.name!r} {signal.dims}"
        )
    col = tables.table(group).columns[attrs["signal"]]
    if tuple(values.shape) != col.row_shape:
        raise ValueError(
            f"{_kind(attrs)} {group!r}: signal shape {values.shape} differs from "
            f"the stored {col.row_shape}"
        )
    static = tables.static_coords(group)
    for name, v in signal.coords.items():
        stored = static.get(name)
        if stored is None or not np.array_equal(np.asarray(v, dtype=stored.dtype), stored):
            raise ValueError(
                f"{_kind(attrs)} {group!r}: coordinate {name!r} differs from the "
                "stored one (one group holds one signal grid)"
            )


def _kind(attrs: dict[str, Any]) -> str:
    return "modality" if attrs.get(KIND_ATTR) == "modality" else "group"


def stage_measurements(
    tables: Tables, ms: list[Measurement], rows: list[Row], n_journal: int = 0
) -> tuple[Staged, list[bool], list[int]]:
    """Encode the new rows of every modality: (staged, stored-now flag per record, rejected).

    Records ``i < n_journal`` come from the journal, and one that does not fit its modality is
    returned in ``rejected`` rather than raised (the caller of the original append has long
    been answered).
    """
    staged = Staged()
    rejected: list[int] = []
    flags = [False] * len(ms)
    by_group: dict[str, list[int]] = {}
    for i, m in enumerate(ms):
        by_group.setdefault(m.modality, []).append(i)
    for group, idx in by_group.items():
        new = _new_rows(tables, group, ms, rows, idx, n_journal, staged, rejected)
        if not new:
            continue
        w = tables.table(group)
        n = tables.hierarchy.rows(group)
        signal = tables.hierarchy.nodes[group]["attributes"]["signal"]
        cols = {
            name: column_values([rows[i][0][name] for i in new], w.columns[name])
            for name, _, _ in schema.MEASUREMENT_COORDS
        }
        cols[signal] = np.stack([rows[i][1] for i in new])
        staged.chunks.update(w.stage(cols, n))
        staged.metas.update(w.set_rows(tables.hierarchy, n + len(new)))
        staged.done.append((w, n + len(new), [ms[i].measurement_id for i in new], n))
        for i in new:
            flags[i] = True
    return staged, flags, rejected


def _new_rows(
    tables: Tables,
    group: str,
    ms: list[Measurement],
    rows: list[Row],
    idx: list[int],
    n_journal: int,
    staged: Staged,
    rejected: list[int],
) -> list[int]:
    """Indices (of ``idx``) to store in ``group``: not stored yet, first of their id, fitting
    the group (created from the first record if new)."""
    w = None
    new: list[int] = []
    seen: set[str] = set()
    for i in idx:
        try:
            if group not in tables.hierarchy.nodes:
                cols, gattrs = schema.measurement_columns(ms[i])
                staged.pre.update(
                    create_group(
                        tables,
                        group,
                        "modality",
                        schema.MEASUREMENT_DIM,
                        cols,
                        gattrs,
                        schema.signal_coords(ms[i]),
                    )
                )
            if w is None:
                w = tables.table(group)
                w.refresh(tables.hierarchy.rows(group))
            mid = ms[i].measurement_id
            if mid in w.ids or mid in seen:
                continue
            check_compatible(tables, group, ms[i], rows[i][1])
        except ValueError:
            if i >= n_journal:
                raise
            rejected.append(i)
            continue
        seen.add(mid)
        new.append(i)
    return new


def stage_decisions(tables: Tables, ds: list[Decision]) -> tuple[Staged, list[bool]]:
    """Encode the new rows of the decisions table: (staged, stored-now flag per decision)."""
    group = schema.DECISIONS_GROUP
    flags = [False] * len(ds)
    staged = Staged()
    if not ds:
        return staged, flags
    if group not in tables.hierarchy.nodes:
        staged.pre = create_group(
            tables,
            group,
            "decisions",
            schema.DECISION_DIM,
            schema.decision_columns(),
            {"title": "coorch campaign decisions", "Conventions": "CF-1.10"},
            {},
        )
    w = tables.table(group)
    n = tables.hierarchy.rows(group)
    w.refresh(n)
    new: list[int] = []
    seen: set[str] = set()
    for i, d in enumerate(ds):
        if d.decision_id in w.ids or d.decision_id in seen:
            continue
        seen.add(d.decision_id)
        new.append(i)
    if not new:
        return staged, flags
    added: dict[str, bytes] = {}
    for col in schema.decision_columns():  # a store written before the column existed
        if col.name not in w.columns:
            added.update(w.add_column(tables.hierarchy, col, n))
    rows = [codec.decision_row(ds[i]) for i in new]
    cols = {name: column_values([r[name] for r in rows], col) for name, col in w.columns.items()}
    staged.chunks = {**added, **w.stage(cols, n)}
    staged.metas = w.set_rows(tables.hierarchy, n + len(new))
    staged.done.append((w, n + len(new), [ds[i].decision_id for i in new], n))
    for i in new:
        flags[i] = True
    return staged, flags


def _dtype_of(values: np.ndarray) -> str:
    if values.dtype.kind in "USO":
        return "string"
    if values.dtype.kind in "iub":
        return "int64"
    return "float64"


def column_values(values: list[Any], col: Column) -> np.ndarray:
    if col.dtype == "string":
        return np.asarray(values, dtype=object)
    return np.asarray(values, dtype=col.dtype)
