"""The agent's command log: what the instrument was told to do, on disk, one JSON line each.

Why: an instrument PC must be able to say, after any crash, what it did -- and a campaign's
"nothing lost, nothing measured twice" must be checkable from the instrument's side, not only
from the store the campaign wrote. And an agent killed between an acquisition and its answer
must not acquire again when the client retries with the same request id: the result cache of
the server is in memory, so it is rebuilt from this log at start.

Design (the simplest honest one): an ASGI middleware around the agent's app, so the server's
routes are untouched. For each control route (move, measure, sample, reset, frame, abort, lease
take and release) it appends one line when the answer is complete, *before* the last byte goes
out: a client never holds an answer the log does not. Each line is flushed and fsynced. Lines:

* ``agent_start`` -- the agent (re)started; ``restored`` measurements were loaded back;
* ``measure_begin`` -- a measure with this request id reached the agent (every attempt);
* one line per finished command: ``command``, ``status`` (HTTP), ``request_id`` (measure, and
  a lease take's), ``token_name`` (never the token), ``holder`` (``X-Client-Id``), ``ts``.

A measure's first success carries its whole answer (``measurement``), so that a restarted agent
answers a retry from the log instead of measuring again; later answers for the same id are
``replay: true`` with the answer's digest only. An answer that differs from the stored one for
its id would be a second acquisition and is logged in full with ``replay: false``, so
:func:`audit` counts it. A ``measure_begin`` left without its line when the agent died marks an
acquisition the kill cut short: nothing of it reached anyone, and its retry measures afresh.
Lease ids and tokens never reach the log (the lease take's answer is not logged).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from coorch.instrument_agents.guards import MeasureCache
from coorch.instrument_agents.tokens import ControlTokens
from coorch.records import Measurement

#: (method, path) of the routes that command the instrument, and the name the log gives them.
CONTROL_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/move"): "move",
    ("POST", "/v1/measure"): "measure",
    ("POST", "/v1/sample"): "load_sample",
    ("POST", "/v1/reset"): "reset",
    ("POST", "/v1/frame"): "frame",
    ("POST", "/v1/abort"): "abort",
    ("POST", "/v1/lease"): "lease_take",
    ("DELETE", "/v1/lease"): "lease_release",
}


#: Routes whose request id the log records, and how much of a body is looked at for it.
PEEKED = ("measure", "lease_take")
MAX_PEEK = 64 * 1024


def digest(payload: Any) -> str:
    """A short fingerprint of a measure's answer (same answer, same digest)."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete line of the log at ``path`` ([] if none). A last line cut by a crash
    mid-write is skipped: its command never answered, so nothing relied on it."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


class CommandLog:
    """An append-only, fsynced JSON-lines file, and the measure answers it holds by request id."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.answers: dict[str, dict[str, Any]] = {}
        for line in read_log(self.path):
            if line.get("command") == "measure" and "measurement" in line:
                self.answers.setdefault(line["request_id"], line["measurement"])
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def record(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` (with a timestamp) and make it durable before returning."""
        line = json.dumps({"ts": time.time(), **entry}, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def restore(self, cache: MeasureCache) -> int:
        """Put every logged answer back into the agent's result cache; returns how many."""
        for rid, payload in self.answers.items():
            cache.put(rid, Measurement.model_validate(payload))
        return len(self.answers)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class CommandLogMiddleware:
    """ASGI middleware that writes :class:`CommandLog` lines for the control routes (see the
    module docstring). ``tokens`` name the bearer token of each call (the name is logged)."""

    def __init__(self, app: Any, log: CommandLog, tokens: ControlTokens) -> None:
        self.app, self.log, self.tokens = app, log, tokens

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        command = CONTROL_ROUTES.get((scope.get("method", ""), scope.get("path", "")))
        if scope["type"] != "http" or command is None:
            await self.app(scope, receive, send)
            return
        entry = self._who(scope, command)
        receive = self._reading(receive, entry)
        out: list[bytes] = []
        finished = False

        async def logging_send(message: dict[str, Any]) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body":
                if command == "measure":  # only a measure's answer is logged
                    out.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished = True
                    await anyio.to_thread.run_sync(self._finish, entry, b"".join(out))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            if not finished:  # an answer cut short (a simulated disconnect, or an error)
                entry["dropped"] = True
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.log.record, entry)

    def _who(self, scope: dict[str, Any], command: str) -> dict[str, Any]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        name = self.tokens.name_of(token.strip()) if scheme.lower() == "bearer" else None
        return {
            "command": command,
            "token_name": name,
            "holder": headers.get("x-client-id", "anonymous"),
        }

    def _reading(self, receive: Any, entry: dict[str, Any]) -> Any:
        """``receive`` passed through untouched (the app's own body limit still applies), with
        the first :data:`MAX_PEEK` bytes kept: once the body is in, a measure's or lease
        take's request id goes into ``entry``, and a measure gets its ``measure_begin``."""
        kept: list[bytes] = []
        size = 0

        async def peek() -> dict[str, Any]:
            nonlocal size
            message = await receive()
            if message["type"] != "http.request" or entry["command"] not in PEEKED:
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_PEEK:
                kept.append(chunk)
            if not message.get("more_body", False) and size <= MAX_PEEK:
                rid = _request_id(b"".join(kept))
                if rid is not None:
                    entry["request_id"] = rid
                    if entry["command"] == "measure":
                        begin = {"command": "measure_begin", "request_id": rid}
                        await anyio.to_thread.run_sync(self.log.record, begin)
            return message

        return peek

    def _finish(self, entry: dict[str, Any], body: bytes) -> None:
        """Complete a measure's line from its answer (first one in full), then write it."""
        if entry["command"] == "measure" and 200 <= entry.get("status", 0) < 300:
            payload = json.loads(body)
            rid = entry.setdefault("request_id", payload["measurement_id"])
            first = self.log.answers.get(rid)
            if first is not None and digest(first) == digest(payload):
                entry.update(replay=True, digest=digest(payload))
            else:
                self.log.answers.setdefault(rid, payload)
                entry.update(replay=False, digest=digest(payload), measurement=payload)
        self.log.record(entry)


