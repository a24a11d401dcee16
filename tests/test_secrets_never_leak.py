"""Tokens, lease ids and S3 credentials never leak: one real campaign handles every secret the
system knows, then every place a secret could end up is searched for each of them.

``coorch --debug run`` (Prefect at DEBUG) against a local Prefect server process, an agent run
by ``coorch agent serve --log-level info`` (access log, lease audit), a twin in this process,
Dask, a store on S3 (moto) with credentials from the environment. Operators steer with the
token (``coorch steer``, :mod:`coorch.flows.steer_client`) and without; another token holder
and a read-only one watch the agents' status and try to take the lease. Searched: Prefect's
logs, runs, inputs, artifacts and every row of its database, every process's output and log
records, the reports, every object in the bucket, every local file but the secrets' own,
``coorch store`` output, the agents' answers; each secret whole, by its ends and in base64.
A planted secret must be found in each kind of place: the search can fail.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

# Prefect sets up logging when first imported (coorch.flows imports it): the root logger's
# handlers are replaced then, caplog's included, so that must happen before the test starts.
import coorch.flows.steer_client  # noqa: F401
from coorch.benchmarks.fixtures import moto_endpoint
from coorch.deployments.prefect_server import local_prefect_server
from coorch.instrument_agents.launch import start_twin
from coorch.net import free_port, wait_until_healthy

COORCH = [sys.executable, "-m", "coorch.cli"]


def new_secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(20)}"


def forms(value: str) -> set[bytes]:
    """A secret as it may leak: whole, its ends (a cut log line), base64 (a Basic header)."""
    found = {value, value[:16], value[-16:], base64.b64encode(value.encode()).decode()}
    return {f.lower().encode() for f in found if len(f) >= 12}


class Haystack:
    """Everything searched, by place: ``add`` text or bytes, ``hits`` says where each secret is."""

    def __init__(self) -> None:
        self.places: dict[str, list[bytes]] = {}

    def add(self, place: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.places.setdefault(place, []).append(raw.lower())

    def hits(self, named: dict[str, str]) -> set[tuple[str, str]]:
        """``(secret name, place)`` for every secret found in a place, in any of its forms."""
        return {
            (name, place)
            for name, value in named.items()
            for place, items in self.places.items()
            for f in forms(value)
            if any(f in item for item in items)
        }

    def sizes(self) -> dict[str, tuple[int, int]]:  # records and bytes searched per place
        return {p: (len(v), sum(map(len, v))) for p, v in sorted(self.places.items())}


@dataclasses.dataclass
class World:
    """The campaign's surroundings: secrets, their files, the servers, the agents."""

    tmp: Path
    secret: dict[str, str]
    files: dict[str, Path]
    env: dict[str, str]
    server_home: Path
    bucket: str
    agents: dict[str, tuple[str, str]]  # instrument id -> (url, kind)
    seen: list[bytes] = dataclasses.field(default_factory=list)  # agents' answers to others

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/secrets.zarr"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd, io = [*COORCH, *args], {"capture_output": True, "stdin": subprocess.DEVNULL}
        out = subprocess.run(cmd, env=self.env, text=True, timeout=timeout, **io)
        (self.tmp / "logs" / f"cli-{time.monotonic_ns()}.log").write_text(
            f"{args}\n{out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out


def write_secret_files(d: Path, s: dict[str, str]) -> dict[str, Path]:
    d.mkdir(mode=0o700)
    text = {
        "afm.tokens": f"campaign: {s['control_afm']}\nalice: {s['alice']}\n",
        "afm.token": s["control_afm"],  # the campaign's copy: one bare token
        "raman.token": s["control_raman"],
        "readonly.token": s["readonly"],
        "steer.token": s["steer"],
    }
    for name, content in text.items():
        (d / name).write_text(content)
        (d / name).chmod(0o600)
    return {name: d / name for name in text}


def serve_afm(w: World) -> subprocess.Popen:
    """``coorch agent serve`` as an instrument PC runs it, access log and lease events on."""
    port = free_port()
    log = (w.tmp / "logs" / "agent-afm.log").open("wb")
    proc = subprocess.Popen(
        [*COORCH, "agent", "serve", "--instrument", "afm", "--port", str(port), "--seed", "1",
         "--time-scale", "0.01", "--tokens-file", str(w.files["afm.tokens"]),
         "--readonly-token-file", str(w.files["readonly.token"]), "--log-level", "info"],
        env=w.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(f"{url}/v1/health", timeout_s=60, alive=lambda: proc.poll() is None)
    return proc


@contextlib.contextmanager
def world(tmp: Path, env: pytest.MonkeyPatch) -> Iterator[World]:
    """Secrets, moto S3, a Prefect server, the two agents; everything stopped on exit."""
    import s3fs
    from prefect.settings import PREFECT_API_URL, temporary_settings

    s = {k: new_secret(k.replace("_", "-")) for k in (
        "control_afm", "control_raman", "alice", "readonly", "steer", "wrong_steer")}  # fmt: skip
    s["aws_key"] = "AKIA" + secrets.token_hex(8).upper()
    s["aws_secret"] = secrets.token_urlsafe(30)
    (tmp / "logs").mkdir()
    files = write_secret_files(tmp / "secrets", s)
    aws = {"AWS_ACCESS_KEY_ID": s["aws_key"], "AWS_SECRET_ACCESS_KEY": s["aws_secret"],
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for k, v in aws.items():
        env.setenv(k, v)
    with contextlib.ExitStack() as stack:
        env.setenv("AWS_ENDPOINT_URL", stack.enter_context(moto_endpoint()))
        bucket = f"coorch-{secrets.token_hex(4)}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        home = tmp / "prefect-server"
        url = stack.enter_context(local_prefect_server(home))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        child = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp / "campaign-home"),
                 "PREFECT_LOGGING_LEVEL": "DEBUG", "COLUMNS": "200"}  # fmt: skip
        w = World(tmp, s, files, child, home, bucket, {})
        afm = serve_afm(w)
        stack.callback(_stop, afm)
        raman = start_twin(
            "raman", seed=2, tokens={"campaign": s["control_raman"], "alice": s["alice"]},
            readonly_token=s["readonly"],
        )  # fmt: skip
        stack.callback(raman.stop)
        afm_url = afm.args[afm.args.index("--port") + 1]
        for u in (f"http://127.0.0.1:{afm_url}", raman.url):
            r = httpx.get(f"{u}/v1/describe", headers=_bearer(s["readonly"]))
            w.agents[r.json()["id"]] = (u, r.json()["kind"])
        yield w


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_spec(w: World) -> Path:
    modality = {"afm": "pfm_loop", "raman": "raman"}
    instruments = [
        {"name": name, "kind": kind, "modality": modality[kind], "url": url,
         "token_file": str(w.files[f"{kind}.token"])}
        for name, (url, kind) in w.agents.items()
    ]  # fmt: skip
    spec = {
        "name": "secrets", "instruments": instruments, "budget": 8, "seeds_per_instrument": 2,
        "grid": [21, 3], "refit_every": 3, "store": w.store,
        "report": str(w.tmp / "out" / "live-report.html"),
        "steering": {"mode": "review", "every": 2, "deadline_s": 90,
                     "token_file": str(w.files["steer.token"])},
    }  # fmt: skip
    (w.tmp / "out").mkdir(exist_ok=True)
    (w.tmp / "out" / "spec.yaml").write_text(yaml.safe_dump(spec))
    return w.tmp / "out" / "spec.yaml"


class Watch:
    """While the campaign runs: the lease ids its clients keep on disk (secrets to search for),
    and what the agents show other token holders: status to the read-only token and to alice
    (another control token), and alice's refused try at the lease."""

    def __init__(self, w: World) -> None:
        self.w, self.leases, self.refusals = w, set(), []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stopping.wait(0.25):
                for f in (self.w.tmp / "secrets").glob("*.lease"):
                    with contextlib.suppress(OSError):
                        self.leases.add(f.read_text().strip())
                for url, _ in self.w.agents.values():
                    self._look(http, url)

    def _look(self, http: httpx.Client, url: str) -> None:
        s = self.w.secret
        for token in (s["readonly"], s["alice"]):
            r = http.get(f"{url}/v1/status", headers=_bearer(token))
            self.w.seen.append(r.content)
        if not r.json()["lease"]["held"]:
            return
        r = http.post(f"{url}/v1/lease", headers=_bearer(s["alice"]), json={"ttl_s": 5})
        self.refusals.append(r.status_code)
        if r.status_code != 200:
            self.w.seen.append(r.content)
        else:  # the campaign let go just now: alice's id is a secret too (but hers to see)
            lease = r.json()["lease_id"]
            self.leases.add(lease)
            http.request("DELETE", f"{url}/v1/lease",
                         headers={**_bearer(s["alice"]), "X-Lease-Id": lease})  # fmt: skip


def steer(w: World, campaign: subprocess.Popen):
    """Operators with the token (``coorch steer`` in another process, and this one) and
    without it: a redirect, a wrong-token command, a malformed one, every review answered, one
    first with a wrong token. The steering token and the wrong one both cross the wire."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.input import send_input

    from coorch.flows.steer_client import SteeringError, answer, open_proposals, steerable_runs
    from coorch.flows.steering import COMMAND_PREFIX, ReviewAnswer, SteerCommand

    while not (runs := steerable_runs()):
        assert campaign.poll() is None, "the campaign ended before it was steerable"
        time.sleep(0.3)
    run = runs[0]
    tok = ["--token-file", str(w.files["steer.token"]), "--operator", "ann"]
    out = w.cli("steer", "explore", str(run.id), "0.3", *tok)
    assert out.returncode == 0, out.stderr
    wrong = w.secret["wrong_steer"]
    cmd = SteerCommand(action="stop", operator="eve", token=wrong)
    send_input(cmd, flow_run_id=run.id, key_prefix=COMMAND_PREFIX)
    # a hand-made command with the right token but no operator: refused as malformed
    handmade = json.dumps({"action": "stop", "token": w.secret["steer"]})
    with get_client(sync_client=True) as c:
        c.create_flow_run_input(run.id, f"{COMMAND_PREFIX}-handmade", handmade)
    by_cli, tried_wrong = False, set()
    while campaign.poll() is None:
        found = open_proposals(run)
        if not found:
            time.sleep(0.2)
        elif not by_cli:
            by_cli = w.cli("steer", "accept", str(run.id), *tok).returncode == 0
        elif found[0].review_run.id not in tried_wrong:
            tried_wrong.add(found[0].review_run.id)
            reply = ReviewAnswer(operator="mallory", token=wrong).model_dump()
            with contextlib.suppress(Exception):
                resume_flow_run(found[0].review_run.id, run_input=reply)
        else:
            with contextlib.suppress(SteeringError):
                answer(run, w.secret["steer"], "bob", action="accept")
            time.sleep(0.2)
    return run


def _pages(read, **kw) -> list:
    """Every item of a Prefect ``read_*`` call, 200 at a time (the API's page size)."""
    out: list = []
    while True:
        page = read(limit=200, offset=len(out), **kw)
        out += page
        if len(page) < 200:
            return out


def from_prefect_api(hay: Haystack) -> int:
    """Logs, flow and task runs, their inputs, artifacts: as the UI or any API user sees
    them. Returns how many run inputs were left over."""
    from prefect.client.orchestration import get_client

    left = 0
    with get_client(sync_client=True) as c:
        for log in _pages(c.read_logs):
            hay.add("prefect: logs", log.model_dump_json())
        for run in _pages(c.read_flow_runs):
            hay.add("prefect: flow runs (parameters, tags, states)", run.model_dump_json())
            for i in c.filter_flow_run_input(run.id, "", 1000, set()):
                hay.add("prefect: run inputs", i.model_dump_json())
                left += not i.key.endswith(("-schema", "-description"))  # a pause's form
        for task in _pages(c.read_task_runs):
            hay.add("prefect: task runs", task.model_dump_json())
        for art in _pages(c.read_artifacts):
            hay.add("prefect: artifacts", art.model_dump_json())
    return left


def from_prefect_db(w: World, hay: Haystack) -> int:
    """Every row of every table of the Prefect server's database (events, states, inputs...),
    as a logical dump. Returns the rows."""
    path = w.server_home / "prefect.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = sum(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)
        hay.add("prefect: database (every row)", "\n".join(db.iterdump()))
    return rows


def from_store_and_files(w: World, hay: Haystack) -> None:
    """Every object in the bucket (the zarr store, its journal, lock), and every local file
    but the secrets' own (logs, reports, the campaign's Prefect home, the server's log)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for key in fs.find(w.bucket):
        hay.add("store: every object on S3", fs.cat_file(key))
    for path in sorted(w.tmp.rglob("*")):
        rel = path.relative_to(w.tmp)
        if rel.parts[0] == "secrets" or path.name.startswith("prefect.db") or path.is_dir():
            continue
        hay.add(f"local files: {rel.parts[0]}/", path.read_bytes())


def after_campaign(w: World) -> None:
    """What people look at afterwards: ``coorch store`` and the report (outputs kept under
    logs/, the report under out/)."""
    from coorch.storage import CampaignStore
    from coorch.tasks.report_html import write_report

    out = w.cli("store", "show", w.store)
    assert out.returncode == 0, out.stderr
    w.cli("store", "verify", w.store)  # searched whatever it finds (not this test's concern)
    store = CampaignStore.open(w.store, create=False)
    steered = [d.measurement_id for d in store.read_decisions() if d.human_input is not None]
    for mid in steered[:2]:  # lineage shows what operators did
        assert w.cli("store", "lineage", w.store, mid).returncode == 0
    # coorch report takes a local folder only (a Path: s3:// collapses); what it calls:
    write_report(store, w.tmp / "out" / "report.html")
    human = [d.human_input for d in store.read_decisions() if d.human_input is not None]
    assert {(h.operator, h.action) for h in human} >= {("ann", "explore"), ("ann", "accept")}
    assert all(h.operator not in ("eve", "mallory") for h in human)


def plant(w: World, value: str, flow_run_id) -> set[str]:
    """The self-check: put ``value`` where a leak would go, one of each kind of place; returns
    the places the search must then report."""
    import s3fs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate

    (w.tmp / "out" / "planted.txt").write_text(f"oops: {value}")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{w.bucket}/secrets.zarr/.planted", value.encode())
    logging.getLogger("coorch.test.planted").warning("token=%s", value)
    with get_client(sync_client=True) as c:
        now = datetime.now(UTC)
        log = LogCreate(name="planted", level=30, message=f"token={value}", timestamp=now,
                        flow_run_id=flow_run_id)  # fmt: skip
        c.create_logs([log])
        c.create_flow_run_input(flow_run_id, "planted", f'{{"token": "{value}"}}')
    w.seen.append(base64.b64encode(value.encode()))
    return {"local files: out/", "store: every object on S3", "this process: log records",
            "prefect: logs", "prefect: run inputs", "prefect: database (every row)",
            "agents' answers to others"}  # fmt: skip


@pytest.mark.slow
def test_tokens_leases_and_s3_credentials_are_nowhere_after_a_steered_campaign(
    tmp_path, caplog, capfd, monkeypatch
):
    from coorch.flows.steer_client import send

    # ours and the libraries that carry secrets at DEBUG, the rest at INFO (botocore's DEBUG
    # prints the Authorization header, so the S3 access key id, by design)
    caplog.set_level(logging.INFO)
    for name in ("coorch", "prefect", "uvicorn", "httpx", "distributed"):
        caplog.set_level(logging.DEBUG, logger=name)
    started = time.monotonic()
    with world(tmp_path, monkeypatch) as w:
        log = (tmp_path / "logs" / "campaign.log").open("wb")
        campaign = subprocess.Popen(
            [*COORCH, "--debug", "run", str(write_spec(w))],
            env=w.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with Watch(w) as watch:
                run = steer(w, campaign)
                rc = campaign.wait(300)
        finally:
            if campaign.poll() is None:
                _stop(campaign)
        assert rc == 0, (tmp_path / "logs" / "campaign.log").read_text()[-3000:]
        # a command that crossed the campaign's end (sent as it finished): nobody reads it
        send(run, w.secret["steer"], "ann", "explore", value=0.5)
        after_campaign(w)
        # the secrets were used: leases taken on both agents, alice refused while one was held
        assert len(watch.leases) >= 2 and 409 in watch.refusals

        planted = new_secret("planted")
        must_find = plant(w, planted, run.id)
        hay = Haystack()
        left = from_prefect_api(hay)
        rows = from_prefect_db(w, hay)
        from_store_and_files(w, hay)
        hay.add("agents' answers to others", b"\n".join(w.seen))
    hay.add("this process: log records", "\n".join(r.getMessage() for r in caplog.records))
    out, err = capfd.readouterr()
    hay.add("this process: stdout and stderr", out + err)

    named = {**w.secret, **{f"lease {k}": v for k, v in enumerate(sorted(watch.leases))}}
    print(f"searched for {len(named)} secrets in {time.monotonic() - started:.0f} s; "
          f"{left} run inputs left over, {rows} database rows")  # fmt: skip
    for place, (n, size) in hay.sizes().items():
        print(f"  {place}: {n} records, {size} bytes")
    found = hay.hits({"planted": planted})
    assert {place for _, place in found} >= must_find, "the search cannot see a planted secret"
    assert hay.hits(named) == set()
