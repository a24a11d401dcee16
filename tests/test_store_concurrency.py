"""Every acknowledged record is stored, whatever runs beside the append: concurrency stress.

The flow appends as its task runner does: one thread per instrument, each ``append_measurement``
returning before the agent is told; the flow thread stores decisions whose ``trained_on`` names
what was acknowledged so far; a reader (the live report) settles the journal meanwhile; and a
second writer (another process: its own store object and file system instance) appends to the
same campaign. After close and reopen, every acknowledged measurement and decision must be there
and ``verify`` clean (a lost measurement shows as a dangling ``trained_on`` ref). Local disk and
S3 (a real moto server on loopback).

Found with it: s3fs answered a read from a cached listing of the journal folder, so an entry
written after that listing (by another writer, or while the listing was in flight) read as "not
found", and the consolidation deleted it as already consumed. See ``storage/backend.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coorch.benchmarks import fixtures as syn
from coorch.benchmarks.fixtures import moto_endpoint
from coorch.storage import CampaignStore

# rounds per backend; COORCH_STORE_STRESS_ROUNDS=k runs k times as many (a longer hunt)
_SCALE = int(os.environ.get("COORCH_STORE_STRESS_ROUNDS", "1"))
ROUNDS = {"local": 30 * _SCALE, "s3": 6 * _SCALE}
INSTRUMENTS = ("pfm_loop", "raman", "pfm_loop")  # one thread each, as the task runner has
PER_INSTRUMENT = 6
# (flush_every, flush_interval_s): consolidation after every append, by a background timer
# racing the appends, and the campaign's defaults (only at reads and close)
FLUSHES = [(1, 0.0), (3, 0.005), (64, 0.5)]


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """A real S3 API (moto) on 127.0.0.1 with a free port; dummy credentials."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    with moto_endpoint() as endpoint:
        yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


Place = Callable[[int], tuple[str, dict[str, Any] | None, dict[str, Any] | None]]


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> Place:
    """``place(i)``: (url, this writer's options, another process's options) of a new store.

    On S3 the other writer gets its own s3fs instance (``skip_instance_cache``), as another
    process has: nothing this process caches is invalidated by its writes."""
    if request.param == "local":
        return lambda i: (str(tmp_path / f"c{i}.zarr"), None, None)
    import s3fs

    endpoint = request.getfixturevalue("moto_server")
    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    bucket = f"coorch-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    other = {**opts, "skip_instance_cache": True}
    return lambda i: (f"s3://{bucket}/c{i}.zarr", opts, other)


@dataclasses.dataclass
class Round:
    """One campaign-shaped burst of writers on one store, and what each was told."""

    store: CampaignStore
    other: CampaignStore
    acked: list[str] = dataclasses.field(default_factory=list)
    decided: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.problems.append(f"{fn.__name__}: {exc!r}")

        return run

    def acknowledge(self, store: CampaignStore, mid_prefix: str, modality: str) -> None:
        for i in range(PER_INSTRUMENT):
            m = syn.measurement(i, modality, prefix=mid_prefix)
            if not store.append_measurement(m):
                self.problems.append(f"{m.measurement_id}: a new id reported as stored already")
            with self.lock:
                self.acked.append(m.measurement_id)
            time.sleep(0.002)

    def instruments(self) -> list[Callable[[], None]]:
        def instrument(k: int, modality: str) -> Callable[[], None]:
            def measure() -> None:
                self.acknowledge(self.store, f"i{k}", modality)

            return measure

        return [instrument(k, mod) for k, mod in enumerate(INSTRUMENTS)]

    def second_writer(self) -> None:
        self.acknowledge(self.other, "other", "raman")

    def flow(self) -> None:
        """Decide on what was acknowledged so far, as the agent does after being told: one
        decision per new acknowledgement seen."""
        seen = 0
        while not self.done.wait(0.005):
            with self.lock:
                trained = list(self.acked)
            if len(trained) > seen:
                d = syn.decision(len(self.decided), trained_on=trained, prefix="decision")
                self.store.append_decision(d)
                self.decided.append(d.decision_id)
                seen = len(trained)

    def reader(self) -> None:
        """The live report: every read settles the journal and must see what was told."""
        while not self.done.wait(0.01):
            with self.lock:
                told = set(self.acked)
            missing = told - self.store.measurement_ids()
            if missing:
                self.problems.append(f"a read missed acknowledged {sorted(missing)}")


