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
        self._checked: dict[str, bytes | None] = {}  # root document each table was checked at

    def table(self, group: str) -> TableWriter:
        """The table of an existing group, rebuilt from its committed metadata once (and given
        the columns another writer added since, see :meth:`_recheck`)."""
        w = self._tables.get(group)
        if w is not None:
            self._recheck(group, w)
            return w
        row_dim = self.hierarchy.nodes[group]["attributes"][ROW_DIM_ATTR]
        w = TableWriter(self.backend, group, self._columns(group), schema.ROW_KEYS[row_dim])
        self._tables[group] = w
        self._checked[group] = self.hierarchy.raw
        return w

    def _columns(self, group: str) -> list[Column]:
        row_dim = self.hierarchy.nodes[group]["attributes"][ROW_DIM_ATTR]
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
        return cols

    def _recheck(self, group: str, w: TableWriter) -> None:
        """Once per root document read: add the columns another writer committed since this
        process built ``w`` (the simulations table grows a column per new parameter name and
        one for the signal), and forget the group's signal coords if it gained any. Without
        this, a commit from here would leave such a column at its old length."""
        if self._checked.get(group) is self.hierarchy.raw:
            return
        self._checked[group] = self.hierarchy.raw
        added = False
        for col in self._columns(group):
            if col.name not in w.columns:
                w.columns[col.name] = col
                added = True
        if added:
            self._static.pop(group, None)

    def add(self, group: str, table: TableWriter, static: dict[str, np.ndarray]) -> None:
        """Register a group staged in the (uncommitted) hierarchy."""
        self._tables[group] = table
        self._static[group] = static

    def cached(self, group: str) -> TableWriter | None:
        """The table if this process already built it (no I/O: for lock-free checks)."""
        return self._tables.get(group)

    def static_coords(self, group: str) -> dict[str, np.ndarray]:
        """The signal coords (bias, wavenumber ...) of a group, read once (again if another
        writer gave the group a signal since)."""
        if group in self._tables:
            self._recheck(group, self._tables[group])
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
        self._checked.clear()
