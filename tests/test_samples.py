"""The sample registry (storage/samples.py) on real SQLite files: registration, claims,
transfers with their cost, one sample per instrument, sister pieces, and the registry's
invariants under random sequences of operations from several campaigns, from one process
(hypothesis, against a model), from 4 threads and from 2 processes sharing one file."""

from __future__ import annotations

import multiprocessing
import pickle
import random
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from coorch.storage.samples import (
    STORAGE,
    Sample,
    SampleBusy,
    SampleRegistry,
    Transfer,
    UnknownSample,
)

LIBRARY = "smbfo"
INSTRUMENTS = ("afm", "raman", "stem")
PLACES = (STORAGE, *INSTRUMENTS)
CAMPAIGNS = ("c1", "c2")
IDS = ("s0", "s1", "s2", "s3")


@pytest.fixture
def registry(tmp_path):
    with SampleRegistry.at(tmp_path / "facility.db") as reg:
        yield reg


# -- the invariants every test ends with ------------------------------------------------------


def check_invariants(reg: SampleRegistry, origins: dict[str, str], *, history: bool) -> None:
    """Every sample in exactly one location; no instrument holding two samples, now (and, with
    ``history``, at any point of the log: for samples registered into instruments before the
    first transfer); the log, replayed from where each sample was registered, ends where it is
    (no lost or duplicated transfer)."""
    samples = {s.id: s for s in reg.all()}
    listed = [
        s.id for place in {s.location for s in samples.values()} for s in reg.at_location(place)
    ]
    assert sorted(listed) == sorted(samples)
    for place in INSTRUMENTS:
        assert len(reg.at_location(place)) <= 1
    log = reg.transfers()
    assert [t.id for t in log] == sorted({t.id for t in log})
    where = {sid: origins.get(sid, STORAGE) for sid in samples}
    for t in log:
        assert t.source == where[t.sample] != t.destination
        if history:
            assert t.destination == STORAGE or t.destination not in where.values(), t
        where[t.sample] = t.destination
    assert where == {sid: s.location for sid, s in samples.items()}
    for sid in samples:
        assert reg.transfers(sid) == [t for t in log if t.sample == sid]


def check_holds(log: list[Transfer], windows: list[tuple[str, str, int, int]]) -> None:
    """A held sample is moved by its holder only: no transfer of ``sample`` by another campaign
    among those committed while ``campaign`` held it (ids in ``(lo, hi]``), except back to
    storage at cost 0 (an eviction by the campaign whose turn the instrument is)."""
    for sample, campaign, lo, hi in windows:
        others = [
            t
            for t in log
            if lo < t.id <= hi
            and t.sample == sample
            and not (t.destination == STORAGE and t.cost_s == 0.0)
        ]
        assert all(t.campaign == campaign for t in others), (sample, campaign, others)


# -- behaviour, one at a time -----------------------------------------------------------------


def test_register_get_and_unknown(registry):
    s = registry.register("s0", LIBRARY)
    assert s == Sample("s0", LIBRARY, None, STORAGE, None)
    assert registry.get("s0") == s
    registry.transfer("s0", "afm", campaign=None, cost_s=1.0)
    # Idempotent: a resumed campaign registers again; the registry keeps where the sample is.
    assert registry.register("s0", LIBRARY) == Sample("s0", LIBRARY, None, "afm", None)
    with pytest.raises(ValueError, match="'smbfo'.*'alscbn'"):
        registry.register("s0", "alscbn")
    for i in range(1, 8):
        registry.register(f"s{i}", LIBRARY)
    with pytest.raises(UnknownSample, match=r"'nope'; known: 's0', 's1', 's2', 's3', 's4' and 3"):
        registry.get("nope")
    with pytest.raises(UnknownSample, match="'nope'"):
        registry.transfers("nope")
    with pytest.raises(UnknownSample, match="'nope'"):
        registry.register("s9", LIBRARY, parent="nope")
    with pytest.raises(ValueError, match="sample id"):
        registry.register("../etc", LIBRARY)
    assert [s.id for s in registry.all()] == [f"s{i}" for i in range(8)]


def test_register_into_an_occupied_instrument_is_refused(registry):
    registry.register("s0", LIBRARY, location="afm")
    with pytest.raises(ValueError, match="'afm' already holds sample 's0'"):
        registry.register("s1", LIBRARY, location="afm")
    assert [s.id for s in registry.all()] == ["s0"]


