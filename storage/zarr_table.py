"""Append rows to zarr v3 arrays cheaply and atomically: the engine under the campaign store.

Why not zarr-python's own API for appends: ``resize`` + ``__setitem__`` on the thirteen arrays of
one measurement costs ~75 ms (each call goes through the async machinery and rewrites metadata),
three times the whole flow budget. The zarr v3 format itself is simple, so this module writes it
directly, and plain ``xarray.open_zarr`` / ``zarr.open_group`` read the result.

Protocol of one append (always under the campaign lock, see ``backend.py``):

1. Re-read the root ``zarr.json``. Its *consolidated metadata* holds the shape of every array
   and is the single commit point: xarray opens the root's consolidated metadata first.
2. Write the chunks that hold the new rows. Rows beyond the committed length are invisible to
   every reader, and every chunk object is replaced whole (atomic rename / one PUT), so the
   committed rows that share the tail chunk are never seen half-written.
3. Write each array's own ``zarr.json`` with the new shape (for readers that skip
   consolidated metadata).
4. Write the root ``zarr.json`` with the new shapes: the commit. A crash before this point
   leaves the previous state; the next writer overwrites the orphan rows and rewrites the
   per-array metadata (``TableWriter.repair``).

The tail chunk of each column is cached in memory (valid while nobody else committed), so an
append encodes and writes a handful of small chunks and never rewrites a whole array.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numpy as np

from .backend import Backend

ROW_DIM_ATTR = "coorch_row_dim"
KIND_ATTR = "coorch_kind"
ZSTD_LEVEL = 1

_ZSTD = numcodecs.Zstd(level=ZSTD_LEVEL)
_VLEN = numcodecs.VLenUTF8()


@dataclass(frozen=True)
class Column:
    """One array of a table group; ``dims[0]`` is the row dimension."""

    name: str
    dtype: str  # "float64" | "int64" | "string"
    dims: tuple[str, ...]
    row_shape: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    chunk_rows: int = 1024

    @property
    def fill(self) -> Any:
        return {"float64": np.nan, "int64": 0, "string": ""}[self.dtype]

    def empty_chunk(self) -> np.ndarray:
        shape = (self.chunk_rows, *self.row_shape)
        if self.dtype == "string":
            return np.full(shape, "", dtype=object)
        return np.full(shape, self.fill, dtype=self.dtype)


def _codecs(dtype: str) -> list[dict[str, Any]]:
    first = (
        {"name": "vlen-utf8", "configuration": {}}
        if dtype == "string"
        else {"name": "bytes", "configuration": {"endian": "little"}}
    )
    return [first, {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}]


def _fill_json(dtype: str) -> Any:
    return {"float64": "NaN", "int64": 0, "string": ""}[dtype]


def array_metadata(
    dtype: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dims: tuple[str, ...],
    attrs: dict[str, Any],
) -> dict[str, Any]:
    """A zarr v3 array ``zarr.json`` document (the same fields zarr-python writes)."""
    return {
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_json(dtype),
        "codecs": _codecs(dtype),
        "attributes": attrs,
        "dimension_names": list(dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def group_metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": attrs, "zarr_format": 3, "node_type": "group"}


def encode_chunk(dtype: str, block: np.ndarray) -> bytes:
    if dtype == "string":
        raw = _VLEN.encode(np.asarray(block, dtype=object).ravel())
    else:
        raw = np.ascontiguousarray(block, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return bytes(_ZSTD.encode(raw))


def decode_chunk(dtype: str, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    raw = _ZSTD.decode(data)
    if dtype == "string":
        return np.asarray(_VLEN.decode(raw), dtype=object).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()


def chunk_key(group: str, name: str, index: int, ndim: int) -> str:
    return f"{group}/{name}/c/{index}" + "/0" * (ndim - 1)


class Hierarchy:
    """The root ``zarr.json`` with inline consolidated metadata for every node below it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.raw: bytes | None = None
        self.doc: dict[str, Any] = {}

    def load(self) -> bool:
        """Re-read the root document; True when it changed since the last load/commit."""
        raw = self.backend.read("zarr.json")
        if raw is None:
            raise FileNotFoundError(f"no campaign store at {self.backend.url}")
        if raw == self.raw:
            return False
        self.raw = raw
        self.doc = json.loads(raw)
        self.doc.setdefault(
            "consolidated_metadata", {"kind": "inline", "must_understand": False, "metadata": {}}
        )
        return True

    @staticmethod
    def new_document(attrs: dict[str, Any]) -> dict[str, Any]:
        doc = group_metadata(attrs)
        doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
        return doc

    @property
    def nodes(self) -> dict[str, Any]:
        return self.doc["consolidated_metadata"]["metadata"]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.doc.setdefault("attributes", {})

    def groups(self, kind: str | None = None) -> list[str]:
        out = []
        for path, node in self.nodes.items():
            if (
                node.get("node_type") == "group"
                and "/" not in path
                and (kind is None or node.get("attributes", {}).get(KIND_ATTR) == kind)
            ):
                out.append(path)
        return sorted(out)

    def arrays(self, group: str) -> dict[str, dict[str, Any]]:
        prefix = group + "/"
        return {
            p[len(prefix) :]: n
            for p, n in self.nodes.items()
            if p.startswith(prefix) and n.get("node_type") == "array"
        }

    def rows(self, group: str) -> int:
        """Committed number of rows of a table group (0 if the group does not exist)."""
        node = self.nodes.get(group)
        if node is None:
            return 0
        row_dim = node["attributes"][ROW_DIM_ATTR]
        for meta in self.arrays(group).values():
            if meta["dimension_names"][0] == row_dim:
                return int(meta["shape"][0])
        return 0

    def encode(self) -> bytes:
        return json.dumps(self.doc, separators=(",", ":"), allow_nan=False).encode()

    def commit(self) -> None:
        """Write the root document: every staged shape becomes visible at once."""
        raw = self.encode()
        self.backend.write_many({"zarr.json": raw})
        self.raw = raw


