"""The agent's command log, and an agent that restarts under its client.

Real agents on loopback (``start_twin`` in this process, ``coorch agent serve`` as a process
that is SIGKILLed), real clients. What is checked: each control command leaves one fsynced
line naming its token by name (never the token or the lease id); a restarted agent answers a
measurement it logged instead of measuring again; the client takes its lease again from a
restarted agent unless someone else took the instrument; a lease take cut by a crash is taken
over by the next process; :func:`audit` counts a second acquisition and one cut short.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from coorch.instrument_agents.client import PENDING, InstrumentClient, LeaseLost
from coorch.instrument_agents.command_log import audit, read_log
from coorch.instrument_agents.launch import serve_driver, start_twin
from coorch.instrument_agents.twins import make_twin
from coorch.net import free_port, wait_until_healthy

TOKEN, OTHER = "log-token-a", "log-token-b"


def test_each_control_command_is_logged_by_token_name_never_the_token(tmp_path):
    path = tmp_path / "afm.commands.jsonl"
    with (
        start_twin("afm", tokens={"campaign-a": TOKEN}, command_log=path) as agent,
        InstrumentClient(agent.url, TOKEN, client_id="coorch-a") as c,
    ):
        c.load_sample("smbfo")
        c.move(1.0, 1.0)
        m = c.measure("pfm_loop", request_id="m-1")
        c.reset()
        lease_id = c.lease_id
    lines = read_log(path)
    commands = [x["command"] for x in lines]
    assert commands[0] == "agent_start" and commands[-1] == "lease_release"
    for expected in ("lease_take", "load_sample", "move", "measure_begin", "measure", "reset"):
        assert expected in commands
    done = [x for x in lines if x["command"] not in ("agent_start", "measure_begin")]
    assert all(x["token_name"] == "campaign-a" and x["holder"] == "coorch-a" for x in done)
    assert all(x["status"] == 200 and x["ts"] > 0 for x in done)
    (logged,) = [x for x in lines if x["command"] == "measure"]
    assert logged["request_id"] == "m-1" and logged["replay"] is False
    assert logged["measurement"]["signal"] == m.model_dump(mode="json")["signal"]
    text = path.read_text()
    assert TOKEN not in text and lease_id not in text


def test_a_restarted_agent_answers_a_logged_measurement_instead_of_measuring_again(tmp_path):
    path = tmp_path / "raman.commands.jsonl"
    port = free_port()
    with InstrumentClient(f"http://127.0.0.1:{port}", TOKEN, client_id="coorch-a") as c:
        with start_twin("raman", token=TOKEN, seed=3, port=port, command_log=path):
            first = c.measure("raman", request_id="m-1")
        # the agent is gone, with its lease and its result cache; a new one on the same port
        with start_twin("raman", token=TOKEN, seed=3, port=port, command_log=path) as again:
            retried = c.measure("raman", request_id="m-1")
            assert again.driver.n_measured == 0  # answered from the log
            assert retried == first
            assert c.status()["lease"]["holder"] == "coorch-a"  # the client took it again
            c.measure("raman", request_id="m-2")
            assert again.driver.n_measured == 1
    found = audit([path])
    assert sorted(found.measured) == ["m-1", "m-2"]
    assert found.twice == [] and found.replays == 1 and found.starts == 2


def test_after_a_restart_the_client_does_not_take_a_lease_someone_else_holds(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tokens = {"campaign-a": TOKEN, "campaign-b": OTHER}
    with InstrumentClient(url, TOKEN, client_id="coorch-a", max_retries=0) as a:
        with start_twin("afm", tokens=tokens, port=port):
            a.move(1.0, 1.0)
        with (
            start_twin("afm", tokens=tokens, port=port),
            InstrumentClient(url, OTHER, client_id="coorch-b") as b,
        ):
            b.move(2.0, 2.0)  # b took the new agent's lease first
            with pytest.raises(LeaseLost):
                a.move(1.0, 1.0)
            assert a.lease_id is None and b.status()["lease"]["holder"] == "coorch-b"


def test_a_lease_take_cut_by_a_crash_is_taken_over_by_the_next_process(tmp_path):
    lease_file = tmp_path / "token.afm.lease"
    with start_twin("afm", token=TOKEN) as agent:
        # the killed process wrote its pending take, the agent granted it, the answer was lost
        lease_file.write_text(f"{PENDING}take-1")
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": "coorch-a"}
        body = {"ttl_s": 300, "request_id": "take-1"}
        granted = httpx.post(f"{agent.url}/v1/lease", json=body, headers=headers).json()
        with InstrumentClient(agent.url, TOKEN, client_id="coorch-a", lease_file=lease_file) as c:
            c.move(1.0, 1.0)  # no 409 from its own lease: the same take was answered again
            assert lease_file.read_text() == c.lease_id == granted["lease_id"]
        assert not lease_file.exists()


def test_audit_counts_a_second_acquisition_of_one_request_id(tmp_path):
    path = tmp_path / "afm.commands.jsonl"
    # a result cache of one: the agent has forgotten m-1 when it is asked for it again
    twin = make_twin("afm", seed=1)
    with (
        serve_driver(twin, token=TOKEN, command_log=path, cache_size=1) as agent,
        InstrumentClient(agent.url, TOKEN) as c,
    ):
        c.measure("pfm_loop", request_id="m-1")
        c.measure("pfm_loop", request_id="m-1")  # a retry: answered from the cache
        c.measure("pfm_loop", request_id="m-2")
        c.measure("pfm_loop", request_id="m-1")  # measured again
    assert twin.n_measured == 3
    found = audit([path])
    assert (
        found.twice == ["m-1"] and found.replays == 1 and sorted(found.measured) == ["m-1", "m-2"]
    )


@pytest.mark.slow
def test_coorch_agent_serve_killed_mid_measurement_and_restarted(tmp_path):
    """The kill lands while m-2 is being acquired: the client rides it out (its retries, the
    lease taken again), m-2 is measured afresh (the log shows the cut one), and m-1, measured
    before the kill, is answered from the log."""
    token_file = tmp_path / "campaign.token"
    token_file.write_text(TOKEN)
    log, port = tmp_path / "raman.commands.jsonl", free_port()
    cmd = [sys.executable, "-m", "coorch.instrument_agents.cli", "serve", "--instrument", "raman"]
    cmd += ["--port", str(port), "--token-file", str(token_file), "--time-scale", "0.1"]
    cmd += ["--command-log", str(log)]  # a Raman acquisition takes 2 s
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_healthy(f"{url}/v1/health", timeout_s=60, alive=lambda: proc.poll() is None)
        return proc

    def begun(rid: str) -> bool:
        return any(x.get("request_id") == rid for x in read_log(log))

    proc = serve()
    try:
        with InstrumentClient(url, TOKEN, client_id="coorch-a", max_retries=7, backoff_s=0.1) as c:
            first = c.measure("raman", request_id="m-1")
            with ThreadPoolExecutor(1) as pool:
                second = pool.submit(c.measure, "raman", request_id="m-2")
                deadline = time.monotonic() + 10
                while not begun("m-2") and time.monotonic() < deadline:
                    time.sleep(0.02)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                proc = serve()
                second.result(timeout=60)
            assert c.status()["n_measured"] == 1  # m-2, again
            assert c.measure("raman", request_id="m-1") == first
            assert c.status()["n_measured"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    found = audit([log])
    assert sorted(found.measured) == ["m-1", "m-2"] and found.twice == []
    assert found.interrupted == 1 and found.starts == 2 and found.replays == 1
    assert {x["token_name"] for x in read_log(log) if "token_name" in x} == {"campaign"}


def test_agent_cli_user_errors_are_one_or_two_lines_and_exit_2(tmp_path):
    token_file = tmp_path / "campaign.token"
    token_file.write_text(TOKEN)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = {
        "nope.token": ["--token-file", str(tmp_path / "nope.token")],
        f"--port {busy.getsockname()[1]}": [
            "--token-file",
            str(token_file),
            "--port",
            str(busy.getsockname()[1]),
        ],
        str(tmp_path): [
            "--token-file",
            str(token_file),
            "--port",
            "0",
            "--command-log",
            str(tmp_path),
        ],
    }
    try:
        for named, args in cases.items():
            cmd = [sys.executable, "-m", "coorch.instrument_agents.cli", "serve", *args]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and 1 <= len(lines) <= 2, r.stderr
            assert lines[0].startswith("coorch agent serve: ") and named in lines[0], r.stderr
    finally:
        busy.close()
