"""Operators steer a running campaign through Prefect: reviews, votes, redirects.

Two channels, both Prefect's own, so the Prefect UI and ``coorch steer`` are the same thing:

- **Reviews**: a proposal waits in a ``review`` child flow run that pauses with a typed
  :class:`ReviewAnswer` (the UI shows its Resume form; ``coorch steer accept/override`` resumes
  it with the same fields). Only that child pauses: a paused flow run refuses to start new
  tasks, so pausing the campaign itself would idle every other instrument. The child waits on
  its own thread and the campaign keeps measuring. With no answer by the deadline, the
  campaign's own timer resumes it with the proposal accepted, before Prefect's pause timeout
  would fail it.
- **Redirects and votes**: :class:`SteerCommand` inputs sent to the campaign's flow run
  (Prefect's flow-run input API); :class:`Desk` polls for them on a thread and hands them to
  the flow between decisions. Nothing waits for a human.

Only holders of the campaign's steering token may steer. A review's answer carries the token
(the UI's form asks for it); the campaign compares it with its own (in constant time) and
deletes the stored answer once read. A command carries a proof instead (:func:`command_proof`:
an HMAC of the command and its flow run under the token, with a fresh nonce), so the token
never reaches Prefect's database: a command nobody reads (one sent as the campaign ends) stays
there, and so would a token. A command with the token itself is still accepted (an API user's
``send_input``) and deleted once read. Refused inputs are logged without their values and
change nothing. The run is tagged with a short fingerprint of the token (a hash: a random
token cannot be recovered from it) so that ``coorch steer`` can tell a user their token is
wrong without waiting for the campaign.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_base_key
from pydantic import Field, ValidationError

from coorch.records import Decision, HumanInput

#: The operator name a review's deadline answers with.
DEADLINE = "deadline (no answer)"
#: Tags that mark a campaign's flow run as steerable (and carry its token's fingerprint).
STEERABLE_TAG = "coorch-steerable"
FINGERPRINT_TAG = "coorch-steer-fp-"
#: Reviews open in this process (proposal's measurement id -> review run id), and those the
#: campaign closed early (it stopped): their deadline answer is taken at once.
_OPEN: dict[str, UUID] = {}
_CLOSED: set[str] = set()
#: Seconds a review's pause outlives its deadline: the timer answers first.
PAUSE_GRACE_S = 120
COMMAND_PREFIX = "steer"


class ReviewAnswer(RunInput):
    """An operator's answer to the agent's proposal."""

    action: Literal["accept", "override", "stop"] = Field(
        "accept",
        description="accept the agent's proposal, override it with x and y (and instrument), "
        "or stop the campaign",
    )
    x: float | None = Field(None, description="override: library x to measure instead (mm)")
    y: float | None = Field(None, description="override: library y to measure instead (mm)")
    instrument: str | None = Field(
        None, description="override: another instrument of the campaign (default: the same)"
    )
    operator: str = Field(description="your name, recorded with the answer")
    token: str = Field("", description="the campaign's steering token")


class SteerCommand(RunInput):
    """A redirect or a vote, sent to a running campaign (``coorch steer``)."""

    action: Literal[
        "vote", "seed", "exclude", "weight", "budget", "hold", "release", "explore", "stop"
    ]
    operator: str = Field(description="your name, recorded with the command")
    token: str = Field("", description="the campaign's steering token (or give proof)")
    proof: str = Field("", description="instead of the token: command_proof(token, run, self)")
    nonce: str = Field("", description="with proof: a fresh random string (no replays)")
    measurement_id: str | None = Field(None, description="vote: the measurement scored")
    score: float | None = Field(None, description="vote: 1 (bad) to 5 (good)")
    comment: str | None = Field(None, description="vote: why")
    box: list[float] | None = Field(None, description="exclude: x0 x1 y0 y1 (mm)")
    x: float | None = Field(None, description="seed: library x (mm)")
    y: float | None = Field(None, description="seed: library y (mm)")
    instrument: str | None = Field(None, description="seed/weight/budget/hold/release")
    value: float | None = Field(None, description="weight, budget or explore (0-1) value")

    def human(self) -> HumanInput:
        skip = {"action", "operator", *UNSIGNED, "nonce"}
        detail = {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}
        return HumanInput(operator=self.operator, action=self.action, detail=detail)


#: The fields of a :class:`SteerCommand` that its proof does not cover.
UNSIGNED = frozenset({"token", "proof"})


def command_proof(token: str, flow_run_id: UUID | str, cmd: SteerCommand) -> str:
    """HMAC-SHA256 under the steering token of ``cmd`` (but its token and proof) sent to
    ``flow_run_id``: proves the sender holds the token without sending it (module docstring).
    Bound to the run and, by its nonce, to this one command."""
    fields = cmd.model_dump(mode="json", exclude=set(UNSIGNED))
    msg = json.dumps({"flow_run_id": str(flow_run_id), **fields}, sort_keys=True)
    return hmac.new(token.encode(), msg.encode(), hashlib.sha256).hexdigest()


def fingerprint(token: str) -> str:
    """A short public fingerprint of a steering token (see the module docstring)."""
    return hashlib.sha256(b"coorch-steer:" + token.encode()).hexdigest()[:16]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@flow(name="review", log_prints=False)
def review(proposal: dict[str, Any], deadline_s: float, token_sha256: str) -> dict[str, Any]:
    """Wait for an operator's answer to ``proposal``; the proposal stands after ``deadline_s``.

    ``token_sha256``: the steering token's SHA-256, to check answers against without the token
    itself becoming a parameter. Answers with a wrong token are refused and the review waits on.
    Returns the answer's fields, without the token.
    """
    run_id = get_run_context().flow_run.id
    mid = str(proposal.get("measurement_id"))
    _OPEN[mid] = run_id
    try:
        form = ReviewAnswer.with_initial_data(
            description=_describe(proposal, deadline_s),
            x=proposal.get("library_x"),
            y=proposal.get("library_y"),
            instrument=proposal.get("instrument"),
        )
        return _wait_for_answer(run_id, mid, deadline_s, token_sha256, form)
    finally:
        _OPEN.pop(mid, None)
        _CLOSED.discard(mid)


def _describe(p: dict[str, Any], deadline_s: float) -> str:
    """What the Prefect UI's Resume form says above its fields."""
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + deadline_s))
    return (
        f"The agent proposes **{p.get('instrument')}** at x = {p.get('library_x'):.2f} mm, "
        f"y = {p.get('library_y'):.2f} mm ({p.get('policy')}, value "
        f"{p.get('acquisition_value')}, model {p.get('model_version')}).\n\n"
        "Accept it, override it (edit x, y or the instrument), or stop the campaign; give your "
        f"name and the campaign's steering token. Without an answer by {until} it runs."
    )


