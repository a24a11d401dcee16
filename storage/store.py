"""The campaign store: one zarr v3 group per campaign, one sub-group per modality, decisions,
simulations.

``CampaignStore`` is what the flows call: a thin facade over a writer (``writer.py``: journal,
staging, consolidation, commit) and a reader (``reader.py``: xarray, numpy, pandas and record
views) that share one ``Tables`` (``tables.py``). Records become rows and rows records in
``codec.py``; provenance questions are answered by ``lineage.py`` and ``verify.py``. Everything
it writes is plain zarr v3 that ``xarray.open_zarr(url, group=modality)`` reads without coorch.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from coorch.records import Decision, Measurement, Simulation

from .backend import Backend, check_key, open_backend
from .reader import StoreReader
from .tables import Tables
from .writer import StoreWriter

STORE_FORMAT = 1


class CampaignStore:
    """A campaign's measurements, decisions and simulations at one URL (local or ``s3://``).

    Thread-safe and multi-process-safe: single appends write one exclusive journal object each,
    and every consolidation into the arrays takes the campaign lock, so instruments in threads
    or processes may share one store. Use :meth:`open`; :meth:`close` (or ``with``) at the end.
    ``writer`` and ``reader`` are the two halves; the methods below delegate to them.
    """

    def __init__(
        self,
        backend: Backend,
        storage_options: Mapping[str, Any] | None = None,
        *,
        flush_every: int = 64,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.backend = backend
        self.url = backend.url
        self.storage_options = dict(storage_options or {})
        self.tables = Tables(backend)
        self.writer = StoreWriter(
            self.tables, flush_every=flush_every, flush_interval_s=flush_interval_s
        )
        self.reader = StoreReader(self.tables, self.writer.settle, storage_options)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        create: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        durable: bool = False,
        flush_every: int = 64,
        flush_interval_s: float = 0.5,
    ) -> CampaignStore:
        """Open (and by default create) the campaign at ``url``.

        ``durable=True`` fsyncs every local write (survives power loss, not only a process
        crash). ``flush_every`` / ``flush_interval_s``: how often single appends are
        consolidated from the journal into the xarray-readable arrays (``flush_every=1``:
        after every append). Opening consolidates the journal and repairs per-array metadata
        left by a writer that crashed mid-consolidation (committed data is never damaged).
        """
        backend = open_backend(url, storage_options, durable=durable)
        _check_campaign_root(backend)
        store = cls(
            backend, storage_options, flush_every=flush_every, flush_interval_s=flush_interval_s
        )
        if not backend.exists():
            if not create:
                raise FileNotFoundError(f"no campaign store at {backend.url}")
            store.writer.create(
                {
                    "coorch_store_format": STORE_FORMAT,
                    "created": time.time(),
                    "code_version": code_version(),
                }
            )
        store.repair()
        if store.tables.journal.keys():
            store.flush()
        return store

    # -- writing -------------------------------------------------------------------------------
    def append_measurement(self, m: Measurement) -> bool:
        """Store one measurement; False if its id is already stored.

        On return the measurement is durable (one journal object, written whole) and every
        reader through this class sees it; plain xarray readers see it after the next
        consolidation, which runs in a background thread after ``flush_every`` appends or
        ``flush_interval_s`` (inline when ``flush_every == 1``), or at :meth:`flush`/
        :meth:`close`. An append never waits for a consolidation running in another thread.
        """
        _check_names(m.measurement_id, m.modality)
        return self.writer.append_measurement(m)

    def append_decision(self, d: Decision) -> bool:
        """Store one decision; False if its id is already stored (same path as measurements)."""
        _check_names(d.decision_id)
        return self.writer.append_decision(d)

    def append_many(self, measurements: Iterable[Measurement]) -> list[bool]:
        """Store a batch in one consolidation (one lock, one commit): the ingest fast path.

        Returns one flag per input: True if stored now, False if the id was already there (or
        repeated earlier in the batch). The whole batch becomes visible at once, to every
        reader including plain xarray, or not at all.
        """
        ms = list(measurements)
        for m in ms:
            _check_names(m.measurement_id, m.modality)
        return self.writer.append_many(ms)

    def append_decisions(self, decisions: Iterable[Decision]) -> list[bool]:
        """Store a batch of decisions in one consolidation; flags as in :meth:`append_many`."""
        return self.writer.append_decisions(decisions)

    def append_simulation(self, s: Simulation) -> bool:
        """Store one simulation a co-navigation campaign ran; False if its id is already
        stored. Same path, durability and visibility as :meth:`append_measurement`; raises
        ``ValueError`` for names the table cannot hold or a signal off its stored grid."""
        return self.writer.append_simulation(s)

    def append_simulations(self, simulations: Iterable[Simulation]) -> list[bool]:
        """Store a batch of simulations in one consolidation; flags as in :meth:`append_many`."""
        return self.writer.append_simulations(simulations)

    def set_metadata(self, **attrs: Any) -> None:
        """Merge campaign attributes (spec, instrument descriptions ...) into the root attrs."""
        self.writer.set_metadata(**attrs)

    def flush(self) -> int:
        """Consolidate every journal entry (from any writer) into the arrays; return how many
        this store had pending. After this, plain ``xarray.open_zarr`` sees everything
        acknowledged so far."""
        return self.writer.flush()

    def settle(self) -> None:
        """Consolidate pending journal entries, if any: reads then see every acknowledged
        record. Every read method below calls it first."""
        self.writer.settle()

    def repair(self) -> list[str]:
        """Rewrite per-array metadata that disagrees with the committed shapes; say which."""
        return self.writer.repair()

    def close(self) -> None:
        """Stop the background flusher and consolidate what is pending."""
        self.writer.close()

    def __enter__(self) -> CampaignStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return self.reader.metadata()

    def modalities(self) -> list[str]:
        return self.reader.modalities()

    def measurement_ids(self, modality: str | None = None) -> set[str]:
        return self.reader.measurement_ids(modality)

    def read_modality(self, modality: str) -> xr.Dataset:
        """``xr.open_zarr(url, group=modality)``: lazy, and everything acknowledged is in it."""
        return self.reader.read_modality(modality)

    def read_dataset(self, group: str) -> xr.Dataset:
        """``xr.open_zarr(url, group=group)`` of any group, ``decisions`` and ``simulations``
        included."""
        return self.reader.read_dataset(group)

    def read_table(self, group: str, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All committed rows of the row-dimension columns of one group, as numpy arrays."""
        return self.reader.read_table(group, columns)

    def measurements_table(self) -> pd.DataFrame:
        """One row per measurement (all modalities): ids, positions, times, refs, hash."""
        return self.reader.measurements_table()

    def decisions(self) -> pd.DataFrame:
        """One row per decision; list fields as Python lists, ``created`` as UTC datetime."""
        return self.reader.decisions()

    def read_measurements(self) -> list[Measurement]:
        """Every stored measurement as a record (all modalities), sorted by ``ended``."""
        return self.reader.read_measurements()

    def read_decisions(self) -> list[Decision]:
        """Every stored decision as a record, in creation order."""
        return self.reader.read_decisions()

    def simulations(self) -> pd.DataFrame:
        """One row per simulation: the fixed fields (times as UTC datetimes), then a
        ``param_<name>`` and an ``out_<name>`` column per parameter and output (NaN where a
        simulation has none); the signal is in :meth:`read_simulations` and the dataset."""
        return self.reader.simulations()

    def read_simulations(self) -> list[Simulation]:
        """Every stored simulation as a record, in request order (``requested_at``)."""
        return self.reader.read_simulations()

    # -- provenance ----------------------------------------------------------------------------
    def lineage(self, measurement_id: str) -> dict[str, Any]:
        """Back to the decision that asked for it and the data that decision used; forward to
        the decisions trained on it and the measurements those decisions caused."""
        from .lineage import lineage

        return lineage(self.measurements_table(), self.decisions(), measurement_id)

    def verify(self) -> list[str]:
        """Integrity problems (hashes, dangling refs, duplicates, partial writes); [] if clean."""
        from .verify import verify

        self.settle()
        return verify(self.reader)

    def __repr__(self) -> str:
        return f"CampaignStore({self.url!r})"