def _request_id(body: bytes) -> str | None:
    """The ``request_id`` of a JSON body, if it has one."""
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        return None
    rid = request.get("request_id") if isinstance(request, dict) else None
    return None if rid is None else str(rid)


def attach_command_log(app: Any, path: str | os.PathLike[str]) -> CommandLog:
    """Log ``app``'s control commands to ``path`` (an agent from
    :func:`~coorch.instrument_agents.server.create_app`, not yet started) and answer retries of
    measurements the log already holds from it. Returns the open log."""
    agent = app.state.agent
    log = CommandLog(path)
    restored = log.restore(agent.cache)
    app.add_middleware(CommandLogMiddleware, log=log, tokens=agent.tokens)
    log.record(
        {
            "command": "agent_start",
            "pid": os.getpid(),
            "instrument": agent.driver.describe().id,
            "restored": restored,
        }
    )
    return log


# ---------------------------------------------------------------------- reading it back


@dataclass
class Audit:
    """What one or more command logs say was measured (see :func:`audit`)."""

    #: request id -> the answer of its first acquisition
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: request ids acquired more than once with different answers (must be empty)
    twice: list[str] = field(default_factory=list)
    #: answers served again for an id already measured (retries, resumes)
    replays: int = 0
    #: acquisitions cut short by the agent's death (their retries measured afresh)
    interrupted: int = 0
    #: agent starts (1 + restarts) per log
    starts: int = 0
    commands: Counter = field(default_factory=Counter)


def audit(
    paths: Iterable[str | os.PathLike[str]], request_ids: Iterable[str] | None = None
) -> Audit:
    """Read command logs back: each request id's acquisitions, replays and cut-short ones;
    only those of ``request_ids`` when given (one campaign's, on agents others used too)."""
    result = Audit()
    only = None if request_ids is None else set(request_ids)
    for path in paths:
        open_begins: Counter = Counter()
        for line in read_log(path):
            command = line.get("command")
            rid = line.get("request_id")
            if only is not None and command in ("measure", "measure_begin") and rid not in only:
                continue
            result.commands[command] += 1
            if command == "agent_start":
                result.starts += 1
                result.interrupted += sum(open_begins.values())
                open_begins.clear()
            elif command == "measure_begin":
                open_begins[line["request_id"]] += 1
            elif command == "measure":
                rid = line.get("request_id")
                if rid is not None and open_begins[rid] > 0:
                    open_begins[rid] -= 1
                if line.get("replay"):
                    result.replays += 1
                elif "measurement" in line:
                    if rid in result.measured:
                        result.twice.append(rid)
                    else:
                        result.measured[rid] = line["measurement"]
    return result


#: Commands that act on the instrument and so need the lease.
LEASED = ("move", "measure", "load_sample", "reset", "frame")


def interleaved(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The commands in one agent's log that succeeded for a holder other than the one whose
    lease was live: each successful ``lease_take`` names the holder until a successful
    ``lease_release`` (or a restart). Empty when no campaign's commands ever ran inside
    another's hold -- the check that instruments shared by campaigns never run two at once.
    (A lease that lapsed is not logged; the next ``lease_take`` names the next holder.)"""
    holder, out = None, []
    for line in read_log(path):
        command, ok = line.get("command"), 200 <= int(line.get("status", 0)) < 300
        if command == "agent_start":
            holder = None
        elif command == "lease_take" and ok:
            holder = line.get("holder")
        elif command == "lease_release" and ok:
            holder = None
        elif command in LEASED and ok and line.get("holder") != holder:
            out.append(line)
    return out
