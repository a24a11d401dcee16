"""The agent's lease as a capability, and named control tokens: the ``Lease`` rules on a fake
clock, token files, the client's lease handling (take, re-take, lose, keep across a restart)
over real HTTP, and the CLI's audit log. What every agent must do is in the conformance suite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import httpx
import pytest

from coorch.instrument_agents.client import InstrumentClient, LeaseConflict, LeaseLost
from coorch.instrument_agents.guards import ApiError
from coorch.instrument_agents.launch import serve_driver, start_twin
from coorch.instrument_agents.lease import Caller, Lease
from coorch.instrument_agents.server import create_app
from coorch.instrument_agents.tokens import ControlTokens, read_token_file, read_tokens_file
from coorch.instrument_agents.twins import make_twin
from coorch.net import free_port, wait_until_healthy

HTTP = httpx.Client(verify=False, timeout=10)
TOKEN, OTHER = "lease-token", "lease-other-token"
A, B = Caller("alice", "campaign-a"), Caller("bob", "campaign-b")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _refusal(call, status: int, error: str) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call()
    assert (exc.value.status, exc.value.error) == (status, error)
    return exc.value


# ------------------------------------------------------------------ Lease, on a fake clock


def test_a_lease_is_an_unguessable_id_bound_to_its_token():
    lease = Lease(30.0)
    grant = lease.acquire(A, None, None)
    lid = grant["lease_id"]
    assert len(lid) >= 43 and grant["holder"] == "alice" and grant["token_name"] == "campaign-a"
    assert lid not in repr(lease.enter(A, lid))
    _refusal(lambda: lease.enter(A, None), 409, "lease_conflict")
    _refusal(lambda: lease.enter(B, "forged"), 409, "lease_conflict")
    _refusal(lambda: lease.enter(Caller("alice", "campaign-b"), lid), 403, "lease_invalid")
    assert "lease_id" not in lease.info() and lease.info()["holder"] == "alice"
    lease.release(A, lid)
    other = lease.acquire(A, None, None)["lease_id"]
    assert other != lid  # a new lease, a new id


def test_a_lease_lapses_without_activity_and_says_so():
    clock = Clock()
    lease = Lease(30.0, clock=clock)
    lid = lease.acquire(A, None, 10.0)["lease_id"]
    clock.t += 9
    lease.leave(lease.enter(A, lid))  # activity renews it
    clock.t += 9
    assert lease.info()["held"] and lease.info()["expires_in_s"] == pytest.approx(1.0)
    clock.t += 2
    assert lease.info() == {
        "held": False,
        "holder": None,
        "token_name": None,
        "since": None,
        "expires_in_s": 0.0,
    }
    _refusal(lambda: lease.enter(A, lid), 403, "lease_expired")
    _refusal(lambda: lease.enter(A, None), 403, "lease_required")
    _refusal(lambda: lease.enter(A, "never-issued"), 403, "lease_invalid")
    lease.acquire(B, None, None)  # the instrument is free for anyone


def test_a_running_call_keeps_the_lease_alive():
    """A 30-minute sample transfer with a 5-minute lease: nobody may take the stage mid-way."""
    clock = Clock()
    lease = Lease(30.0, clock=clock)
    lid = lease.acquire(A, None, 300.0)["lease_id"]
    grant = lease.enter(A, lid)
    clock.t += 1800
    _refusal(lambda: lease.acquire(B, None, None), 409, "lease_conflict")
    lease.leave(grant)
    clock.t += 299
    lease.leave(lease.enter(A, lid))
    clock.t += 301
    assert not lease.info()["held"]


def test_presenting_the_id_renews_and_a_lost_take_answer_can_be_replayed():
    clock = Clock()
    lease = Lease(30.0, clock=clock)
    first = lease.acquire(A, None, 10.0, request_id="take-1")
    again = lease.acquire(A, None, 10.0, request_id="take-1")  # the answer was lost: retry
    assert again["lease_id"] == first["lease_id"]
    _refusal(lambda: lease.acquire(A, None, 10.0, request_id="take-2"), 409, "lease_conflict")
    renewed = lease.acquire(A, first["lease_id"], 60.0)
    assert renewed["lease_id"] == first["lease_id"] and renewed["ttl_s"] == 60.0
    lease.leave(lease.enter(A, first["lease_id"]))  # once used, the request id proves nothing
    _refusal(lambda: lease.acquire(A, None, 10.0, request_id="take-1"), 409, "lease_conflict")


def test_releasing_needs_the_id_and_a_repeated_release_is_a_no_op():
    lease = Lease(30.0)
    lease.release(A, None)  # nothing leased: nothing to do
    lid = lease.acquire(A, None, None)["lease_id"]
    _refusal(lambda: lease.release(A, None), 409, "lease_conflict")
    _refusal(lambda: lease.release(Caller("x", "campaign-b"), lid), 403, "lease_invalid")
    lease.release(A, lid)
    lease.release(A, lid)
    _refusal(lambda: lease.enter(A, lid), 403, "lease_invalid")


def test_the_log_names_holders_and_tokens_but_never_lease_ids(caplog):
    caplog.set_level(logging.DEBUG, logger="coorch.instrument_agents")
    clock = Clock()
    lease = Lease(30.0, clock=clock)
    lid = lease.acquire(A, None, 5.0)["lease_id"]
    _refusal(lambda: lease.enter(Caller("mallory", "campaign-b"), lid), 403, "lease_invalid")
    clock.t += 10
    lease.info()
    assert "'alice'" in caplog.text and "'campaign-a'" in caplog.text
    assert "expired" in caplog.text and "mallory" in caplog.text
    assert lid not in caplog.text


# ------------------------------------------------------------------ named tokens


def test_tokens_files_name_each_token(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# one per campaign\ncampaign-a: tok:with:colons\n\nann: t2\n")
    assert read_tokens_file(f) == {"campaign-a": "tok:with:colons", "ann": "t2"}
    bare = tmp_path / "campaign-x.token"
    bare.write_text("abc:def\n")
    assert read_token_file(bare) == ("campaign-x", "abc:def")  # a bare token is never split
    for bad in ("just-a-token\n", "a: t\na: u\n", ": t\n", "# only a comment\n"):
        f.write_text(bad)
        with pytest.raises(ValueError) as exc:
            read_tokens_file(f)
        assert "just-a-token" not in str(exc.value)  # a malformed line is never echoed
    tokens = ControlTokens({"campaign-a": "secret-a", "ann": "secret-b"})
    assert tokens.name_of("secret-b") == "ann" and tokens.name_of("nope") is None
    assert "secret" not in repr(tokens)
    with pytest.raises(ValueError):
        ControlTokens({"a": "same", "b": "same"})
    with pytest.raises(ValueError):
        ControlTokens({"bad name": "t"})
    with pytest.raises(ValueError):
        create_app(make_twin("raman"))  # no control token at all
    with pytest.raises(ValueError):
        create_app(make_twin("raman"), token="t", readonly_token="t")


# ------------------------------------------------------------------ the client


@pytest.fixture
def agent():
    tokens = {"campaign-a": TOKEN, "campaign-b": OTHER}
    with serve_driver(make_twin("raman", seed=5), tokens=tokens) as running:
        yield running


def test_the_client_takes_the_lease_and_sends_its_id(agent):
    with InstrumentClient(agent.url, TOKEN, client_id="alice") as c:
        assert c.lease_id is None
        c.move(3.0, 1.0)
        lid = c.lease_id
        assert lid and c.status()["lease"]["token_name"] == "campaign-a"
        assert "lease_id" not in c.acquire_lease(ttl_s=60)  # a renewal: the id stays put
        assert c.lease_id == lid
        c.measure("raman")
    status = HTTP.get(f"{agent.url}/v1/status", headers={"Authorization": f"Bearer {OTHER}"})
    assert status.json()["lease"]["held"] is False  # leaving the block gave the lease back


def test_a_lapsed_lease_is_taken_again_and_a_taken_one_raises_lease_lost(agent):
    with (
        InstrumentClient(agent.url, TOKEN, client_id="alice", lease_ttl_s=0.3) as a,
        InstrumentClient(agent.url, OTHER, client_id="bob", max_retries=0) as b,
    ):
        a.move(3.0, 1.0)
        first = a.lease_id
        time.sleep(0.5)
        a.move(4.0, 1.0)  # lapsed and free: a takes it again, the caller sees nothing
        assert a.lease_id not in (None, first)
        time.sleep(0.5)
        b.move(5.0, 1.0)  # lapsed again: now bob has it
        with pytest.raises(LeaseLost) as exc:
            a.measure("raman")
        assert exc.value.status == 409 and "bob" in str(exc.value)
        assert a.lease_id is None
        with pytest.raises(LeaseConflict):
            a.move(3.0, 1.0)


def test_retake_off_makes_a_lost_lease_an_error(agent):
    with InstrumentClient(agent.url, TOKEN, lease_ttl_s=0.2, retake_lease=False) as c:
        c.move(3.0, 1.0)
        time.sleep(0.4)
        with pytest.raises(LeaseLost) as exc:
            c.move(3.0, 1.0)
        assert exc.value.status == 403 and exc.value.error == "lease_expired"


def test_a_restarted_controller_takes_over_its_own_lease_from_the_lease_file(agent, tmp_path):
    """As after kill -9: the dead process's lease is live for minutes, its id is on disk."""
    path = tmp_path / "campaign.lease"
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": "coorch-x"}
    crashed = HTTP.post(f"{agent.url}/v1/lease", headers=auth, json={"ttl_s": 300}).json()
    path.write_text(crashed["lease_id"])  # what the dead process left behind
    with (
        InstrumentClient(agent.url, TOKEN, client_id="coorch-x", max_retries=0) as intruder,
        pytest.raises(LeaseConflict),
    ):
        intruder.acquire_lease()  # the same token and name without the id cannot take it
    with InstrumentClient(agent.url, TOKEN, client_id="coorch-x", lease_file=path) as resumed:
        resumed.acquire_lease(ttl_s=300)
        assert resumed.lease_id == crashed["lease_id"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # rewritten owner-only
        resumed.measure("raman")
        resumed.release_lease()
        assert not path.exists()


def test_a_stale_lease_file_does_not_stop_a_new_lease(agent, tmp_path):
    path = tmp_path / "campaign.lease"
    path.write_text("an-id-from-an-agent-that-restarted")
    with InstrumentClient(agent.url, TOKEN, lease_file=path) as c:
        c.move(3.0, 1.0)  # refused as invalid, taken afresh, repeated
        assert c.lease_id != "an-id-from-an-agent-that-restarted"
        assert path.read_text() == c.lease_id


def test_abort_needs_no_lease(agent):
    with (
        InstrumentClient(agent.url, TOKEN, client_id="alice") as a,
        InstrumentClient(agent.url, OTHER, client_id="bob") as b,
    ):
        a.acquire_lease()
        b.abort()
        assert b.lease_id is None and a.status()["lease"]["holder"] == "alice"


# ------------------------------------------------------------------ the CLI's audit trail


def test_cli_serves_named_tokens_and_logs_who_took_the_lease(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("campaign-a: cli-secret-a\nann: cli-secret-b\n")
    port = free_port()
    cmd = [sys.executable, "-m", "coorch.instrument_agents.cli", "serve", "--instrument", "raman"]
    cmd += ["--port", str(port), "--tokens-file", str(tokens), "--time-scale", "0"]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/v1/health", timeout_s=30, alive=lambda: proc.poll() is None)
        with InstrumentClient(url, "cli-secret-b", client_id="ann-laptop") as c:
            c.measure("raman")
            lease_id = c.lease_id
            assert c.status()["lease"]["token_name"] == "ann"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert "'ann-laptop'" in err and "token 'ann'" in err and "released" in err
    assert lease_id and lease_id not in err
    assert "cli-secret" not in err


def test_start_twin_takes_named_tokens():
    with (
        start_twin("raman", tokens={"campaign-a": TOKEN}) as agent,
        InstrumentClient(agent.url, TOKEN) as c,
    ):
        c.measure("raman")
        assert c.status()["lease"]["token_name"] == "campaign-a"


def test_the_first_request_builds_no_parameter_models():
    """FastAPI builds a router's parameter models lazily, under a ``catch_warnings`` that is not
    thread-safe (``server._build_routes``); ``create_app`` has them built before it returns, so
    the agent's serving thread builds none. Seen here as the pydantic ``TypeAdapter``s a first
    lease request constructs (26 without the early build)."""
    app = create_app(make_twin("raman"), token=TOKEN)
    built: list[str] = []

    def watch(frame, event, _arg):
        code = frame.f_code
        if event == "call" and code.co_name == "__init__" and "type_adapter" in code.co_filename:
            built.append(code.co_filename)

    async def first_requests() -> list[int]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            auth = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": "alice"}
            sys.setprofile(watch)
            try:
                lease = await client.post("/v1/lease", headers=auth, json={"ttl_s": 5})
                status = await client.get("/v1/status", headers=auth)
            finally:
                sys.setprofile(None)
        return [lease.status_code, status.status_code]

    assert asyncio.run(first_requests()) == [200, 200]
    assert built == []