def run_round(url: str, opts: Any, other_opts: Any, flush: tuple[int, float]) -> Round:
    """Writers and readers at once; close both stores at the end."""
    every, interval = flush
    store = CampaignStore.open(
        url, storage_options=opts, flush_every=every, flush_interval_s=interval
    )
    other = CampaignStore.open(
        url, storage_options=other_opts, flush_every=every, flush_interval_s=interval
    )
    r = Round(store, other)
    store.append_decisions([syn.decision(i, prefix="seed") for i in range(len(INSTRUMENTS))])
    writers = [threading.Thread(target=r.guard(f)) for f in [*r.instruments(), r.second_writer]]
    aux = [threading.Thread(target=r.guard(f)) for f in (r.flow, r.reader)]
    for t in writers + aux:
        t.start()
    for t in writers:
        t.join()
    r.done.set()
    for t in aux:
        t.join()
    last = syn.decision(10**6, trained_on=r.acked, prefix="decision")  # names every one
    store.append_decision(last)
    r.decided.append(last.decision_id)
    other.close()
    store.close()
    return r


def lost_after_reopen(url: str, opts: Any, r: Round) -> list[str]:
    """What a fresh reader (another process) finds wrong with the round's store."""
    again = CampaignStore.open(url, create=False, storage_options=opts)
    out = [f"lost: measurement {m}" for m in sorted(set(r.acked) - again.measurement_ids())]
    stored = set(again.decisions()["decision_id"])
    out += [f"lost: decision {d}" for d in sorted(set(r.decided) - stored)]
    left = again.tables.journal.keys()  # a Journal, not a dict
    out += [f"journal left: {k}" for k in left]
    return out + again.verify()


@pytest.mark.slow
def test_every_acknowledged_record_survives_concurrent_writers_close_and_reopen(place, request):
    kind = request.node.callspec.params["place"]
    failures = []
    for i in range(ROUNDS[kind]):
        url, opts, other = place(i)
        r = run_round(url, opts, other, FLUSHES[i % len(FLUSHES)])
        bad = r.problems + lost_after_reopen(url, other, r)
        assert len(r.acked) == (len(INSTRUMENTS) + 1) * PER_INSTRUMENT
        if bad:
            failures.append(f"round {i} flush {FLUSHES[i % len(FLUSHES)]}: {bad[:5]}")
    assert not failures, failures


def test_an_entry_another_writer_journals_while_this_one_waits_for_the_lock_is_kept(place):
    """The window, made certain: this writer has listed the journal (``settle``) and waits for
    the campaign lock; meanwhile another process journals a measurement. The consolidation
    that follows must store it (it used to read it as missing, then delete it unstored)."""
    url, opts, other_opts = place(0)
    mine = CampaignStore.open(url, storage_options=opts, flush_every=1000, flush_interval_s=0)
    other = CampaignStore.open(
        url, storage_options=other_opts, flush_every=1000, flush_interval_s=0
    )
    assert mine.append_measurement(syn.measurement(0, prefix="mine"))
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with other.backend.lock():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert holding.wait(30)
    settling = threading.Thread(target=mine.settle)  # lists the journal, then waits
    settling.start()
    time.sleep(0.5)
    assert other.append_measurement(syn.measurement(1, prefix="other"))
    release.set()
    holder.join()
    settling.join()
    other.close()
    mine.close()
    again = CampaignStore.open(url, create=False, storage_options=other_opts)
    assert again.measurement_ids() == {"mine-pfm_loop-0", "other-pfm_loop-1"}
    assert again.tables.journal.keys() == []
    assert again.verify() == []