def test_claim_is_all_or_nothing_and_names_the_holder(registry):
    for sid in ("a", "b"):
        registry.register(sid, LIBRARY)
    registry.claim("c1", ["a"])
    with pytest.raises(SampleBusy, match="'a' is held by campaign 'c1'"):
        registry.claim("c2", ["b", "a"])
    assert registry.get("b").held_by is None
    with pytest.raises(UnknownSample, match="'zz'"):
        registry.claim("c2", ["b", "zz"])
    assert registry.get("b").held_by is None
    registry.claim("c1", ["a", "b"])  # a resumed campaign claims again: a no-op for "a"
    assert [s.held_by for s in registry.all()] == ["c1", "c1"]


def test_release_returns_what_the_campaign_held(registry):
    for sid in ("a", "b", "c"):
        registry.register(sid, LIBRARY)
    registry.claim("c1", ["c", "a"])
    registry.claim("c2", ["b"])
    assert registry.release("c1") == ["a", "c"]
    assert registry.release("c1") == []
    assert [s.held_by for s in registry.all()] == [None, "c2", None]
    registry.claim("c3", ["a"])  # free again
    assert registry.get("a").held_by == "c3"


def test_transfer_moves_the_sample_and_logs_it_with_its_cost(registry):
    registry.register("a", LIBRARY)
    registry.claim("c1", ["a"])
    t = registry.transfer("a", "afm", campaign="c1", cost_s=42.5)
    assert (t.sample, t.source, t.destination, t.campaign, t.cost_s) == (
        "a",
        STORAGE,
        "afm",
        "c1",
        42.5,
    )
    assert registry.get("a").location == "afm"
    assert registry.transfer("a", "afm", campaign="c1", cost_s=9.0) is None  # already there
    with pytest.raises(SampleBusy, match="'a' is held by campaign 'c1'"):
        registry.transfer("a", "raman", campaign="c2", cost_s=1.0)
    with pytest.raises(SampleBusy):
        registry.transfer("a", "raman", campaign=None, cost_s=1.0)
    with pytest.raises(ValueError, match="cost_s"):
        registry.transfer("a", "raman", campaign="c1", cost_s=-1.0)
    back = registry.transfer("a", STORAGE, campaign="c1", cost_s=30.0)
    assert registry.transfers("a") == [t, back]
    assert back.id > t.id and back.source == "afm"
    assert registry.get("a") == Sample("a", LIBRARY, None, STORAGE, "c1")


def test_an_instrument_holds_one_sample(registry):
    for sid in ("a", "b", "c"):
        registry.register(sid, LIBRARY)
    registry.transfer("a", "afm", campaign="c1", cost_s=10.0)
    t = registry.transfer("b", "afm", campaign="c1", cost_s=20.0)
    evicted, moved = registry.transfers()[-2:]
    assert moved == t
    assert (evicted.sample, evicted.source, evicted.destination) == ("a", "afm", STORAGE)
    assert (evicted.campaign, evicted.cost_s) == ("c1", 0.0)
    assert evicted.id < moved.id
    assert [s.id for s in registry.at_location("afm")] == ["b"]
    assert registry.get("a").location == STORAGE
    # An occupant held by another campaign is unloaded too (campaigns share the instrument one
    # turn at a time); it stays held by its campaign, in storage.
    registry.claim("c2", ["b"])
    registry.transfer("c", "afm", campaign="c1", cost_s=5.0)
    evicted = registry.transfers()[-2]
    assert (evicted.sample, evicted.destination, evicted.campaign) == ("b", STORAGE, "c1")
    assert registry.get("b") == Sample("b", LIBRARY, None, STORAGE, "c2")
    assert registry.get("c").location == "afm"
    check_invariants(registry, {}, history=True)


def test_sister_pieces_sit_in_two_instruments_at_once(registry):
    registry.register("wafer-7", LIBRARY)
    for piece in ("wafer-7.a", "wafer-7.b"):
        assert registry.register(piece, LIBRARY, parent="wafer-7").parent == "wafer-7"
    with pytest.raises(ValueError, match="'smbfo', not 'alscbn'"):
        registry.register("wafer-7.c", "alscbn", parent="wafer-7")
    with pytest.raises(ValueError, match="cut from 'wafer-7', not 'wafer-7.a'"):
        registry.register("wafer-7.b", LIBRARY, parent="wafer-7.a")
    registry.claim("pfm-campaign", ["wafer-7.a"])
    registry.claim("stem-campaign", ["wafer-7.b"])
    registry.transfer("wafer-7.a", "afm", campaign="pfm-campaign", cost_s=60.0)
    registry.transfer("wafer-7.b", "stem", campaign="stem-campaign", cost_s=1800.0)
    assert registry.at_location("afm") == [
        Sample("wafer-7.a", LIBRARY, "wafer-7", "afm", "pfm-campaign")
    ]
    assert registry.at_location("stem") == [
        Sample("wafer-7.b", LIBRARY, "wafer-7", "stem", "stem-campaign")
    ]
    assert registry.get("wafer-7").location == STORAGE
    check_invariants(registry, {}, history=True)


