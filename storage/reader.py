"""The read side of a campaign store: xarray datasets, numpy columns, pandas tables, records
(measurements, decisions, simulations).

Every read that answers "what is stored" first settles the journal (``StoreWriter.settle``),
so it sees every acknowledged record; ``read_table`` and ``read_dataset`` read what is
committed. Records come back through the decoders of ``codec.py``, one column at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from coorch.records import Decision, Measurement, Simulation

from . import codec, schema, simulations
from .backend import LocalBackend
from .tables import Tables


class StoreReader:
    """Views of one store's committed data (thread-safe; shares ``Tables`` with the writer)."""

    def __init__(
        self,
        tables: Tables,
        settle: Callable[[], None],
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.tables = tables
        self.settle = settle
        self.url = tables.backend.url
        self.storage_options = dict(storage_options or {})

    # -- structure -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The campaign's root attrs (a copy)."""
        with self.tables.mutex:
            self.tables.hierarchy.load()
            return json.loads(json.dumps(self.tables.hierarchy.attrs))

    def groups(self) -> list[str]:
        """Every committed table group: the modalities and, once written, ``decisions`` and
        ``simulations``."""
        self.settle()
        with self.tables.mutex:
            self.tables.hierarchy.load()
            return self.tables.hierarchy.groups()

    def modalities(self) -> list[str]:
        self.settle()
        with self.tables.mutex:
            self.tables.hierarchy.load()
            return self.tables.hierarchy.groups("modality")

    def group_attrs(self, group: str) -> dict[str, Any]:
        """A group's attrs (modality groups: ``signal``, ``signal_dims`` ...), a copy."""
        with self.tables.mutex:
            self.tables.hierarchy.load()
            return json.loads(json.dumps(self.tables.hierarchy.nodes[group]["attributes"]))

    def measurement_ids(self, modality: str | None = None) -> set[str]:
        self.settle()
        t = self.tables
        with t.mutex:
            t.sync()
            groups = [modality] if modality else t.hierarchy.groups("modality")
            out: set[str] = set()
            for g in groups:
                if g in t.hierarchy.nodes:
                    out.update(t.table(g).ids)
            return out

    # -- xarray and numpy ----------------------------------------------------------------------
    def read_dataset(self, group: str) -> xr.Dataset:
        """``xr.open_zarr(url, group=group)`` of any table group (decisions included), lazy."""
        backend = self.tables.backend
        local = isinstance(backend, LocalBackend)
        return xr.open_zarr(
            str(backend.root) if local else self.url,
            group=group,
            consolidated=True,
            storage_options=None if local else (self.storage_options or None),
        )

    def read_modality(self, modality: str) -> xr.Dataset:
        """``xr.open_zarr(url, group=modality)``: lazy, and everything acknowledged is in it."""
        if modality not in self.modalities():
            raise KeyError(f"no modality {modality!r} in {self.url}; have {self.modalities()}")
        return self.read_dataset(modality)

    def read_table(self, group: str, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All committed rows of the row-dimension columns of one group, as numpy arrays."""
        t = self.tables
        with t.mutex:
            t.hierarchy.load()
            n = t.hierarchy.rows(group)
            w = t.table(group)
            w.refresh(n)
            names = list(columns) if columns is not None else list(w.columns)
            return {name: w.read_column(name, 0, n) for name in names}

    # -- pandas --------------------------------------------------------------------------------
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
        for c in (
            "measurement_id",
            "modality",
            "instrument",
            "sample",
            "content_hash",
            "decision_id",
            "flow_run_id",
        ):
            df[c] = df[c].astype(str)
        for c in ("start_time", "end_time"):
            df[c] = pd.to_datetime(df[c].astype(float), unit="s", utc=True)
        return df

    def decisions(self) -> pd.DataFrame:
        """One row per decision; list fields as Python lists, ``created`` as UTC datetime.
        ``trained_on`` is as stored: the ids read since ``trained_since`` (all of them where
        that is empty); ``training_sets.trained_on_of`` resolves one decision's whole set."""
        names = [name for name, _, _ in schema.DECISION_COLUMNS]
        if schema.DECISIONS_GROUP not in self.groups():
            return pd.DataFrame(columns=names)
        df = pd.DataFrame(codec.decision_lists(self.read_table(schema.DECISIONS_GROUP)))
        for c in ("trained_on", "pending", "human_input"):
            df[c] = [json.loads(v) if v else None for v in df[c]]
        for c in (
            "decision_id",
            "measurement_id",
            "instrument",
            "modality",
            "policy",
            "model_version",
            "trained_since",
            "flow_run_id",
            "task_run_id",
            "campaign",
        ):
            df[c] = df[c].astype(str)
        df["created"] = pd.to_datetime(df["created"].astype(float), unit="s", utc=True)
        return df

    def simulations(self) -> pd.DataFrame:
        """One row per simulation (``CampaignStore.simulations``), in stored order."""
        names = [name for name, _, _ in schema.SIMULATION_COLUMNS]
        if schema.SIMULATIONS_GROUP not in self.groups():
            return pd.DataFrame(columns=names)
        with self.tables.mutex:
            self.tables.hierarchy.load()
            arrays = self.tables.hierarchy.arrays(schema.SIMULATIONS_GROUP)
        extra = sorted(
            c
            for c, meta in arrays.items()
            if c not in names and meta["dimension_names"] == [schema.SIMULATION_DIM]
        )
        extra.sort(key=lambda c: not c.startswith(schema.PARAM_PREFIX))  # params, then outputs
        t = self.read_table(schema.SIMULATIONS_GROUP, names + extra)  # never the signal data
        df = pd.DataFrame({c: t[c] for c in names + extra})
        for c in ("flow_run_id", "error", "worker"):
            df[c] = [str(v) or None for v in df[c]]
        for c in ("simulation_id", "campaign", "status", "surrogate_version"):
            df[c] = df[c].astype(str)
        for c in ("requested_at", "finished_at"):  # the records keep microseconds
            df[c] = pd.to_datetime(df[c].astype(float), unit="s", utc=True).dt.round("us")
        return df

    def _simulation_grid(self) -> codec.SignalGrid | None:
        """The simulated signal's grid, or None while no simulation had a signal."""
        if "signal" not in self.group_attrs(schema.SIMULATIONS_GROUP):
            return None
        return self.signal_grid(schema.SIMULATIONS_GROUP)

    # -- records -------------------------------------------------------------------------------
    def signal_grid(self, modality: str) -> codec.SignalGrid:
        """What every measurement of ``modality`` shares: signal name, dims, units, coords."""
        t = self.tables
        with t.mutex:
            t.hierarchy.load()
            return codec.SignalGrid.from_metadata(
                t.hierarchy.nodes[modality]["attributes"],
                t.hierarchy.arrays(modality),
                t.static_coords(modality),
            )

    def read_measurements(self) -> list[Measurement]:
        """Every stored measurement as a record (all modalities), sorted by ``ended`` (stable:
        ties keep modality, then row order). One read per column per modality."""
        out: list[Measurement] = []
        for g in self.modalities():
            out += codec.measurements_from_columns(self.read_table(g), g, self.signal_grid(g))
        out.sort(key=lambda m: m.ended)
        return out

    def read_decisions(self) -> list[Decision]:
        """Every stored decision as a record, in creation order (stable sort by ``created``)."""
        if schema.DECISIONS_GROUP not in self.groups():
            return []
        out = codec.decisions_from_columns(self.read_table(schema.DECISIONS_GROUP))
        out.sort(key=lambda d: d.created)
        return out

    def read_simulations(self) -> list[Simulation]:
        """Every stored simulation as a record, in request order (stable sort by
        ``requested_at``); ``[]`` for a store without the group."""
        if schema.SIMULATIONS_GROUP not in self.groups():
            return []
        grid = self._simulation_grid()
        out = simulations.simulations_from_columns(self.read_table(schema.SIMULATIONS_GROUP), grid)
        out.sort(key=lambda s: s.requested_at)
        return out

    # -- integrity -----------------------------------------------------------------------------
    def partial_writes(self) -> list[tuple[str, str, int]]:
        """(group, array, committed rows) of per-array metadata that disagrees with the
        committed root: what a writer that crashed mid-consolidation leaves."""
        t = self.tables
        out = []
        with t.mutex:
            t.hierarchy.load()
            for group in t.hierarchy.groups():
                n = t.hierarchy.rows(group)
                out += [(group, name, n) for name in t.table(group).repair(t.hierarchy)]
        return out

    def rejected(self) -> list[str]:
        """Journal entries set aside because they can never be stored (``Journal.reject``)."""
        return self.tables.journal.rejected()