def _check_names(record_id: str, modality: str | None = None) -> None:
    """Refuse, before anything is acknowledged, a record the store would lose or choke on
    later: an empty id, or one starting with '.' (its journal entry would be taken for a
    crashed writer's temporary, skipped, then deleted: acknowledged, never stored); a modality
    that is no store key segment (NUL, '\\', '.', '..': every later consolidation would fail
    on its group, the whole store stuck behind it)."""
    if not record_id or record_id.startswith("."):
        raise ValueError(f"record id {record_id!r} is empty or starts with '.'")
    if modality is not None:
        try:
            check_key(modality)
        except ValueError:
            raise ValueError(f"invalid modality name {modality!r}") from None


def _check_campaign_root(backend: Backend) -> None:
    """Raise a ``ValueError`` naming the URL when a store exists there but is no campaign store
    (a zarr.json that is not JSON, a zarr group coorch did not make): opening it would write a
    lock file into someone else's data, then fail deep in the reader or show an empty campaign.
    A folder without zarr.json is left to :meth:`CampaignStore.open` (created, or refused)."""
    raw = backend.read("zarr.json")
    if raw is None:
        return
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(
            f"{backend.url} is not a campaign store: its zarr.json is not JSON"
        ) from None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict) or "coorch_store_format" not in attrs:
        raise ValueError(
            f"{backend.url} is not a campaign store: a zarr store coorch did not write "
            "(no coorch_store_format in its zarr.json)"
        )


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
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": "coorch", "version": ver, "git_commit": commit}
