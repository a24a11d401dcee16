"""The facility arbiter (deployments/arbiter.py) against a real Prefect server and real SQLite
files: turns in priority, fair-share, arrival order; one holder per instrument at a time; a
killed holder's instrument and a killed waiter's place come back; a waiter that gives up
leaves no row behind.

One ``prefect server start`` serves the module, with its repossessor (which frees lapsed
concurrency leases) running every second instead of every 15. Every test uses instruments
of its own (random names), since Prefect's limits outlive each test's database.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coorch.deployments.arbiter import Arbiter, Turn, WaitCancelled
from coorch.deployments.arbiter_queue import ArbiterQueue
from coorch.deployments.arbiter_records import Grant
from coorch.deployments.prefect_server import local_prefect_server
from tests.reset_proxy import ResettingProxy

REPOSSESSOR_LOOP_S = 1


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    env = {"PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(REPOSSESSOR_LOOP_S)}
    with local_prefect_server(tmp_path_factory.mktemp("prefect"), env=env) as url:
        yield url


def _db_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'facility.db').resolve()}"


@pytest.fixture
def arbiter(prefect_api, tmp_path):
    # no grace: these tests are about the order; the grace has its own test
    arb = Arbiter(_db_url(tmp_path), poll_s=0.01, grace_s=0.0)
    yield arb
    arb.close()


def _instruments(arb: Arbiter, *names: str) -> list[str]:
    """Fresh instrument names with their Prefect limits."""
    unique = [f"{n}-{uuid.uuid4().hex[:8]}" for n in names]
    arb.ensure_limits(unique)
    return unique


def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _wait_in_thread(arb: Arbiter, instrument: str, out: queue.Queue, **kw) -> threading.Thread:
    """``arb.wait`` in a thread; its turn (or the exception it raised) goes to ``out``."""

    def run() -> None:
        try:
            out.put(arb.wait(instrument, **kw))
        except BaseException as exc:  # the test looks at what was raised
            out.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_free_instrument_is_granted_at_once_the_next_waiter_on_release_and_release_charges(
    arbiter,
):
    (afm,) = _instruments(arbiter, "afm")
    first = arbiter.wait(afm, campaign="c1", owner="alice", priority=0, timeout_s=10)
    assert (first.instrument, first.campaign, first.owner) == (afm, "c1", "alice")
    turns: queue.Queue = queue.Queue()
    _wait_in_thread(arbiter, afm, turns, campaign="c2", owner="bob", priority=0)
    _until(lambda: len(arbiter.waiting(afm)) == 1)
    time.sleep(0.2)  # twenty polls: still waiting while the first turn is held
    assert turns.empty()
    assert [w.campaign for w in arbiter.waiting(afm)] == ["c2"]

    first.release(12.5)
    first.release(99.0)  # idempotent: charged once
    second = turns.get(timeout=15)
    assert isinstance(second, Turn) and second.campaign == "c2"
    second.release(2.0)

    g1, g2 = arbiter.grants(afm)
    assert (g1.campaign, g1.charged_s, g2.campaign, g2.charged_s) == ("c1", 12.5, "c2", 2.0)
    assert g1.released is not None and g1.released <= g2.granted
    assert g1.outranked_by is None and g2.outranked_by is None
    assert arbiter.usage() == {"alice": 12.5, "bob": 2.0}
    assert (arbiter.used("c1"), arbiter.used("c2"), arbiter.used("nobody")) == (12.5, 2.0, 0.0)
    assert arbiter.waiting() == []


def test_a_turn_as_context_manager_releases_uncharged_on_an_exception(arbiter):
    (raman,) = _instruments(arbiter, "raman")
    with (
        pytest.raises(RuntimeError, match="measurement failed"),
        arbiter.wait(raman, campaign="c1", owner="alice", priority=1),
    ):
        raise RuntimeError("measurement failed")
    (grant,) = arbiter.grants(raman)
    assert grant.released is not None and grant.charged_s == 0.0
    arbiter.wait(raman, campaign="c2", owner="bob", priority=0, timeout_s=10).release(1.0)


def test_an_instrument_without_its_prefect_limit_is_refused_and_leaves_no_waiter(arbiter):
    arbiter.ensure_limits(["stem-x"])
    arbiter.ensure_limits(["stem-x"])  # idempotent
    with pytest.raises(LookupError, match="ensure_limits"):
        arbiter.wait(f"nolimit-{uuid.uuid4().hex[:8]}", campaign="c", owner="o", priority=0)
    assert arbiter.waiting() == [] and arbiter.grants() == []


# usage before the queue forms, in instrument-seconds: alice used the most, bob nothing
USED_BEFORE = {"alice": 150.0, "carol": 60.0, "erin": 20.0}
# (campaign, owner, priority, loaded), in arrival order
ARRIVALS = [
    ("a1", "alice", 0, False),
    ("b1", "bob", 0, False),
    ("a2", "alice", 2, False),
    ("c1", "carol", 1, False),
    ("e1", "erin", 0, False),
    ("a3", "alice", 1, True),
    ("b2", "bob", 0, False),
    ("c2", "carol", 2, False),
]
QUANTUM_S = 100.0
CHARGE_S = 30.0  # each granted turn, charged on release
# Priority 2 first: c2 (carol 60) before a2 (alice 150). Priority 1: a3's loaded sample counts
# alice at 180 - 100 = 80 against carol's 60 + 30 = 90, so a3 before c1. Priority 0: b1 and b2
# (bob 0) tie, arrival puts b1 first; bob is then at 30, above erin's 20, so e1 comes before
# b2 (the queue as it stood, without the charges, had b2 before e1); alice (210) last.
EXPECTED_ORDER = ["c2", "a2", "a3", "c1", "b1", "e1", "b2", "a1"]


def test_grants_follow_priority_then_fair_share_with_the_loaded_credit_then_arrival(
    prefect_api, tmp_path
):
    with Arbiter(_db_url(tmp_path), poll_s=0.01, quantum_s=QUANTUM_S, grace_s=0.0) as arb:
        afm, warmup = _instruments(arb, "afm", "warmup")
        for owner, seconds in USED_BEFORE.items():
            arb.wait(warmup, campaign=f"{owner}-0", owner=owner, priority=0).release(seconds)
        holder = arb.wait(afm, campaign="holder", owner="dave", priority=9)
        turns: queue.Queue = queue.Queue()
        for n, (campaign, owner, priority, loaded) in enumerate(ARRIVALS, start=1):
            who = {"campaign": campaign, "owner": owner, "priority": priority, "loaded": loaded}
            _wait_in_thread(arb, afm, turns, timeout_s=60, **who)
            _until(lambda n=n: len(arb.waiting(afm)) == n)  # one arrival at a time
        assert [w.campaign for w in arb.waiting(afm)] == [
            "c2", "a2", "a3", "c1", "b1", "b2", "e1", "a1"
        ]  # fmt: skip

        holder.release(0.0)
        for _ in ARRIVALS:
            turn = turns.get(timeout=30)
            assert isinstance(turn, Turn)
            turn.release(CHARGE_S)

        grants = arb.grants(afm)[1:]
        assert [g.campaign for g in grants] == EXPECTED_ORDER
        assert all(g.outranked_by is None or g.outranked_by <= g.priority for g in grants)
        assert arb.usage()["bob"] == 2 * CHARGE_S and arb.waiting() == []


def test_a_waiter_overtaken_between_its_check_and_its_grant_is_not_granted(tmp_path):
    """The window the grant's own re-check closes: the head was checked (and took the Prefect
    slot), then a higher priority arrived; the grant goes to nobody, and the queue is intact."""
    q = ArbiterQueue(_db_url(tmp_path), quantum_s=QUANTUM_S, ttl_s=60.0)
    low, _ = q.enqueue("afm", campaign="low", owner="alice", priority=0, loaded=False)
    assert q.ready(low, "afm")
    high, _ = q.enqueue("afm", campaign="high", owner="bob", priority=1, loaded=False)
    assert q.grant(low, "afm") is None and not q.ready(low, "afm")
    assert [w.campaign for w in q.waiting("afm")] == ["high", "low"]
    grant = q.grant(high, "afm")
    assert grant is not None and grant.outranked_by == 0 and q.grants() == [grant]
    assert not q.ready(low, "afm")  # the instrument is held by the high grant now
    q.close()


def _check_the_rule(grants: list[Grant], turns: int) -> None:
    """What every set of records must show, whatever the campaigns did."""
    assert len(grants) == turns and all(g.released is not None for g in grants)
    for g in grants:
        assert g.outranked_by is None or g.outranked_by <= g.priority
    by_instrument: dict[str, list[Grant]] = {}
    for g in sorted(grants, key=lambda g: g.granted):
        by_instrument.setdefault(g.instrument, []).append(g)
    for held in by_instrument.values():
        for before, after in zip(held, held[1:], strict=False):
            assert before.released <= after.granted, "two turns overlap on one instrument"
        for g in held:
            for other in held:
                # a higher priority that was already waiting when g was granted went first
                if other.priority > g.priority and other.enqueued < g.granted:
                    assert other.granted < g.granted, (g, other)


CAMPAIGNS = st.lists(
    st.tuples(
        st.integers(0, 3),  # priority
        st.integers(0, 2),  # owner
        st.lists(st.integers(0, 2), min_size=1, max_size=3),  # instrument of each turn
        st.booleans(),  # loaded
        st.integers(1, 5),  # ms held
    ),
    min_size=2,
    max_size=6,
)


@settings(max_examples=8, deadline=None)
@given(campaigns=CAMPAIGNS, n_instruments=st.integers(1, 3), n_owners=st.integers(1, 3))
def test_no_overlap_and_no_higher_priority_passed_over_whatever_the_campaigns_do(
    prefect_api, campaigns, n_instruments, n_owners
):
    with tempfile.TemporaryDirectory() as folder:
        url = _db_url(Path(folder))
        # two arbiters (own connections, own Prefect client), as two campaign processes have
        arbiters = [Arbiter(url, poll_s=0.01, grace_s=0.0) for _ in range(2)]
        names = _instruments(arbiters[0], "i0", "i1", "i2")[:n_instruments]
        start, errors = threading.Barrier(len(campaigns)), []

        def campaign(k: int, priority: int, owner: int, uses: list[int], loaded: bool, ms: int):
            arb = arbiters[k % 2]
            start.wait()
            try:
                for use in uses:
                    who = {"owner": f"o{owner % n_owners}", "priority": priority}
                    instrument = names[use % n_instruments]
                    with arb.wait(instrument, campaign=f"c{k}", loaded=loaded, **who) as turn:
                        time.sleep(ms / 1000)
                        turn.release(ms / 1000)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=campaign, args=(k, *c), daemon=True)
            for k, c in enumerate(campaigns)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
        _check_the_rule(arbiters[0].grants(), sum(len(c[2]) for c in campaigns))
        for arb in arbiters:
            arb.close()


HOLD_AND_DIE = """
import sys, threading, time
from coorch.deployments.arbiter import Arbiter
arb = Arbiter(sys.argv[1])
turn = arb.wait(sys.argv[2], campaign="crashed", owner="mallory", priority=5)
threading.Thread(
    target=arb.wait, args=(sys.argv[2],), daemon=True,
    kwargs={"campaign": "crashed-next", "owner": "mallory", "priority": 5},
).start()
while not arb.waiting(sys.argv[2]):
    time.sleep(0.01)
