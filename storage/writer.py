"""The write side of a campaign store: journal, staging, consolidation, commit.

An append writes one journal object and returns (``journal.py``); a consolidation, under the
campaign lock, stages the journal entries and any batch given to it (``staging.py``), writes
the chunks, then the per-array metadata, then the root document, the commit point
(``zarr_table.py``), and only then drops the journal entries it consumed.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coorch.records import Decision, Measurement, Simulation

from . import codec, schema
from .sim_staging import check_fits, stage_simulations
from .simulations import check_names
from .staging import Row, check_compatible, stage_decisions, stage_measurements
from .tables import Tables
from .zarr_table import Hierarchy

RESERVED_GROUPS = {schema.DECISIONS_GROUP, schema.SIMULATIONS_GROUP}
log = logging.getLogger(__name__)
_OPEN_WRITERS: weakref.WeakSet[StoreWriter] = weakref.WeakSet()


@atexit.register
def _flush_open_writers() -> None:
    """At interpreter exit, consolidate what live stores journaled, so that plain xarray
    readers find it (a crash skips this; the next ``open`` does it instead)."""
    for writer in list(_OPEN_WRITERS):
        try:
            if writer.pending:
                writer.close()
        except Exception:  # noqa: BLE001 - never fail interpreter shutdown
            log.warning("could not consolidate %s at exit", writer.url, exc_info=True)


def check_modality(name: str) -> None:
    if not name or name in RESERVED_GROUPS or "/" in name or name.startswith("."):
        raise ValueError(f"invalid modality name {name!r}")


class StoreWriter:
    """Appends records to one store; safe across threads and processes (see ``store.py``)."""

    def __init__(
        self, tables: Tables, *, flush_every: int = 64, flush_interval_s: float = 0.5
    ) -> None:
        self.tables = tables
        self.url = tables.backend.url
        self.flush_every = max(1, flush_every)
        self.flush_interval_s = flush_interval_s
        self.pending = 0
        self._pending_lock = threading.Lock()
        self._urgent = False
        self._timer: threading.Timer | None = None
        _OPEN_WRITERS.add(self)

    # -- creating and repairing ----------------------------------------------------------------
    def create(self, attrs: dict[str, Any]) -> None:
        """Write the root document of a new store (no-op if another writer just did)."""
        backend = self.tables.backend
        with backend.lock():
            if not backend.exists():
                self.tables.hierarchy.doc = Hierarchy.new_document(attrs)
                self.tables.hierarchy.commit()

    def repair(self) -> list[str]:
        """Rewrite per-array metadata that disagrees with the committed shapes; say which."""
        t = self.tables
        with t.mutex:
            t.hierarchy.load()
            if not t.mismatched_arrays():
                return []
            with t.backend.lock():
                t.hierarchy.load()
                bad = t.mismatched_arrays()
                writes = {}
                for group in {b.split("/")[0] for b in bad}:
                    writes.update(t.table(group).set_rows(t.hierarchy, t.hierarchy.rows(group)))
                t.backend.write_many(writes)
            return bad

    # -- appends -------------------------------------------------------------------------------
    def append_measurement(self, m: Measurement) -> bool:
        """Journal one measurement; False if its id is already stored (``store.py`` has the
        visibility rules). Never waits for a consolidation running in another thread."""
        check_modality(m.modality)
        _, values = codec.measurement_row(m)
        t = self.tables
        if t.mutex.acquire(blocking=False):
            try:
                if t.committed(m.modality, m.measurement_id):
                    return False
                if m.modality in t.hierarchy.nodes:  # refuse now what could never be stored
                    check_compatible(t, m.modality, m, values)
                else:
                    schema.measurement_columns(m)
            finally:
                t.mutex.release()
        else:  # a consolidation holds the store: check what is known, let it de-duplicate
            w = t.cached(m.modality)
            if w is not None and m.measurement_id in w.ids:
                return False
            schema.measurement_columns(m)
        if not t.journal.put_measurement(m, values):
            return False
        self._after_journal()
        return True

    def append_decision(self, d: Decision) -> bool:
        """Journal one decision; False if its id is already stored."""
        t = self.tables
        if t.mutex.acquire(blocking=False):
            try:
                if t.committed(schema.DECISIONS_GROUP, d.decision_id):
                    return False
            finally:
                t.mutex.release()
        else:
            w = t.cached(schema.DECISIONS_GROUP)
            if w is not None and d.decision_id in w.ids:
                return False
        if not t.journal.put_decision(d):
            return False
        self._after_journal()
        return True

    def append_simulation(self, s: Simulation) -> bool:
        """Journal one simulation; False if its id is already stored. Refuses (``ValueError``)
        now, not at consolidation, what the simulations table could never hold."""
        t = self.tables
        if t.mutex.acquire(blocking=False):
            try:
                if t.committed(schema.SIMULATIONS_GROUP, s.simulation_id):
                    return False
                check_fits(t, s)
            finally:
                t.mutex.release()
        else:  # a consolidation holds the store: check what is known, let it de-duplicate
            w = t.cached(schema.SIMULATIONS_GROUP)
            if w is not None and s.simulation_id in w.ids:
                return False
            check_names(s)
        if not t.journal.put_simulation(s):
            return False
        self._after_journal()
        return True

    def append_many(self, measurements: Iterable[Measurement]) -> list[bool]:
        """Commit a batch (with the journal) at once; one flag per input."""
        ms = list(measurements)
        for m in ms:
            check_modality(m.modality)
        rows = [codec.measurement_row(m) for m in ms]  # hashing outside the lock
        with self.tables.mutex, self.tables.backend.lock():
            flags, _, _ = self._consolidate(ms, rows, [])
        return flags

    def append_decisions(self, decisions: Iterable[Decision]) -> list[bool]:
        """Commit a batch of decisions (with the journal) at once; one flag per input."""
        ds = list(decisions)
        with self.tables.mutex, self.tables.backend.lock():
            _, flags, _ = self._consolidate([], [], ds)
        return flags

    def append_simulations(self, simulations: Iterable[Simulation]) -> list[bool]:
        """Commit a batch of simulations (with the journal) at once; one flag per input."""
        ss = list(simulations)
        for s in ss:
            check_names(s)
        with self.tables.mutex, self.tables.backend.lock():
            _, _, flags = self._consolidate([], [], [], ss)
        return flags

    def flush(self) -> int:
        """Consolidate every journal entry (from any writer); return this writer's count."""
        with self.tables.mutex, self.tables.backend.lock():
            before = self.pending
            self._consolidate([], [], [])
            return before

    def settle(self) -> None:
        """Consolidate pending journal entries, if any (every store read calls it first)."""
        if self.tables.journal.keys():
            self.flush()

    def close(self) -> None:
        """Stop the background flusher and consolidate what is pending."""
        with self._pending_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()

    def set_metadata(self, **attrs: Any) -> None:
        """Merge campaign attributes into the root attrs (strict JSON; one commit)."""
        clean = {k: _jsonable(v) for k, v in attrs.items()}
        t = self.tables
        with t.mutex, t.backend.lock():
            try:
                t.hierarchy.load()
                t.hierarchy.attrs.update(clean)
                t.hierarchy.commit()
            except BaseException:
                t.forget_uncommitted()
                raise

    # -- background consolidation --------------------------------------------------------------
    def _after_journal(self) -> None:
        """Count the new journal entry; schedule (or, if ``flush_every == 1``, run) a flush."""
        if self.flush_every == 1:
            self.flush()
            return
        with self._pending_lock:
            self.pending += 1
            if self.pending >= self.flush_every and not self._urgent:
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
            log.warning(
                "background flush of %s failed; entries stay in the journal",
                self.url,
                exc_info=True,
            )

    def _consolidate(
        self,
        ms: list[Measurement],
        rows: list[Row],
        ds: list[Decision],
        ss: list[Simulation] | None = None,
    ) -> tuple[list[bool], list[bool], list[bool]]:
        """Journal entries + the given records -> one commit; then drop the journal entries.

        Caller holds the lock. Journal entries go first (they are acknowledged already), so a
        given record whose id is in the journal reports False. A journal entry that can never
        be consolidated is moved aside (``Journal.reject``) instead of blocking the others.
        Only entries read here are dropped: a listed key that read as absent (consumed by
        another writer, or a read that lied) is left for the next consolidation, never deleted
        unread. Returns the flags of the given measurements, decisions and simulations.
        """
        t = self.tables
        ss = ss or []
        jm, jd, js, bad = t.journal.read(t.journal.keys())
        jms = [m for _, m in jm]
        jds = [d for _, d in jd]
        jss = [s for _, s in js]
        jrows = [codec.measurement_row(m) for m in jms]
        try:
            t.hierarchy.load()
            staged, mflags, rejected = stage_measurements(
                t, jms + ms, jrows + rows, n_journal=len(jms)
            )
            staged_d, dflags = stage_decisions(t, jds + ds)
            staged_s, sflags, rejected_s = stage_simulations(t, jss + ss, n_journal=len(jss))
            staged.merge(staged_d)
            staged.merge(staged_s)
            if not staged.empty:
                t.backend.write_many({**staged.pre, **staged.chunks})
                t.backend.write_many(staged.metas)
                t.hierarchy.commit()
        except BaseException:
            t.forget_uncommitted()
            raise
        for w, n, ids, start in staged.done:
            w.committed(n, ids, start)
        reject = bad + [jm[i][0] for i in rejected] + [js[i][0] for i in rejected_s]
        if reject:
            log.error(
                "moved %d journal entries that cannot be stored to .coorch-rejected/: %s",
                len(reject),
                reject[:5],
            )
            t.journal.reject(reject)
        consumed = [k for k, _ in jm] + [k for k, _ in jd] + [k for k, _ in js]
        t.journal.remove([k for k in consumed if k not in set(reject)])
        with self._pending_lock:
            self.pending = 0
        return mflags[len(jms) :], dflags[len(jds) :], sflags[len(jss) :]


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