def _wait_for_answer(
    run_id: UUID, mid: str, deadline_s: float, token_sha256: str, form: type[ReviewAnswer]
) -> dict:
    log = logging.getLogger("coorch.steering")
    end = time.monotonic() + deadline_s
    for n in range(1, 1000):
        remaining = max(0.0, end - time.monotonic())
        key = f"answer-{n}"
        timer = threading.Timer(
            remaining, contextvars.copy_context().run, (_answer_by_deadline, run_id)
        )
        timer.daemon = True
        timer.start()
        try:
            answer = pause_flow_run(
                wait_for_input=form,
                timeout=int(remaining) + PAUSE_GRACE_S,
                poll_interval=1,
                key=key,
            )
        finally:
            timer.cancel()
        _forget(run_id, keyset_from_base_key(f"paused-{key}")["response"])
        given = hashlib.sha256(answer.token.encode()).hexdigest()
        if _same(given, token_sha256):
            return answer.model_dump(exclude={"token"})
        if answer.operator == DEADLINE and (time.monotonic() >= end - 0.5 or mid in _CLOSED):
            return ReviewAnswer(operator=DEADLINE).model_dump(exclude={"token"})
        log.warning("review %s: refused an answer from %r (wrong token)", run_id, answer.operator)
    raise RuntimeError("a review refused 1000 answers")


def _answer_by_deadline(run_id: UUID) -> None:
    with contextlib.suppress(Exception):  # an operator answered first: nothing to do
        resume_flow_run(run_id, run_input={"operator": DEADLINE, "action": "accept"})


def _forget(run_id: UUID, key: str) -> None:
    """Delete a stored input once read: it holds a token."""
    try:
        with get_client(sync_client=True) as client:
            client.delete_flow_run_input(run_id, key)
    except Exception:  # noqa: BLE001 - already gone
        pass


