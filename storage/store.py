"""The campaign store: one zarr v3 group per campaign, one sub-group per modality, decisions.

``CampaignStore`` is what the flows call. It turns records into rows (``schema.py``), appends
them under a campaign-wide lock with the commit protocol of ``zarr_table.py``, and answers the
provenance questions (``lineage.py``, ``verify.py``). Everything it writes is plain zarr v3 that
``xarray.open_zarr(url, group=modality)`` reads without coorch installed.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from coorch.records import Decision, Measurement

from . import codec, schema
from .backend import Backend, LocalBackend, open_backend
from .journal import Journal
from .zarr_table import (
    KIND_ATTR,
    ROW_DIM_ATTR,
    Column,
    Hierarchy,
    TableWriter,
    array_metadata,
    decode_chunk,
    encode_chunk,
    group_metadata,
)

STORE_FORMAT = 1
RESERVED_GROUPS = {schema.DECISIONS_GROUP}
log = logging.getLogger(__name__)
_OPEN_STORES: weakref.WeakSet[CampaignStore] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    """At interpreter exit, consolidate what live stores journaled, so that plain xarray
    readers find it (a crash skips this; the next ``open`` does it instead)."""
    for store in list(_OPEN_STORES):
        try:
            if store._pending:
                store.close()
        except Exception:  # noqa: BLE001 - never fail interpreter shutdown
            log.warning("could not consolidate %s at exit", store.url, exc_info=True)


def _check_modality(name: str) -> None:
    if not name or name in RESERVED_GROUPS or "/" in name or name.startswith("."):
        raise ValueError(f"invalid modality name {name!r}")


class CampaignStore:
    """A campaign's measurements and decisions at one URL (local path or ``s3://...``).

    Thread-safe and multi-process-safe: single appends write one exclusive journal object each,
    and every consolidation into the arrays takes the campaign lock, so instruments in threads
    or processes may share one store. Use :meth:`open`; :meth:`close` (or ``with``) at the end.
    """

    def __init__(self, backend: Backend, storage_options: Mapping[str, Any] | None = None,
                 *, flush_every: int = 64, flush_interval_s: float = 0.5) -> None:
        self.backend = backend
        self.journal = Journal(backend)
        self.flush_every = max(1, flush_every)
        self.flush_interval_s = flush_interval_s
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._urgent = False
        self._timer: threading.Timer | None = None
        self.url = backend.url
        self.storage_options = dict(storage_options or {})
        self.hierarchy = Hierarchy(backend)
        self._writers: dict[str, TableWriter] = {}
        self._static: dict[str, dict[str, np.ndarray]] = {}
        self._mutex = threading.RLock()

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | os.PathLike[str], *, create: bool = True,
             storage_options: Mapping[str, Any] | None = None,
             durable: bool = False, flush_every: int = 64,
             flush_interval_s: float = 0.5) -> CampaignStore:
        """Open (and by default create) the campaign at ``url``.

        ``durable=True`` fsyncs every local write (survives power loss, not only a process
        crash). ``flush_every`` / ``flush_interval_s``: how often single appends are
        consolidated from the journal into the xarray-readable arrays (``flush_every=1``:
        after every append). Opening consolidates the journal and repairs per-array metadata
        left by a writer that crashed mid-consolidation (committed data is never damaged).
        """
        backend = open_backend(url, storage_options, durable=durable)
        store = cls(backend, storage_options, flush_every=flush_every,
                    flush_interval_s=flush_interval_s)
        _OPEN_STORES.add(store)
        if not backend.exists():
            if not create:
                raise FileNotFoundError(f"no campaign store at {backend.url}")
            with backend.lock():
                if not backend.exists():
                    attrs = {"coorch_store_format": STORE_FORMAT, "created": time.time(),
                             "code_version": code_version()}
                    store.hierarchy.doc = Hierarchy.new_document(attrs)
                    store.hierarchy.commit()
        store.repair()
        if store.journal.keys():
            store.flush()
        return store

    def repair(self) -> list[str]:
        """Rewrite per-array metadata that disagrees with the committed shapes; say which."""
        with self._mutex:
            self.hierarchy.load()
            bad = self._mismatched_arrays()
            if not bad:
                return []
            with self.backend.lock():
                self.hierarchy.load()
                bad = self._mismatched_arrays()
                writes = {}
                for group in {b.split("/")[0] for b in bad}:
                    writes.update(self._writer(group).set_rows(self.hierarchy,
                                                               self.hierarchy.rows(group)))
                self.backend.write_many(writes)
            return bad

    def _mismatched_arrays(self) -> list[str]:
        bad = []
        for group in self.hierarchy.groups():
            for name in self._writer(group).repair(self.hierarchy):
                bad.append(f"{group}/{name}")
        return bad

    # -- writers per group ---------------------------------------------------------------------
    def _writer(self, group: str) -> TableWriter:
        """The writer of an existing group, rebuilt from its committed metadata."""
        w = self._writers.get(group)
        if w is not None:
            return w
        node = self.hierarchy.nodes[group]
        row_dim = node["attributes"][ROW_DIM_ATTR]
        cols, key = [], None
        for name, meta in self.hierarchy.arrays(group).items():
            dims = tuple(meta["dimension_names"])
            if dims[0] != row_dim:
                continue
            cols.append(Column(name, meta["data_type"], dims, tuple(meta["shape"][1:]),
                               meta["attributes"], meta["chunk_grid"]["configuration"]
                               ["chunk_shape"][0]))
        key = "measurement_id" if row_dim == schema.MEASUREMENT_DIM else "decision_id"
        w = TableWriter(self.backend, group, cols, key)
        self._writers[group] = w
        return w

    def _static_coords(self, group: str) -> dict[str, np.ndarray]:
        """The signal coords (bias, wavenumber ...) of a modality group, read once."""
        if group not in self._static:
            row_dim = self.hierarchy.nodes[group]["attributes"][ROW_DIM_ATTR]
            out = {}
            for name, meta in self.hierarchy.arrays(group).items():
                if meta["dimension_names"][0] != row_dim:
                    raw = self.backend.read(f"{group}/{name}/c/0")
                    shape = tuple(meta["shape"])
                    out[name] = (np.asarray([], dtype=object) if raw is None
                                 else decode_chunk(meta["data_type"], raw, shape))
            self._static[group] = out
        return self._static[group]

    def _create_group(self, group: str, kind: str, row_dim: str, cols: list[Column],
                      attrs: dict[str, Any],
                      static: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> dict[str, bytes]:
        """Add a group to the (uncommitted) hierarchy; return the objects to write first."""
        nodes = self.hierarchy.nodes
        gattrs = {**attrs, ROW_DIM_ATTR: row_dim, KIND_ATTR: kind}
        nodes[group] = group_metadata(gattrs)
        writes = {f"{group}/zarr.json": json.dumps(nodes[group]).encode()}
        for name, (values, cattrs) in static.items():
            dtype = _dtype_of(values)
            shape = tuple(values.shape)
            meta = array_metadata(dtype, shape, tuple(max(1, s) for s in shape), (name,), cattrs)
            nodes[f"{group}/{name}"] = meta
            writes[f"{group}/{name}/zarr.json"] = json.dumps(meta).encode()
            if values.size:
                writes[f"{group}/{name}/c/0"] = encode_chunk(dtype, values)
        for col in cols:
            meta = array_metadata(col.dtype, (0, *col.row_shape),
                                  (col.chunk_rows, *col.row_shape), col.dims, col.attrs)
            nodes[f"{group}/{col.name}"] = meta
        self._static[group] = {k: v for k, (v, _) in static.items()}
        self._writers[group] = TableWriter(self.backend, group, cols,
                                           cols[0].name)
        return writes

    # -- appends -------------------------------------------------------------------------------
    def append_measurement(self, m: Measurement) -> bool:
        """Store one measurement; False if its id is already stored.

        On return the measurement is durable (one journal object, written whole) and every
        reader through this class sees it; plain xarray readers see it after the next
        consolidation, which runs in a background thread after ``flush_every`` appends or
        ``flush_interval_s`` (inline when ``flush_every == 1``), or at :meth:`flush`/
        :meth:`close`. An append never waits for a consolidation running in another thread.
        """
        _check_modality(m.modality)
        _, values = codec.measurement_row(m)
        if self._mutex.acquire(blocking=False):
            try:
                if self._committed(m.modality, m.measurement_id):
                    return False
                if m.modality in self.hierarchy.nodes:  # refuse now what could never be stored
                    self._check_compatible(m.modality, m, values)
                else:
                    schema.measurement_columns(m)
            finally:
                self._mutex.release()
        else:  # a consolidation holds the store: check what is known, let it de-duplicate
            w = self._writers.get(m.modality)
            if w is not None and m.measurement_id in w.ids:
                return False
            schema.measurement_columns(m)
        if not self.journal.put_measurement(m, values):
            return False
        self._after_journal()
        return True

    def append_decision(self, d: Decision) -> bool:
        """Store one decision; False if its id is already stored (same path as measurements)."""
        if self._mutex.acquire(blocking=False):
            try:
                if self._committed(schema.DECISIONS_GROUP, d.decision_id):
                    return False
            finally:
                self._mutex.release()
        else:
            w = self._writers.get(schema.DECISIONS_GROUP)
            if w is not None and d.decision_id in w.ids:
                return False
        if not self.journal.put_decision(d):
            return False
        self._after_journal()
        return True

    def append_many(self, measurements: Iterable[Measurement]) -> list[bool]:
        """Store a batch in one consolidation (one lock, one commit): the ingest fast path.

        Returns one flag per input: True if stored now, False if the id was already there (or
        repeated earlier in the batch). The whole batch becomes visible at once, to every
        reader including plain xarray, or not at all.
        """
        ms = list(measurements)
        for m in ms:
            _check_modality(m.modality)
        rows = [codec.measurement_row(m) for m in ms]  # hashing outside the lock
        with self._mutex, self.backend.lock():
            flags, _ = self._consolidate(ms, rows, [])
        return flags

    def append_decisions(self, decisions: Iterable[Decision]) -> list[bool]:
        """Store a batch of decisions in one consolidation; flags as in :meth:`append_many`."""
        ds = list(decisions)
        with self._mutex, self.backend.lock():
            _, flags = self._consolidate([], [], ds)
        return flags

    def flush(self) -> int:
        """Consolidate every journal entry (from any writer) into the arrays; return how many.

        After this, plain ``xarray.open_zarr`` sees everything acknowledged so far.
        """
        with self._mutex, self.backend.lock():
            before = self._pending
            self._consolidate([], [], [])
            return before

    def close(self) -> None:
        """Stop the background flusher and consolidate what is pending."""
        with self._pending_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()

    def __enter__(self) -> CampaignStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _committed(self, group: str, record_id: str) -> bool:
        """Is the id in the committed arrays? (re-reads the root only if it changed)."""
        self.hierarchy.load()
        if group not in self.hierarchy.nodes:
            return False
        w = self._writer(group)
        w.refresh(self.hierarchy.rows(group))
        return record_id in w.ids

    def _after_journal(self) -> None:
        """Count the new journal entry; schedule (or, if ``flush_every == 1``, run) a flush."""
        if self.flush_every == 1:
            self.flush()
            return
        with self._pending_lock:
            self._pending += 1
            if self._pending >= self.flush_every and not self._urgent:
                self._urgent = True
                self._schedule(0.0)
            elif self._timer is None and self.flush_interval_s > 0:
                self._schedule(self.flush_interval_s)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(delay, self._background_flush)
        self._timer.daemon = True
        self._timer.start()

    def _background_flush(self) -> None:
        with self._pending_lock:
            self._timer = None
            self._urgent = False
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - a background flush must never kill the process
            log.warning("background flush of %s failed; entries stay in the journal",
                        self.url, exc_info=True)

    def _consolidate(self, ms: list[Measurement], rows: list[tuple[dict[str, Any], np.ndarray]],
                     ds: list[Decision]) -> tuple[list[bool], list[bool]]:
        """Journal entries + the given records -> one commit; then drop the journal entries.

        Caller holds the lock. Journal entries go first (they are acknowledged already), so a
        given record whose id is in the journal reports False. A journal entry that can never
        be consolidated is moved aside (``Journal.reject``) instead of blocking the others.
        """
        keys = self.journal.keys()
        jm, jd, bad = self.journal.read(keys)
        jms = [m for _, m in jm]
        jds = [d for _, d in jd]
        jrows = [codec.measurement_row(m) for m in jms]
        try:
            self.hierarchy.load()
            pre, chunks, metas, done, mflags, rejected = self._stage_measurements(
                jms + ms, jrows + rows, n_journal=len(jms))
            p2, c2, m2, d2, dflags = self._stage_decisions(jds + ds)
            pre.update(p2)
            chunks.update(c2)
            metas.update(m2)
            done += d2
            if done or pre:
                self.backend.write_many({**pre, **chunks})
                self.backend.write_many(metas)
                self.hierarchy.commit()
        except BaseException:
            self._forget_uncommitted()
            raise
        for w, n, ids, start in done:
            w.committed(n, ids, start)
        reject = bad + [jm[i][0] for i in rejected]
        if reject:
            log.error("moved %d journal entries that cannot be stored to .coorch-rejected/: %s",
                      len(reject), reject[:5])
            self.journal.reject(reject)
        self.journal.remove([k for k in keys if k not in set(reject)])
        with self._pending_lock:
            self._pending = 0
        return mflags[len(jms):], dflags[len(jds):]

    def _stage_measurements(self, ms: list[Measurement],
                            rows: list[tuple[dict[str, Any], np.ndarray]],
                            n_journal: int = 0) -> tuple:
        """Encode the new rows of every modality; records ``i < n_journal`` come from the
        journal, and one that does not fit its modality is returned in ``rejected`` rather
        than raised (the caller of the original append has long been answered)."""
        pre: dict[str, bytes] = {}
        chunks: dict[str, bytes] = {}
        metas: dict[str, bytes] = {}
        done: list[tuple] = []
        rejected: list[int] = []
        flags = [False] * len(ms)
        by_group: dict[str, list[int]] = {}
        for i, m in enumerate(ms):
            by_group.setdefault(m.modality, []).append(i)
        for group, idx in by_group.items():
            w = None
            new: list[int] = []
            seen: set[str] = set()
            n = self.hierarchy.rows(group)
            for i in idx:
                try:
                    if group not in self.hierarchy.nodes:
                        cols, gattrs = schema.measurement_columns(ms[i])
                        pre.update(self._create_group(group, "modality", schema.MEASUREMENT_DIM,
                                                      cols, gattrs, schema.signal_coords(ms[i])))
                    if w is None:
                        w = self._writer(group)
                        w.refresh(n)
                    mid = ms[i].measurement_id
                    if mid in w.ids or mid in seen:
                        continue
                    self._check_compatible(group, ms[i], rows[i][1])
                except ValueError:
                    if i >= n_journal:
                        raise
                    rejected.append(i)
                    continue
                seen.add(mid)
                new.append(i)
            if not new or w is None:
                continue
            signal = self.hierarchy.nodes[group]["attributes"]["signal"]
            cols = {name: _column_values([rows[i][0][name] for i in new], w.columns[name])
                    for name, _, _ in schema.MEASUREMENT_COORDS}
            cols[signal] = np.stack([rows[i][1] for i in new])
            chunks.update(w.stage(cols, n))
            metas.update(w.set_rows(self.hierarchy, n + len(new)))
            done.append((w, n + len(new), [ms[i].measurement_id for i in new], n))
            for i in new:
                flags[i] = True
        return pre, chunks, metas, done, flags, rejected

    def _stage_decisions(self, ds: list[Decision]) -> tuple:
        group = schema.DECISIONS_GROUP
        flags = [False] * len(ds)
        if not ds:
            return {}, {}, {}, [], flags
        pre: dict[str, bytes] = {}
        if group not in self.hierarchy.nodes:
            pre = self._create_group(group, "decisions", schema.DECISION_DIM,
                                     schema.decision_columns(),
                                     {"title": "coorch campaign decisions",
                                      "Conventions": "CF-1.10"}, {})
        w = self._writer(group)
        n = self.hierarchy.rows(group)
        w.refresh(n)
        new: list[int] = []
        seen: set[str] = set()
        for i, d in enumerate(ds):
            if d.decision_id in w.ids or d.decision_id in seen:
                continue
            seen.add(d.decision_id)
            new.append(i)
        if not new:
            return pre, {}, {}, [], flags
        rows = [codec.decision_row(ds[i]) for i in new]
        cols = {name: _column_values([r[name] for r in rows], col)
                for name, col in w.columns.items()}
        chunks = w.stage(cols, n)
        metas = w.set_rows(self.hierarchy, n + len(new))
        for i in new:
            flags[i] = True
        return pre, chunks, metas, [(w, n + len(new), [ds[i].decision_id for i in new], n)], \
            flags

    def _forget_uncommitted(self) -> None:
        """After a failed append: drop in-memory state that may describe uncommitted data."""
        self.hierarchy.raw = None
        self._writers.clear()
        self._static.clear()

    def _check_compatible(self, group: str, m: Measurement, values: np.ndarray) -> None:
        attrs = self.hierarchy.nodes[group]["attributes"]
        if m.signal.name != attrs["signal"] or list(m.signal.dims) != attrs["signal_dims"]:
            raise ValueError(f"modality {group!r} stores signal {attrs['signal']!r} with dims "
                             f"{attrs['signal_dims']}; got {m.signal.name!r} {m.signal.dims}")
        col = self._writer(group).columns[attrs["signal"]]
        if tuple(values.shape) != col.row_shape:
            raise ValueError(f"modality {group!r}: signal shape {values.shape} differs from "
                             f"the stored {col.row_shape}")
        static = self._static_coords(group)
        for name, v in m.signal.coords.items():
            stored = static.get(name)
            if stored is None or not np.array_equal(np.asarray(v, dtype=stored.dtype), stored):
                raise ValueError(f"modality {group!r}: coordinate {name!r} differs from the "
                                 "stored one (one modality group holds one signal grid)")

    # -- metadata ------------------------------------------------------------------------------
    def set_metadata(self, **attrs: Any) -> None:
        """Merge campaign attributes (spec, instrument descriptions ...) into the root attrs."""
        clean = {k: _jsonable(v) for k, v in attrs.items()}
        with self._mutex, self.backend.lock():
            try:
                self.hierarchy.load()
                self.hierarchy.attrs.update(clean)
                self.hierarchy.commit()
            except BaseException:
                self._forget_uncommitted()
                raise

    def metadata(self) -> dict[str, Any]:
        with self._mutex:
            self.hierarchy.load()
            return json.loads(json.dumps(self.hierarchy.attrs))

    # -- reading -------------------------------------------------------------------------------
    def settle(self) -> None:
        """Consolidate pending journal entries, if any: reads then see every acknowledged
        record. Every read method below calls it first."""
        if self.journal.keys():
            self.flush()

    def _sync(self) -> None:
        self.hierarchy.load()
        for group in self.hierarchy.groups():
            self._writer(group).refresh(self.hierarchy.rows(group))

    def modalities(self) -> list[str]:
        self.settle()
        with self._mutex:
            self.hierarchy.load()
            return self.hierarchy.groups("modality")

    def measurement_ids(self, modality: str | None = None) -> set[str]:
        self.settle()
        with self._mutex:
            self._sync()
            groups = [modality] if modality else self.hierarchy.groups("modality")
            out: set[str] = set()
            for g in groups:
                if g in self.hierarchy.nodes:
                    out.update(self._writer(g).ids)
            return out

    def read_modality(self, modality: str) -> xr.Dataset:
        """``xr.open_zarr(url, group=modality)``: lazy, and everything acknowledged is in it."""
        if modality not in self.modalities():
            raise KeyError(f"no modality {modality!r} in {self.url}; have {self.modalities()}")
        return xr.open_zarr(self._xr_url(), group=modality, consolidated=True,
                            storage_options=self._xr_storage_options())

    def _xr_url(self) -> str:
        return str(self.backend.root) if isinstance(self.backend, LocalBackend) else self.url

    def _xr_storage_options(self) -> dict[str, Any] | None:
        return None if isinstance(self.backend, LocalBackend) else (self.storage_options or None)

    def read_table(self, group: str, columns: Iterable[str] | None = None
                   ) -> dict[str, np.ndarray]:
        """All committed rows of the row-dimension columns of one group, as numpy arrays."""
        with self._mutex:
            self.hierarchy.load()
            n = self.hierarchy.rows(group)
            w = self._writer(group)
            w.refresh(n)
            names = list(columns) if columns is not None else list(w.columns)
            return {name: w.read_column(name, 0, n) for name in names}

    def measurements_table(self) -> pd.DataFrame:
        """One row per measurement (all modalities): ids, positions, times, refs, hash."""
        frames = []
        cols = [name for name, _, _ in schema.MEASUREMENT_COORDS]
        for g in self.modalities():
            t = self.read_table(g, cols)  # coordinates only: never the signal data
            df = pd.DataFrame({c: t[c] for c in cols})
            df.insert(1, "modality", g)
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["measurement_id", "modality", *cols[1:]])
        df = pd.concat(frames, ignore_index=True)
        for c in ("measurement_id", "modality", "instrument", "sample", "content_hash",
                  "decision_id", "flow_run_id"):
            df[c] = df[c].astype(str)
        for c in ("start_time", "end_time"):
            df[c] = pd.to_datetime(df[c].astype(float), unit="s", utc=True)
        return df

    def decisions(self) -> pd.DataFrame:
        """One row per decision; list fields as Python lists, ``created`` as UTC datetime."""
        names = [name for name, _, _ in schema.DECISION_COLUMNS]
        self.settle()
        with self._mutex:
            self.hierarchy.load()
            has = schema.DECISIONS_GROUP in self.hierarchy.nodes
        if not has:
            return pd.DataFrame(columns=names)
        t = self.read_table(schema.DECISIONS_GROUP)
        df = pd.DataFrame({c: t[c] for c in names})
        for c in ("trained_on", "pending", "human_input"):
            df[c] = [json.loads(v) if v else None for v in df[c]]
        for c in ("decision_id", "measurement_id", "instrument", "modality", "policy",
                  "model_version", "flow_run_id", "task_run_id", "campaign"):
            df[c] = df[c].astype(str)
        df["created"] = pd.to_datetime(df["created"].astype(float), unit="s", utc=True)
        return df

    def read_measurements(self) -> list[Measurement]:
        """Every stored measurement as a record (all modalities), sorted by ``ended`` (stable:
        ties keep modality, then row order). One read per column per modality."""
        out: list[Measurement] = []
        for g in self.modalities():
            with self._mutex:
                self.hierarchy.load()
                arrays = self.hierarchy.arrays(g)
                grid = codec.SignalGrid.from_metadata(self.hierarchy.nodes[g]["attributes"],
                                                      arrays, self._static_coords(g))
            out += codec.measurements_from_columns(self.read_table(g), g, grid)
        out.sort(key=lambda m: m.ended)
        return out

    def read_decisions(self) -> list[Decision]:
        """Every stored decision as a record, in creation order (stable sort by ``created``)."""
        self.settle()
        with self._mutex:
            self.hierarchy.load()
            if schema.DECISIONS_GROUP not in self.hierarchy.nodes:
                return []
        out = codec.decisions_from_columns(self.read_table(schema.DECISIONS_GROUP))
        out.sort(key=lambda d: d.created)
        return out

    def lineage(self, measurement_id: str) -> dict[str, Any]:
        """Back to the decision that asked for it and the data that decision used; forward to
        the decisions trained on it and the measurements those decisions caused."""
        from .lineage import lineage

        return lineage(self.measurements_table(), self.decisions(), measurement_id)

    def verify(self) -> list[str]:
        """Integrity problems (hashes, dangling refs, duplicates, partial writes); [] if clean."""
        from .verify import verify

        self.settle()
        return verify(self)

    def __repr__(self) -> str:
        return f"CampaignStore({self.url!r})"


def _dtype_of(values: np.ndarray) -> str:
    if values.dtype.kind in "USO":
        return "string"
    if values.dtype.kind in "iub":
        return "int64"
    return "float64"


def _column_values(values: list[Any], col: Column) -> np.ndarray:
    if col.dtype == "string":
        return np.asarray(values, dtype=object)
    return np.asarray(values, dtype=col.dtype)


def _jsonable(v: Any) -> Any:
    """Attrs must be strict JSON: pydantic models dumped, numpy unwrapped, NaN -> None."""
    if hasattr(v, "model_dump"):
        return _jsonable(v.model_dump(mode="json"))
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def code_version() -> dict[str, Any]:
    """Package version and, when the code runs from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("coorch")
    except PackageNotFoundError:
        ver = None
    commit = None
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                                   capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": "coorch", "version": ver, "git_commit": commit}
