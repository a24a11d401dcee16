"""Resuming a campaign from its store after a crash (DESIGN.md, "Store and provenance").

The store is the truth: every stored measurement is told to the policy again, and every stored
decision without a measurement is re-issued with its original request id, so the instrument
agent (which caches results by request id) and the store (idempotent by measurement id) make
the retry exactly-once. Nothing is lost and nothing is measured twice.
"""

from __future__ import annotations

import json

import numpy as np

from coorch.models.policies import BasePolicy
from coorch.records import Decision, Measurement, Signal
from coorch.storage import CampaignStore
from coorch.tasks.ingest import Describer, observe


def stored_measurements(store: CampaignStore) -> list[Measurement]:
    """Every measurement in the store as a record, in acquisition order."""
    out: list[Measurement] = []
    for modality in store.modalities():
        ds = store.read_modality(modality)
        var = next(iter(ds.data_vars))
        da = ds[var]
        sig_dims = [d for d in da.dims if d != "measurement"]
        coords = {d: ds[d].values.tolist() for d in sig_dims if d in ds.coords}
        for i in range(ds.sizes["measurement"]):
            row = ds.isel(measurement=i)
            out.append(Measurement(
                measurement_id=str(row["measurement_id"].values),
                instrument=str(row["instrument"].values),
                modality=modality, sample=str(row["sample"].values),
                library_x=float(row["library_x"]), library_y=float(row["library_y"]),
                stage_x=float(row["stage_x"]), stage_y=float(row["stage_y"]),
                started=float(row["start_time"]), ended=float(row["end_time"]),
                signal=Signal(name=var, dims=sig_dims, values=da.values[i].tolist(),
                              units=da.attrs.get("units", ""), coords=coords),
                decision_id=str(row["decision_id"].values) or None))
    out.sort(key=lambda m: m.ended)
    return out


def stored_decisions(store: CampaignStore) -> list[Decision]:
    """Every stored decision as a record, in the order they were made."""
    table = store.decisions()
    if table is None or len(table) == 0:
        return []
    out = []
    for rec in table.sort_values("created").to_dict("records"):
        created = rec.get("created")
        if hasattr(created, "timestamp"):
            rec["created"] = created.timestamp()
        for key in ("trained_on", "pending"):
            if isinstance(rec.get(key), str):
                rec[key] = json.loads(rec[key])
        hi = rec.get("human_input")
        rec["human_input"] = None if hi in (None, "", "null") or hi != hi else str(hi)
        rec = {k: (None if isinstance(v, float) and np.isnan(v) and k != "acquisition_value"
                   else v) for k, v in rec.items()}
        out.append(Decision(**{k: v for k, v in rec.items() if k in Decision.model_fields}))
    return out


def resume(store: CampaignStore, policy: BasePolicy, describer: Describer
           ) -> tuple[list[Measurement], list[Decision]]:
    """Tell ``policy`` what the store holds; return (measurements, decisions to re-issue)."""
    done = stored_measurements(store)
    observe(policy, describer, done)
    have = {m.measurement_id for m in done}
    queue = []
    for d in stored_decisions(store):
        if d.measurement_id not in have:
            policy.plan(d.instrument, np.array([d.library_x, d.library_y]), reason=d.policy,
                        measurement_id=d.measurement_id)
            queue.append(d)
    return done, queue