def test_one_file_shared_by_two_registries_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "folder" / "facility.db"
    with SampleRegistry.at(path) as one, SampleRegistry(f"sqlite:///{path}") as two:
        one.register("a", LIBRARY)
        two.claim("c1", ["a"])
        assert one.get("a").held_by == "c1"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_errors_cross_process_boundaries_intact():
    for error in (SampleBusy("a", "c1", "c2"), UnknownSample("x", ["a", "b"], 9)):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)


# -- random sequences against a model ---------------------------------------------------------


class RegistryAgainstModel(RuleBasedStateMachine):
    """Random register/claim/release/transfer from two campaigns (and none); after each step the
    registry equals a plain-dict model and keeps its invariants."""

    def __init__(self, folder: Path):
        super().__init__()
        self.reg = SampleRegistry.at(folder / f"{uuid.uuid4().hex}.db")
        self.where: dict[str, str] = {}
        self.holder: dict[str, str | None] = {}
        self.origin: dict[str, str] = {}

    @initialize(places=st.lists(st.sampled_from(PLACES), min_size=3, max_size=3))
    def register_some(self, places):
        """Most steps then find samples to claim and move (s3 comes later, if ever)."""
        for sid, place in zip(IDS, places, strict=False):
            self.register(sid, place)

    @rule(sid=st.sampled_from(IDS), place=st.sampled_from(PLACES))
    def register(self, sid, place):
        if sid not in self.where and place != STORAGE and place in self.where.values():
            with pytest.raises(ValueError, match="already holds"):
                self.reg.register(sid, LIBRARY, location=place)
            return
        got = self.reg.register(sid, LIBRARY, location=place)
        if sid not in self.where:
            self.where[sid] = self.origin[sid] = place
            self.holder[sid] = None
        assert got == Sample(sid, LIBRARY, None, self.where[sid], self.holder[sid])

    @rule(
        campaign=st.sampled_from(CAMPAIGNS),
        ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=2),
    )
    def claim(self, campaign, ids):
        if any(i not in self.where for i in ids):
            with pytest.raises(UnknownSample):
                self.reg.claim(campaign, ids)
        elif any(self.holder[i] not in (None, campaign) for i in ids):
            with pytest.raises(SampleBusy):
                self.reg.claim(campaign, ids)
        else:
            self.reg.claim(campaign, ids)
            self.holder.update(dict.fromkeys(ids, campaign))

    @rule(campaign=st.sampled_from(CAMPAIGNS))
    def release(self, campaign):
        held = sorted(i for i, h in self.holder.items() if h == campaign)
        assert self.reg.release(campaign) == held
        self.holder.update(dict.fromkeys(held))

    @rule(
        sid=st.sampled_from(IDS),
        place=st.sampled_from(PLACES),
        campaign=st.sampled_from((*CAMPAIGNS, None)),
        cost=st.floats(0, 3600),
    )
    def transfer(self, sid, place, campaign, cost):
        if sid not in self.where:
            with pytest.raises(UnknownSample):
                self.reg.transfer(sid, place, campaign=campaign, cost_s=cost)
            return
        if self.where[sid] == place:
            assert self.reg.transfer(sid, place, campaign=campaign, cost_s=cost) is None
            return
        occupants = [o for o, p in self.where.items() if p == place != STORAGE]
        if self.holder[sid] not in (None, campaign):
            with pytest.raises(SampleBusy):
                self.reg.transfer(sid, place, campaign=campaign, cost_s=cost)
            return
        n = len(self.reg.transfers())
        t = self.reg.transfer(sid, place, campaign=campaign, cost_s=cost)
        new = self.reg.transfers()[n:]
        assert new[-1] == t
        assert (t.source, t.destination, t.campaign, t.cost_s) == (
            self.where[sid],
            place,
            campaign,
            cost,
        )
        assert [(e.sample, e.destination, e.cost_s) for e in new[:-1]] == [
            (o, STORAGE, 0.0) for o in occupants
        ]
        self.where.update(dict.fromkeys(occupants, STORAGE))
        self.where[sid] = place

    @invariant()
    def agrees_with_the_model(self):
        model = [
            Sample(i, LIBRARY, None, self.where[i], self.holder[i]) for i in sorted(self.where)
        ]
        assert self.reg.all() == model

    @invariant()
    def keeps_its_invariants(self):
        check_invariants(self.reg, self.origin, history=False)

    def teardown(self):
        self.reg.close()