class Desk:
    """The campaign's side of steering: reviews on threads, commands polled, answers queued.

    Everything an operator does arrives on :attr:`events` as ``("answer", proposal, fields)``
    (a review's answer, or an exception) or ``("steer", HumanInput)``; the flow reads them
    between decisions. Use as a context manager inside the campaign's flow run.
    """

    def __init__(
        self,
        flow_run_id: str,
        token: str,
        events: queue.Queue,
        *,
        deadline_s: float,
        poll_s: float = 1.0,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.flow_run_id, self.events, self.deadline_s = UUID(flow_run_id), events, deadline_s
        self.token, self.poll_s = token, poll_s
        self.log = log or logging.getLogger("coorch.steering")
        self.reviews = ThreadPoolExecutor(8, thread_name_prefix="coorch-review")
        self.stopping = threading.Event()
        self.poller: threading.Thread | None = None
        self.refused = 0
        self.open: set[str] = set()
        self.nonces: set[str] = set()  # of the commands taken: a proof is good once

    def __enter__(self) -> Desk:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(self.flow_run_id)
            tags = [*run.tags, STEERABLE_TAG, FINGERPRINT_TAG + fingerprint(self.token)]
            client.update_flow_run(self.flow_run_id, tags=sorted(set(tags)))
        ctx = contextvars.copy_context()
        self.poller = threading.Thread(
            target=ctx.run, args=(self._poll,), name="coorch-steer-poll", daemon=True
        )
        self.poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.poller is not None:
            self.poller.join(timeout=10)
        self.close()  # a campaign that failed mid-review must not wait out the deadline
        self.reviews.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Answer every open review at once with its proposal (the campaign stopped)."""
        for mid, run_id in list(_OPEN.items()):
            if mid in self.open:
                _CLOSED.add(mid)
                _answer_by_deadline(run_id)

    def review(self, proposal: Decision) -> None:
        """Open a review of ``proposal``; its answer arrives on :attr:`events`."""
        params = {
            "proposal": proposal.model_dump(mode="json"),
            "deadline_s": self.deadline_s,
            "token_sha256": hashlib.sha256(self.token.encode()).hexdigest(),
        }
        named = review.with_options(
            flow_run_name=f"review-{proposal.instrument}-{proposal.measurement_id}"
        )
        self.open.add(proposal.measurement_id)
        fut: Future = self.reviews.submit(contextvars.copy_context().run, named, **params)
        fut.add_done_callback(lambda f: self._answered(proposal, f))

    def _answered(self, proposal: Decision, fut: Future) -> None:
        self.open.discard(proposal.measurement_id)
        self.events.put(("answer", proposal, fut))

    def _poll(self) -> None:
        seen: set[str] = set()
        while not self.stopping.wait(self.poll_s):
            try:
                with get_client(sync_client=True) as client:
                    found = client.filter_flow_run_input(
                        self.flow_run_id, COMMAND_PREFIX, limit=100, exclude_keys=seen
                    )
                    for item in found:
                        seen.add(item.key)
                        client.delete_flow_run_input(self.flow_run_id, item.key)
                        self._take(item.value)
            except Exception as exc:  # noqa: BLE001 - the API may blink; poll again
                self.log.warning("steering: reading commands failed (%s); retrying", exc)

    def _take(self, raw: str) -> None:
        try:
            cmd = SteerCommand.model_validate_json(raw)
        except ValidationError as exc:  # its message would show the input, token and all
            self.refused += 1
            why = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            self.log.warning("steering: refused a malformed command: %s", why)
            return
        if not self._authentic(cmd):
            self.refused += 1
            self.log.warning(
                "steering: refused %s from %r: wrong token (or a proof used before)",
                cmd.action,
                cmd.operator,
            )
            return
        self.events.put(("steer", cmd.human()))

    def _authentic(self, cmd: SteerCommand) -> bool:
        """The command's token is the campaign's, or its proof is good and new."""
        if not cmd.proof:
            return bool(cmd.token) and _same(cmd.token, self.token)
        good = _same(cmd.proof, command_proof(self.token, self.flow_run_id, cmd))
        if not good or not cmd.nonce or cmd.nonce in self.nonces:
            return False
        self.nonces.add(cmd.nonce)
        return True


def answer_fields(fields: dict[str, Any]) -> HumanInput:
    """A review's answer (from :func:`review`) as the human input stored with the decision."""
    detail = {k: fields[k] for k in ("x", "y", "instrument") if fields.get(k) is not None}
    return HumanInput(operator=fields["operator"], action=fields["action"], detail=detail)
