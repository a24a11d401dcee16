"""The agent's OpenAPI contract, fuzzed: schemathesis against every backend over real HTTP.

Each backend of the conformance suite (the four twins and the replay of real data) is served on
127.0.0.1, and schemathesis' engine (what ``schemathesis run`` drives) generates requests from
the schema that agent serves -- examples, coverage and fuzzing phases, positive and negative
data -- and runs every built-in check on every answer: no 5xx, only documented statuses,
content types, headers and bodies as documented, valid data accepted, invalid data refused,
missing headers refused, auth enforced (probes without and with wrong credentials), unsupported
methods answered 405 with a right ``Allow``.

Authenticated runs carry the control token *and* a live lease id (an auth provider takes or
renews the lease for each case, since a fuzzed ``DELETE /v1/lease`` or a tiny ``ttl_s`` ends
it), so the fuzzer reaches the real handlers; a second run sends no credentials of ours. Three
checks of the agent's own run on every answer too (:func:`stage_inside_limits`,
:func:`valid_refused_only_for_state`, :func:`anonymous_refused`).

(Not through ``schemathesis.pytest``: its plugin sets ``Node._nodeid``, which pytest 9.2 no
longer has.) ``COORCH_FUZZ_EXAMPLES`` sets the fuzzing examples per operation and mode
(default 8). The heavier run quoted in ``docs/reliability.md`` is
``COORCH_FUZZ_EXAMPLES=60 pytest tests/test_agent_openapi.py -k lease`` (about 4 minutes): kept
out of CI, which must stay under 30 minutes on 2 cores and already runs every check on every
backend.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from shared_data import REPLAY_FILE

from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.launch import RunningAgent, serve_driver
from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.replay import ReplayDriver
from coorch.instrument_agents.twins import make_twin

TOKEN = "fuzz-token"
HTTP = httpx.Client(verify=False, timeout=10)
BACKENDS: dict[str, Callable[[], Driver]] = {
    "afm": lambda: make_twin("afm", seed=1),
    "raman": lambda: make_twin("raman", seed=2),
    "wds": lambda: make_twin("wds", "alscbn", seed=3),
    "stem": lambda: make_twin("stem", seed=4),
    "replay": lambda: ReplayDriver(REPLAY_FILE, noise=0.01),
}
#: Routes where a schema-valid request may still be refused for the instrument's state.
STATEFUL_422 = {
    "/v1/move": {"out_of_limits"},
    "/v1/measure": {"request_id_reused"},
    "/v1/frame": {"bad_fiducials"},
}


class Live:
    """The agent under fuzzing, and the lease the fuzzer works under (None: no run)."""

    agent: RunningAgent | None = None
    run: str = ""
    lease_id: str | None = None
    issued: set[str] = set()

    @classmethod
    def lease(cls) -> str:
        """A live lease id: the current one renewed, or a fresh one if it ended (presenting
        an ended lease's id takes a new one)."""
        assert cls.agent is not None
        auth = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": "fuzzer"}
        url, body = f"{cls.agent.url}/v1/lease", {"ttl_s": 600}
        presented = {"X-Lease-Id": cls.lease_id} if cls.lease_id else {}
        r = HTTP.post(url, headers={**auth, **presented}, json=body)  # renews, or takes anew
        if r.status_code == 200:
            cls.keep(r.json()["lease_id"])
        return cls.lease_id or "no-lease"  # 409: a take whose answer we missed; refused alike

    @classmethod
    def keep(cls, lease_id: str) -> None:
        cls.lease_id = lease_id
        cls.issued.add(lease_id)


class LeaseHolder:
    """schemathesis auth provider: the control token and a live lease id for each case."""

    def get(self, case, ctx) -> str:
        return Live.lease()

    def set(self, case, data: str, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
        case.headers["X-Lease-Id"] = data


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """A case generated before a fuzzed release still carries a live lease when it is sent
    (only ids this test issued are swapped, so an auth probe's forged id stays forged)."""
    lease = (case.headers or {}).get("X-Lease-Id")
    if Live.agent is not None and Live.run == "authed" and lease in Live.issued:
        case.headers["X-Lease-Id"] = Live.lease()


@schemathesis.hook
def after_call(context, case, response) -> None:
    """A fuzzed take of the lease (ours had lapsed under a tiny ``ttl_s``) is ours from now."""
    took = case.path == "/v1/lease" and case.method.upper() == "POST"
    if Live.agent is not None and took and response.status_code == 200:
        Live.keep(response.json()["lease_id"])


# ------------------------------------------------------------------ the agent's own checks


@schemathesis.check
def stage_inside_limits(ctx, response, case) -> bool | None:
    """Whatever was asked, the stage is inside its limits afterwards."""
    if Live.agent is None:
        return None
    driver = Live.agent.driver
    st, limits = driver.status(), driver.describe().stage_limits
    for axis in ("x", "y"):
        lo, hi = limits[axis]
        assert lo <= float(st[f"stage_{axis}"]) <= hi, f"stage {axis} outside [{lo}, {hi}]"
    return None


@schemathesis.check
def valid_refused_only_for_state(ctx, response, case) -> bool | None:
    """A schema-valid request refused with 422 was refused for the instrument's state (see
    ``STATEFUL_422``), never because the schema and the validation disagree; a target refused
    as out of limits really is outside them."""
    meta = case.meta
    if Live.agent is None or meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code != 422 or not isinstance(case.body, dict):
        return None
    error = response.json()["error"]
    assert error in STATEFUL_422.get(case.path, set()), f"valid request refused: {response.text}"
    if error == "out_of_limits":
        frame = HTTP.get(
            f"{Live.agent.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        x, y = float(case.body["x"]), float(case.body["y"])
        if case.body.get("frame", "library") == "library":
            x, y = AffineFrame.from_dict(frame.json()["frame"]).to_stage(x, y)
        limits = Live.agent.driver.describe().stage_limits
        inside = all(lo <= v <= hi for v, (lo, hi) in zip((x, y), limits.values(), strict=True))
        assert not inside, f"a move inside the limits was refused: {case.body}"
    return None


@schemathesis.check
def anonymous_refused(ctx, response, case) -> bool | None:
    """Without our credentials nothing but /v1/health answers 2xx."""
    if Live.agent is None or Live.run != "anonymous" or case.path == "/v1/health":
        return None
    assert not 200 <= response.status_code < 300, f"{case.path} answered without a token"
    return None


# ------------------------------------------------------------------ running the engine


@dataclass
class Tally:
    cases: int = 0
    checks: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _config(examples: int, coverage: bool) -> SchemathesisConfig:
    expected = ["2xx", "401", "403", "409", "422"]  # 422 only as valid_refused_only_for_state
    return SchemathesisConfig.from_dict(
        {
            "seed": 16,
            "generation": {"max-examples": examples},
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": coverage}},
            "operations": [
                {
                    "include-path": sorted(STATEFUL_422),
                    "checks": {"positive_data_acceptance": {"expected-statuses": expected}},
                }
            ],
        }
    )


def fuzz(agent: RunningAgent, run: str, examples: int, *, coverage: bool = True) -> Tally:
    """Run schemathesis over ``agent``'s schema; ``run`` is ``authed`` or ``anonymous``."""
    config = _config(examples, coverage)
    schema = schemathesis.openapi.from_url(f"{agent.url}/openapi.json", config=config)
    if run == "authed":
        schema.auth(refresh_interval=None)(LeaseHolder)
    Live.agent, Live.run, Live.lease_id = agent, run, None
    tally = Tally()
    try:
        for ev in from_schema(schema).execute():
            if isinstance(ev, events.ScenarioFinished):
                _count(ev.recorder, tally)
            elif isinstance(ev, events.NonFatalError | events.FatalError):
                tally.errors.append(str(getattr(ev, "info", ev))[:500])
    finally:
        Live.agent = None
    return tally


def _count(recorder, tally: Tally) -> None:
    tally.cases += len(recorder.cases)
    for case_id, nodes in recorder.checks.items():
        for node in nodes:
            tally.checks[node.name] += 1
            if node.failure_info is not None:
                case = recorder.cases[case_id].value
                got = recorder.interactions.get(case_id)
                answer = f"{got.response.status_code} {got.response.content[:300]!r}" if got else ""
                tally.failures.append(
                    f"{case.method} {case.path} {node.name}: {node.failure_info.failure.title}"
                    f"\n  {node.failure_info.code_sample}\n  -> {answer}"
                )
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is not None:
            case = recorder.cases[case_id].value
            tally.statuses[f"{case.method} {case.path} {interaction.response.status_code}"] += 1


@pytest.fixture(scope="module", params=list(BACKENDS))
def agent(request) -> Iterator[RunningAgent]:
    name = request.param
    if name == "replay" and not REPLAY_FILE.exists():
        pytest.skip(f"replay data not found at {REPLAY_FILE}")
    with serve_driver(BACKENDS[name](), token=TOKEN) as running:
        yield running


def _report(agent: RunningAgent, run: str, tally: Tally) -> None:
    name = agent.driver.describe().id
    print(
        f"\n{name} {run}: {tally.cases} cases, {sum(tally.checks.values())} checks "
        f"({len(tally.checks)} kinds), {len(tally.failures)} failures"
    )
    assert not tally.errors, tally.errors
    assert not tally.failures, "\n".join(tally.failures[:10])


def test_every_route_keeps_its_documented_contract_with_a_lease(agent):
    tally = fuzz(agent, "authed", int(os.environ.get("COORCH_FUZZ_EXAMPLES", "8")))
    _report(agent, "authed", tally)
    ok = {key.rsplit(" ", 1)[0] for key in tally.statuses if key.endswith(" 200")}
    for route in ("POST /v1/move", "POST /v1/measure", "POST /v1/sample", "DELETE /v1/lease"):
        assert route in ok, f"the fuzzer never got through to {route}"
    assert tally.checks["positive_data_acceptance"] and tally.checks["ignored_auth"]


def test_every_route_refuses_a_caller_without_credentials(agent):
    # The auth layer is the server's, the same for every driver: examples and fuzzing suffice
    # here (the authed run's coverage phase and ignored_auth probes also go without a token).
    tally = fuzz(
        agent, "anonymous", int(os.environ.get("COORCH_FUZZ_EXAMPLES", "8")), coverage=False
    )
    _report(agent, "anonymous", tally)
    assert tally.checks["anonymous_refused"] > 0