def test_random_sequences_keep_the_invariants(tmp_path):
    run_state_machine_as_test(
        lambda: RegistryAgainstModel(tmp_path),
        settings=settings(
            max_examples=40,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- several writers at once on one file ------------------------------------------------------

#: Pre-registered samples and where they start (two already in instruments).
ORIGINS = {"s0": "afm", "s1": "raman", "s2": STORAGE, "s3": STORAGE, "s4": STORAGE}


def campaign_worker(reg: SampleRegistry, campaign: str, seed: int, steps: int, barrier):
    """One campaign's random register/claim/release/transfer on a shared registry, started
    when all campaigns are ready (``barrier``). Returns the transfers it was answered and its
    hold windows: (sample, campaign, lo, hi), every transfer id in ``(lo, hi]`` committed while
    the campaign held the sample (lo read after the claim, hi before the release)."""
    rng = random.Random(seed)
    barrier.wait(timeout=60)
    pool, done, windows, since = list(ORIGINS), [], [], {}

    def last_id() -> int:
        log = reg.transfers()
        return log[-1].id if log else 0

    def release() -> None:
        hi = last_id()
        windows.extend((s, campaign, lo, hi) for s, lo in since.items())
        reg.release(campaign)
        since.clear()

    for step in range(steps):
        # A campaign works between two registry calls (it measures); without that pause a
        # writer looping flat out keeps SQLite's lock and the other writers sleep in their busy
        # handler, and the campaigns would barely interleave.
        time.sleep(rng.uniform(0, 0.004))
        roll = rng.random()
        if roll < 0.05:
            pool.append(f"{campaign}-n{step}")
            reg.register(pool[-1], LIBRARY)
        elif roll < 0.25:
            ids = rng.sample(pool, rng.randint(1, 2))
            try:
                reg.claim(campaign, ids)
            except SampleBusy:
                continue
            lo = last_id()
            for s in ids:
                since.setdefault(s, lo)
        elif roll < 0.35:
            release()
        else:
            who = campaign if rng.random() < 0.9 else None
            try:
                t = reg.transfer(
                    rng.choice(pool), rng.choice(PLACES), campaign=who, cost_s=rng.uniform(0, 60)
                )
            except SampleBusy:
                continue
            if t is not None:
                done.append(t)
    release()
    return done, windows


def campaign_process(url: str, campaign: str, seed: int, steps: int, barrier, results) -> None:
    """A campaign process: its own registry (own engine, own connections) on the shared file."""
    with SampleRegistry(url) as reg:
        results.put(campaign_worker(reg, campaign, seed, steps, barrier))


def _setup(path: Path) -> SampleRegistry:
    reg = SampleRegistry.at(path)
    for sid, place in ORIGINS.items():
        reg.register(sid, LIBRARY, location=place)
    return reg


def _check_after(reg: SampleRegistry, results) -> None:
    log = reg.transfers()
    by_id = {t.id: t for t in log}
    answered = [t for done, _ in results for t in done]
    assert len({t.id for t in answered}) == len(answered)  # no id handed out twice
    assert all(by_id[t.id] == t for t in answered)  # every answered transfer is logged
    assert len(answered) > 20 and len(results) > 1
    check_holds(log, [w for _, windows in results for w in windows])
    check_invariants(reg, ORIGINS, history=True)
    assert all(s.held_by is None for s in reg.all())


def test_four_threads_keep_the_invariants(tmp_path):
    with _setup(tmp_path / "facility.db") as reg:
        barrier = threading.Barrier(4)
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(campaign_worker, reg, f"c{i}", i, 120, barrier) for i in range(4)
            ]
            results = [f.result() for f in futures]
        _check_after(reg, results)


def test_two_processes_keep_the_invariants(tmp_path):
    path = tmp_path / "facility.db"
    with _setup(path) as reg:
        ctx = multiprocessing.get_context("spawn")
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(
                target=campaign_process,
                args=(f"sqlite:///{path}", f"p{i}", 10 + i, 150, barrier, queue),
            )
            for i in (1, 2)
        ]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
        _check_after(reg, results)