class TableWriter:
    """Appends rows to the row-dimension columns of one group; all share one length."""

    def __init__(self, backend: Backend, group: str, columns: list[Column], key: str) -> None:
        self.backend = backend
        self.group = group
        self.columns = {c.name: c for c in columns}
        self.key = key
        self._cache: dict[str, tuple[int, np.ndarray]] = {}
        self._cache_rows = -1
        self.ids: dict[str, int] = {}
        self._ids_rows = 0

    # -- reading back --------------------------------------------------------------------------
    def _block(self, col: Column, index: int) -> np.ndarray:
        hit = self._cache.get(col.name)
        if hit is not None and hit[0] == index:
            return hit[1]
        raw = self.backend.read(chunk_key(self.group, col.name, index, 1 + len(col.row_shape)))
        block = (
            col.empty_chunk()
            if raw is None
            else decode_chunk(col.dtype, raw, (col.chunk_rows, *col.row_shape))
        )
        self._cache[col.name] = (index, block)
        return block

    def read_column(self, name: str, start: int, stop: int) -> np.ndarray:
        col = self.columns[name]
        parts = []
        for index in range(start // col.chunk_rows, math.ceil(stop / col.chunk_rows)):
            lo = max(start, index * col.chunk_rows) - index * col.chunk_rows
            hi = min(stop, (index + 1) * col.chunk_rows) - index * col.chunk_rows
            parts.append(self._block(col, index)[lo:hi])
        if not parts:
            return np.empty(
                (0, *col.row_shape), dtype=object if col.dtype == "string" else col.dtype
            )
        return np.concatenate(parts)

    def refresh(self, committed_rows: int) -> None:
        """Bring the id index and the chunk cache in line with what is committed."""
        if committed_rows != self._cache_rows:
            self._cache.clear()
            self._cache_rows = committed_rows
        if committed_rows > self._ids_rows:
            new = self.read_column(self.key, self._ids_rows, committed_rows)
            for i, v in enumerate(new, start=self._ids_rows):
                self.ids.setdefault(str(v), i)
            self._ids_rows = committed_rows

    # -- writing -------------------------------------------------------------------------------
    def stage(self, rows: dict[str, np.ndarray], start: int) -> dict[str, bytes]:
        """Encode the chunks holding rows ``start:start+k``; nothing is visible until commit."""
        k = len(rows[self.key])
        writes: dict[str, bytes] = {}
        for name, col in self.columns.items():
            values = rows[name]
            first, last = start // col.chunk_rows, (start + k - 1) // col.chunk_rows
            for index in range(first, last + 1):
                block = self._block(col, index)
                lo = max(start, index * col.chunk_rows)
                hi = min(start + k, (index + 1) * col.chunk_rows)
                block[lo - index * col.chunk_rows : hi - index * col.chunk_rows] = values[
                    lo - start : hi - start
                ]
                writes[chunk_key(self.group, name, index, 1 + len(col.row_shape))] = encode_chunk(
                    col.dtype, block
                )
        return writes

    def set_rows(self, hierarchy: Hierarchy, n: int) -> dict[str, bytes]:
        """Set every row-dim array's shape to ``n`` in the hierarchy; return per-array json."""
        out: dict[str, bytes] = {}
        for name, col in self.columns.items():
            path = f"{self.group}/{name}"
            meta = hierarchy.nodes[path]
            meta["shape"] = [n, *col.row_shape]
            out[f"{path}/zarr.json"] = json.dumps(meta, separators=(",", ":")).encode()
        return out

    def add_column(self, hierarchy: Hierarchy, col: Column, n: int) -> dict[str, bytes]:
        """Add an array to this group (uncommitted), holding its fill value in the ``n``
        committed rows; return the chunks of those rows, to be written with the next stage.

        Why write fill chunks at all (a missing chunk already reads as fill): a writer that
        added the same array and crashed before its commit may have left chunks behind, and
        the rows they cover now belong to other records. The chunks are cached, so the next
        :meth:`stage` starts from them, not from what such a writer left.
        """
        meta = array_metadata(
            col.dtype, (n, *col.row_shape), (col.chunk_rows, *col.row_shape), col.dims, col.attrs
        )
        hierarchy.nodes[f"{self.group}/{col.name}"] = meta
        self.columns[col.name] = col
        writes: dict[str, bytes] = {}
        for index in range(math.ceil(n / col.chunk_rows)):
            block = col.empty_chunk()
            writes[chunk_key(self.group, col.name, index, 1 + len(col.row_shape))] = encode_chunk(
                col.dtype, block
            )
            self._cache[col.name] = (index, block)
        return writes

    def committed(self, n: int, ids: list[str], start: int) -> None:
        """After the root commit: the cache and the index now describe ``n`` rows."""
        self._cache_rows = n
        for i, v in enumerate(ids, start=start):
            self.ids.setdefault(v, i)
        self._ids_rows = n

    def repair(self, hierarchy: Hierarchy) -> list[str]:
        """Per-array metadata that disagrees with the committed shape (after a crash)."""
        n = hierarchy.rows(self.group)
        keys = {name: f"{self.group}/{name}/zarr.json" for name in self.columns}
        raws = self.backend.read_many(list(keys.values()))  # concurrent on S3
        bad = []
        for name, key in keys.items():
            raw = raws.get(key)
            if raw is None or json.loads(raw).get("shape", [None])[0] != n:
                bad.append(name)
        return bad
