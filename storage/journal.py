"""The write-ahead journal: one immutable object per acknowledged record.

Why: consolidating a row into the xarray-readable arrays touches one chunk object per column
(13 for a measurement) plus metadata, and on a slow disk or S3 every object costs 0.1-20 ms.
An acknowledgement must be cheap (the flow's round-trip budget is 25 ms) yet durable, so
``append_measurement`` writes *one* object, created exclusively (``os.link`` locally,
``If-None-Match: *`` on S3) — which also makes the append idempotent by id — and the arrays
are brought up to date in batches (``CampaignStore.flush``), under the campaign lock.

Entry format (readable without coorch): ``b"COORCHJ1"``, an 8-byte little-endian header length,
a UTF-8 JSON header (the record's fields; for a measurement without ``signal.values`` but with
``shape``, ``content_hash`` and ``binary_coords``: [[name, length], ...]), then for a
measurement the values as float64 little-endian, C order, followed by each numeric coordinate
named in ``binary_coords`` (float64 LE). A decision or a simulation is the header alone (a
simulated signal is small, and in it as JSON). Keys: ``.coorch-journal/<kind>/<quoted id>``,
``<kind>`` one of ``measurements``, ``decisions``, ``simulations``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import numpy as np

from coorch.records import Decision, Measurement, Signal, Simulation

from .backend import Backend

PREFIX = ".coorch-journal"
REJECTED = ".coorch-rejected"
MAGIC = b"COORCHJ1"
STALE_TMP_S = 300.0


def _key(kind: str, record_id: str) -> str:
    return f"{PREFIX}/{kind}/{quote(record_id, safe='')}"


def encode_measurement(m: Measurement, values: np.ndarray) -> bytes:
    """Header JSON + values bytes + numeric coordinate bytes (JSON floats are slow)."""
    data = np.ascontiguousarray(values, dtype="<f8").tobytes()
    header = m.model_dump(exclude={"signal": {"values", "coords"}})
    header["signal"]["shape"] = list(values.shape)
    header["content_hash"] = hashlib.sha256(data).hexdigest()
    header["journal_time_ns"] = time.time_ns()
    text_coords: dict[str, list] = {}
    binary: list[tuple[str, int]] = []
    parts = [data]
    for name, coord in m.signal.coords.items():
        arr = np.asarray(coord)
        if arr.dtype.kind in "fiu":
            binary.append((name, int(arr.size)))
            parts.append(np.ascontiguousarray(arr, dtype="<f8").tobytes())
        else:
            text_coords[name] = arr.tolist()
    header["signal"]["coords"] = text_coords
    header["binary_coords"] = binary
    raw = json.dumps(header).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(raw)), raw, *parts])


def decode_measurement(blob: bytes) -> tuple[int, Measurement]:
    header, data = _split(blob)
    sig = header["signal"]
    t = int(header.pop("journal_time_ns", 0))
    shape = sig.pop("shape")
    nbytes = 8 * int(np.prod(shape))
    values_bytes = data[:nbytes]
    if hashlib.sha256(values_bytes).hexdigest() != header.pop("content_hash"):
        raise ValueError("journal entry data does not match its hash")
    values = np.frombuffer(values_bytes, dtype="<f8").reshape(shape)
    offset = nbytes
    coords = dict(sig.pop("coords"))
    for name, size in header.pop("binary_coords", []):
        coords[name] = np.frombuffer(data[offset : offset + 8 * size], dtype="<f8")
        offset += 8 * size
    ordered = {k: coords[k] for k in sorted(coords, key=lambda k: k not in sig["dims"])}
    # model_construct: the entry was written from a validated record; validating 512-float
    # coordinate lists again would cost more than the rest of the consolidation
    header["signal"] = Signal.model_construct(values=values, coords=ordered, **sig)
    return t, Measurement.model_construct(**header)


def encode_decision(d: Decision) -> bytes:
    raw = json.dumps({**d.model_dump(), "journal_time_ns": time.time_ns()}).encode()
    return MAGIC + struct.pack("<Q", len(raw)) + raw


def decode_decision(blob: bytes) -> tuple[int, Decision]:
    header, _ = _split(blob)
    t = int(header.pop("journal_time_ns", 0))
    return t, Decision(**header)


def encode_simulation(s: Simulation) -> bytes:
    header = s.model_dump(mode="json", exclude={"signal"})
    if s.signal is not None:  # values may be numpy, which a JSON dump refuses
        sig = s.signal.model_dump(mode="json", exclude={"values", "coords"})
        sig["values"] = s.signal.array().tolist()
        sig["coords"] = {k: np.asarray(v).tolist() for k, v in s.signal.coords.items()}
        header["signal"] = sig
    raw = json.dumps({**header, "journal_time_ns": time.time_ns()}).encode()
    return MAGIC + struct.pack("<Q", len(raw)) + raw


def decode_simulation(blob: bytes) -> tuple[int, Simulation]:
    header, _ = _split(blob)
    t = int(header.pop("journal_time_ns", 0))
    return t, Simulation.model_validate(header)


class Entries(NamedTuple):
    """Decoded journal entries, each as (key, record), in the order they were acknowledged;
    ``bad``: keys of entries that could not be decoded."""

    measurements: list[tuple[str, Measurement]]
    decisions: list[tuple[str, Decision]]
    simulations: list[tuple[str, Simulation]]
    bad: list[str]


def _split(blob: bytes) -> tuple[dict, bytes]:
    if blob[:8] != MAGIC:
        raise ValueError("not a coorch journal entry")
    (n,) = struct.unpack("<Q", blob[8:16])
    return json.loads(blob[16 : 16 + n]), blob[16 + n :]


class Journal:
    """Exclusive per-id entries under ``.coorch-journal/`` of a backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def put_measurement(self, m: Measurement, values: np.ndarray) -> bool:
        return self.backend.create_exclusive(
            _key("measurements", m.measurement_id), encode_measurement(m, values)
        )

    def put_decision(self, d: Decision) -> bool:
        return self.backend.create_exclusive(_key("decisions", d.decision_id), encode_decision(d))

    def put_simulation(self, s: Simulation) -> bool:
        return self.backend.create_exclusive(
            _key("simulations", s.simulation_id), encode_simulation(s)
        )

    def has(self, kind: str, record_id: str) -> bool:
        return self.backend.read(_key(kind, record_id)) is not None

    def keys(self) -> list[str]:
        """Entry keys, oldest-looking first; stale temporaries of crashed writers removed."""
        keys = []
        for k in self.backend.list_keys(PREFIX):
            name = k.rsplit("/", 1)[-1]
            if name.startswith("."):
                self._maybe_remove_tmp(k)
                continue
            keys.append(k)
        return keys

    def _maybe_remove_tmp(self, key: str) -> None:
        path = getattr(self.backend, "root", None)
        try:
            full = f"{path}/{key}"
            if time.time() - os.path.getmtime(full) > STALE_TMP_S:
                os.unlink(full)
        except OSError:
            pass

    def read(self, keys: list[str]) -> Entries:
        """Decode entries; undecodable ones are listed in ``bad`` (to be rejected, never
        silently lost)."""
        blobs = self.backend.read_many(keys)
        decoders = {
            "measurements": decode_measurement,
            "decisions": decode_decision,
            "simulations": decode_simulation,
        }
        found: dict[str, list[tuple[int, str, Any]]] = {kind: [] for kind in decoders}
        bad: list[str] = []
        for k in keys:
            blob = blobs.get(k)
            if blob is None:  # consolidated and removed by another writer meanwhile
                continue
            kind = k[len(PREFIX) + 1 :].split("/", 1)[0]
            try:
                t, record = decoders[kind](blob)
            except (ValueError, KeyError, TypeError, struct.error):
                bad.append(k)
                continue
            found[kind].append((t, k, record))
        ordered = {
            kind: [(k, r) for _, k, r in sorted(items, key=lambda e: e[0])]
            for kind, items in found.items()
        }
        return Entries(ordered["measurements"], ordered["decisions"], ordered["simulations"], bad)

    def remove(self, keys: list[str]) -> None:
        self.backend.delete_many(keys)

    def reject(self, keys: list[str]) -> None:
        """Move entries that can never be consolidated (a signal that does not fit its
        modality, a corrupt entry) to ``.coorch-rejected/`` so they stop blocking the journal;
        ``verify`` reports them."""
        blobs = self.backend.read_many(keys)
        self.backend.write_many(
            {REJECTED + k[len(PREFIX) :]: b for k, b in blobs.items() if b is not None}
        )
        self.remove(keys)

    def rejected(self) -> list[str]:
        return [
            k for k in self.backend.list_keys(REJECTED) if not k.rsplit("/", 1)[-1].startswith(".")
        ]


def record_id(key: str) -> str:
    return unquote(key.rsplit("/", 1)[-1])
