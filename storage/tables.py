"""What one open store knows about its committed groups, shared by its writer and its reader.

The root document (``Hierarchy``), one ``TableWriter`` per group (its id index and tail-chunk
cache, rebuilt from the committed metadata), the signal coordinates of each modality and the
journal, all behind one re-entrant mutex: ``writer.py`` stages and commits through it,
``reader.py`` reads through it, and neither reaches into the other.
"""

from __future__ import annotations

import threading

import numpy as np

from . import schema
from .backend import Backend
from .journal import Journal
from .zarr_table import ROW_DIM_ATTR, Column, Hierarchy, TableWriter, decode_chunk


class Tables:
    """The committed groups of one store, as this process last read them."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.hierarchy = Hierarchy(backend)
        self.journal = Journal(backend)
        self.mutex = threading.RLock()
        self._tables: dict[str, TableWriter] = {}
        self._static: dict[str, dict[str, np.ndarray]] = {}

    def table(self, group: str) -> TableWriter:
        """The table of an existing group, rebuilt from its committed metadata once."""
        w = self._tables.get(group)
        if w is not None:
            return w
        node = self.hierarchy.nodes[group]
        row_dim = node["attributes"][ROW_DIM_ATTR]
        cols = []
        for name, meta in self.hierarchy.arrays(group).items():
            dims = tuple(meta["dimension_names"])
            if dims[0] != row_dim:
                continue
            cols.append(
                Column(
                    name,
                    meta["data_type"],
                    dims,
                    tuple(meta["shape"][1:]),
                    meta["attributes"],
                    meta["chunk_grid"]["configuration"]["chunk_shape"][0],
                )
            )
        key = "measurement_id" if row_dim == schema.MEASUREMENT_DIM else "decision_id"
        w = TableWriter(self.backend, group, cols, key)
        self._tables[group] = w
        return w

    def add(self, group: str, table: TableWriter, static: dict[str, np.ndarray]) -> None:
        """Register a group staged in the (uncommitted) hierarchy."""
        self._tables[group] = table
        self._static[group] = static

    def cached(self, group: str) -> TableWriter | None:
        """The table if this process already built it (no I/O: for lock-free checks)."""
        return self._tables.get(group)

    def static_coords(self, group: str) -> dict[str, np.ndarray]:
        """The signal coords (bias, wavenumber ...) of a modality group, read once."""
        if group not in self._static:
            row_dim = self.hierarchy.nodes[group]["attributes"][ROW_DIM_ATTR]
            out = {}
            for name, meta in self.hierarchy.arrays(group).items():
                if meta["dimension_names"][0] != row_dim:
                    raw = self.backend.read(f"{group}/{name}/c/0")
                    shape = tuple(meta["shape"])
                    out[name] = (
                        np.asarray([], dtype=object)
                        if raw is None
                        else decode_chunk(meta["data_type"], raw, shape)
                    )
            self._static[group] = out
        return self._static[group]

    def committed(self, group: str, record_id: str) -> bool:
        """Is the id in the committed arrays? (re-reads the root only if it changed)."""
        self.hierarchy.load()
        if group not in self.hierarchy.nodes:
            return False
        w = self.table(group)
        w.refresh(self.hierarchy.rows(group))
        return record_id in w.ids

    def sync(self) -> None:
        """Re-read the root; bring every group's id index up to the committed rows."""
        self.hierarchy.load()
        for group in self.hierarchy.groups():
            self.table(group).refresh(self.hierarchy.rows(group))

    def mismatched_arrays(self) -> list[str]:
        """``group/array`` of per-array metadata that disagrees with the committed shapes."""
        bad = []
        for group in self.hierarchy.groups():
            for name in self.table(group).repair(self.hierarchy):
                bad.append(f"{group}/{name}")
        return bad

    def forget_uncommitted(self) -> None:
        """After a failed write: drop in-memory state that may describe uncommitted data."""
        self.hierarchy.raw = None
        self._tables.clear()
        self._static.clear()
