"""Integrity checks of a campaign store: what `coorch store verify` reports.

Each problem is one human-readable line. The checks re-derive everything from the stored bytes
(hashes are recomputed from the data arrays, shapes read from every array's own metadata), so a
clean report means a reader with plain xarray sees exactly what the provenance records claim.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from . import codec, schema
from .training_sets import chain_problems, links_of

if TYPE_CHECKING:
    from .reader import StoreReader


def verify(store: StoreReader, *, open_with_xarray: bool = True) -> list[str]:
    """Every problem of a store (its reader: ``CampaignStore.reader``), one line each."""
    problems: list[str] = []
    # partial writes: per-array metadata that disagrees with the committed root
    for group, name, n in store.partial_writes():
        problems.append(
            f"partial write: {group}/{name}/zarr.json shape differs from the committed length {n}"
        )
    all_ids: Counter[str] = Counter()
    decision_refs: list[tuple[str, str]] = []
    for group in store.modalities():
        t = store.read_table(group)
        signal = store.group_attrs(group)["signal"]
        ids = [str(v) for v in t["measurement_id"]]
        for i, mid in enumerate(ids):
            if not mid:
                problems.append(f"partial write: {group} row {i} has no measurement id")
        counts = Counter(ids)
        for mid, c in counts.items():
            if c > 1:
                problems.append(f"duplicate: measurement {mid} stored {c} times in {group}")
        all_ids.update(counts.keys())
        data = t[signal]
        for i, (mid, stored) in enumerate(zip(ids, t["content_hash"], strict=True)):
            actual = codec.content_hash(data[i])
            if actual != stored:
                problems.append(
                    f"hash mismatch: {group} measurement {mid} (row {i}): stored "
                    f"{str(stored)[:12]}..., data hash {actual[:12]}..."
                )
        decision_refs += [(mid, str(d)) for mid, d in zip(ids, t["decision_id"], strict=True) if d]
        if open_with_xarray:
            try:
                ds = store.read_modality(group)
                if ds.sizes.get(schema.MEASUREMENT_DIM, 0) != len(ids):
                    problems.append(
                        f"xarray sees {ds.sizes.get(schema.MEASUREMENT_DIM)} "
                        f"measurements in {group}, the store {len(ids)}"
                    )
            except Exception as exc:  # noqa: BLE001 - any failure to open is a problem
                problems.append(f"xarray cannot open {group}: {exc}")
    for mid, c in all_ids.items():
        if c > 1:
            problems.append(f"duplicate: measurement {mid} stored in {c} modalities")

    decisions: set[str] = set()
    if schema.DECISIONS_GROUP in store.groups():
        decisions = _decision_problems(store.read_table(schema.DECISIONS_GROUP), all_ids, problems)
    problems += _simulation_problems(store, open_with_xarray)
    for key in store.rejected():
        problems.append(
            f"rejected: journal entry {key} could not be stored (it does not fit "
            "its modality or is corrupt); acknowledged but not in the arrays"
        )
    for mid, did in decision_refs:
        if did not in decisions:
            problems.append(f"dangling ref: measurement {mid} names unknown decision {did}")
    return problems


def _id_problems(ids: list[str], kind: str) -> list[str]:
    """A table's ids stored twice, and its rows without an id (a partial write)."""
    out = []
    for rid, c in Counter(ids).items():
        if c > 1:
            out.append(f"duplicate: {kind} {rid} stored {c} times")
        if not rid:
            out.append(f"partial write: a {kind} row has no {kind} id")
    return out


def _decision_problems(t: dict, all_ids: Counter, problems: list[str]) -> set[str]:
    """The decisions table's findings (duplicates, rows without ids, training sets naming
    unknown measurements, broken chains), appended to ``problems``; returns the decision ids."""
    dids = [str(v) for v in t["decision_id"]]
    problems += _id_problems(dids, "decision")
    decisions = set(dids)
    cols = codec.decision_lists(t)
    rows = []
    for did, trained, since in zip(dids, cols["trained_on"], cols["trained_since"], strict=True):
        try:
            refs = json.loads(trained) if trained else []
        except ValueError:
            problems.append(f"corrupt: decision {did} trained_on is not JSON")
            refs = []
        rows.append((did, since, refs))
        for ref in refs:
            if ref not in all_ids:
                problems.append(
                    f"dangling ref: decision {did} trained_on unknown measurement {ref}"
                )
    problems += chain_problems(links_of(rows))
    return decisions


def _simulation_problems(store: StoreReader, open_with_xarray: bool) -> list[str]:
    """The simulations table: one row per id, every row a known status, and results (outputs,
    a signal) only in the rows of runs that are done; xarray sees every row."""
    if schema.SIMULATIONS_GROUP not in store.groups():
        return []
    problems: list[str] = []
    t = store.read_table(schema.SIMULATIONS_GROUP)
    ids = [str(v) for v in t["simulation_id"]]
    problems += _id_problems(ids, "simulation")
    results = [
        name for name in t if name.startswith(schema.OUTPUT_PREFIX) or np.asarray(t[name]).ndim > 1
    ]
    for i, (sid, status) in enumerate(zip(ids, t["status"], strict=True)):
        if status not in ("done", "failed", "dropped"):
            problems.append(f"corrupt: simulation {sid} (row {i}) has status {status!r}")
        elif status != "done" and any(not np.isnan(t[name][i]).all() for name in results):
            problems.append(f"corrupt: simulation {sid} is {status} but has results")
    if open_with_xarray:
        try:
            n = store.read_dataset(schema.SIMULATIONS_GROUP).sizes.get(schema.SIMULATION_DIM, 0)
            if n != len(ids):
                problems.append(f"xarray sees {n} simulations, the store {len(ids)}")
        except Exception as exc:  # noqa: BLE001 - any failure to open is a problem
            problems.append(f"xarray cannot open {schema.SIMULATIONS_GROUP}: {exc}")
    return problems