print("holding", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_holder_killed_with_its_waiters_blocks_the_instrument_no_longer_than_a_lease(
    arbiter, tmp_path
):
    (stem,) = _instruments(arbiter, "stem")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_DIE, _db_url(tmp_path), stem],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "holding\n", proc.stderr.read()
        assert [g.campaign for g in arbiter.grants(stem)] == ["crashed"]
        assert [w.campaign for w in arbiter.waiting(stem)] == ["crashed-next"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()

    # the dead process's slot (Prefect lease) and waiter row (heartbeat) both lapse in lease_s
    bound_s = arbiter.lease_s + REPOSSESSOR_LOOP_S + 30
    turn = arbiter.wait(stem, campaign="survivor", owner="alice", priority=0, timeout_s=bound_s)
    turn.release(1.0)
    crashed, survivor = arbiter.grants(stem)
    assert crashed.campaign == "crashed" and crashed.released is None  # died holding it
    assert survivor.campaign == "survivor" and survivor.outranked_by is None
    assert arbiter.waiting() == []


def test_a_wait_that_times_out_or_is_stopped_leaves_no_waiter(arbiter):
    (wds,) = _instruments(arbiter, "wds")
    holder = arbiter.wait(wds, campaign="holder", owner="alice", priority=0)
    with pytest.raises(TimeoutError):
        arbiter.wait(wds, campaign="impatient", owner="bob", priority=3, timeout_s=0.2)
    assert arbiter.waiting() == []

    stop, out = threading.Event(), queue.Queue()
    _wait_in_thread(arbiter, wds, out, campaign="stopped", owner="bob", priority=3, stop=stop)
    _until(lambda: len(arbiter.waiting(wds)) == 1)
    stop.set()
    assert isinstance(out.get(timeout=10), WaitCancelled)
    assert arbiter.waiting() == []
    with pytest.raises(WaitCancelled):  # a stop already set: not even one try
        arbiter.wait(wds, campaign="stopped", owner="bob", priority=3, stop=stop)
    assert arbiter.waiting() == []

    holder.release(0.0)
    assert [g.campaign for g in arbiter.grants(wds)] == ["holder"]


def test_a_campaign_deciding_its_next_measurement_keeps_the_instrument(prefect_api, tmp_path):
    """For ``grace_s`` after a turn, a waiter of no higher priority lets the campaign that had
    the instrument come back (its sample is loaded: no transfer); a higher priority does not
    wait for it."""
    with Arbiter(_db_url(tmp_path), poll_s=0.01, grace_s=5.0) as arb:
        (afm,) = _instruments(arb, "afm")
        me = {"owner": "ana", "priority": 1}
        first = arb.wait(afm, campaign="a", **me)
        out: queue.Queue = queue.Queue()
        _wait_in_thread(arb, afm, out, campaign="b", owner="ben", priority=1)
        _until(lambda: len(arb.waiting(afm)) == 1)
        first.release(10.0)
        time.sleep(0.5)  # "a" records and decides meanwhile: "b" does not take the AFM
        assert out.empty()
        again = arb.wait(afm, campaign="a", loaded=True, **me)  # back within the grace
        assert again.campaign == "a"
        _wait_in_thread(arb, afm, out, campaign="c", owner="chen", priority=2)
        _until(lambda: len(arb.waiting(afm)) == 2)
        again.release(10.0)
        urgent = out.get(timeout=3.0)  # priority 2 takes it at once, grace or not
        assert isinstance(urgent, Turn) and urgent.campaign == "c"
        urgent.release(1.0)
        late = out.get(timeout=10.0)  # "c" does not come back: "b" has it after the grace
        assert isinstance(late, Turn) and late.campaign == "b"
        late.release(1.0)


def test_a_dropped_connection_costs_a_slot_call_another_try_not_the_turn(
    prefect_api, tmp_path, monkeypatch
):
    """Taking, renewing and giving back a slot survive a connection the server resets mid-request
    (what a pooled connection closed as idle looks like): each is asked again, and the turn and
    its record come out as without the fault."""
    with ResettingProxy(prefect_api) as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url)
        with Arbiter(_db_url(tmp_path), poll_s=0.01, grace_s=0.0) as arb:
            (raman,) = _instruments(arb, "raman")
            proxy.drop(2)  # the first two slot requests: a wait polls on
            turn = arb.wait(raman, campaign="a", owner="ana", priority=0, timeout_s=30)
            assert proxy.dropped == 2
            proxy.drop(1)
            assert arb._slots.renew(turn._keeper.lease_id)
            proxy.drop(1)
            turn.release(5.0)
            assert proxy.dropped == 4
            # the slot is free: a second campaign takes it at once
            with arb.wait(raman, campaign="b", owner="ben", priority=0, timeout_s=30) as second:
                second.release(1.0)
            assert [(g.campaign, g.charged_s) for g in arb.grants(raman)] == [
                ("a", 5.0),
                ("b", 1.0),
            ]
