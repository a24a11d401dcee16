"""Operators steer a running campaign: a real Prefect server, HTTP twins, Dask, a zarr store,
and ``coorch steer`` run as another process."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coorch.deployments.config import CampaignSpec
from coorch.storage import CampaignStore


def spec(cfgs, store, token_file, budget, **steering) -> CampaignSpec:
    return CampaignSpec(
        name="steered",
        instruments=cfgs,
        budget=budget,
        seeds_per_instrument=2,
        grid=(21, 3),
        refit_every=3,
        store=str(store),
        steering={"token_file": token_file, **steering},
    )


def token_file(tmp_path: Path, token: str, name: str = "steer.token") -> Path:
    path = tmp_path / name
    path.write_text(token)
    path.chmod(0o600)
    return path


class Running:
    """A campaign flow on a thread (as on a worker), its result or error kept."""

    def __init__(self, s: CampaignSpec) -> None:
        from coorch.flows.coorchestrate import coorchestrate

        self.state = None
        self.thread = threading.Thread(target=self._run, args=(coorchestrate, s), daemon=True)
        self.thread.start()

    def _run(self, flow, s) -> None:
        self.state = flow(s, return_state=True)

    def run(self, timeout_s: float = 60):
        """The campaign's steerable flow run, once it is tagged as such."""
        from coorch.flows.steer_client import steerable_runs

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            runs = steerable_runs()
            if runs:
                return runs[0]
            assert self.thread.is_alive(), f"the campaign ended early: {self.state}"
            time.sleep(0.2)
        raise AssertionError("the campaign never became steerable")

    def finish(self, timeout_s: float = 300):
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the campaign did not finish"
        return self.state


def coorch_steer(*args: str) -> subprocess.CompletedProcess:
    """``coorch steer ...`` in another process, against this session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "coorch.cli", "steer", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def wait_for_proposal(run, timeout_s: float = 60):
    from coorch.flows.steer_client import open_proposals

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = open_proposals(run)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no proposal was opened for review")


def test_an_operator_in_another_process_overrides_a_proposal_and_a_wrong_token_is_refused(
    prefect_server, twins, tmp_path
):
    from prefect.input import send_input

    from coorch.flows.steer_client import answer
    from coorch.flows.steering import SteerCommand

    good = token_file(tmp_path, "the-right-token-0123456789abcdef")
    bad = token_file(tmp_path, "a-wrong-token", "bad.token")
    store = tmp_path / "c.zarr"
    campaign = Running(spec(twins, store, good, budget=8, mode="review", deadline_s=120))
    run = campaign.run()

    # (d) a wrong token: refused by the CLI (exit 2) and by the campaign (a raw input)
    refused = coorch_steer("stop", str(run.id), "--token-file", str(bad), "--operator", "eve")
    assert refused.returncode == 2 and "wrong steering token" in refused.stderr
    send_input(SteerCommand(action="stop", operator="eve", token="guess"), flow_run_id=run.id)

    # (a) the first proposal overridden from another process, the rest accepted
    first = wait_for_proposal(run)
    x, y = 3.5, first.decision["library_y"]
    out = coorch_steer(
        "override", run.name, "--x", str(x), "--y", str(y),
        "--token-file", str(good), "--operator", "ann",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    while campaign.thread.is_alive():
        try:
            answer(run, "the-right-token-0123456789abcdef", "bob", action="accept")
        except Exception:  # noqa: BLE001 - no proposal open right now
            time.sleep(0.2)
    state = campaign.finish()
    assert state.is_completed(), state

    s = CampaignStore.open(str(store), create=False)
    decisions = s.read_decisions()
    human = [d for d in decisions if d.human_input is not None]
    overridden = [d for d in human if d.human_input.action == "override"]
    assert len(overridden) == 1
    d = overridden[0]
    assert d.human_input.operator == "ann" and d.policy == "operator"
    assert d.human_input.replaced["measurement_id"] == first.decision["measurement_id"]
    assert abs(d.library_x - x) <= 0.5  # the nearest candidate on the (21, 3) grid
    m = next(m for m in s.read_measurements() if m.measurement_id == d.measurement_id)
    assert m.instrument == first.instrument
    assert (m.library_x, m.library_y) == pytest.approx((d.library_x, d.library_y))
    # nobody with a wrong token stopped it: the whole budget was measured, no stop stored
    assert len(s.read_measurements()) == 8
    assert not [h for h in human if h.human_input.action == "stop"]
    assert s.verify() == []
    lineage = s.lineage(d.measurement_id)
    assert [h["action"] for h in lineage["human"]] == ["override"]


def test_nobody_answers_the_proposals_run_after_the_deadline_and_the_run_completes(
    prefect_server, twins, tmp_path
):
    """...and while one instrument waits for its review, the other keeps measuring."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from coorch.flows.steering import DEADLINE

    good = token_file(tmp_path, "deadline-token-0123456789abcdef")
    store = tmp_path / "c.zarr"
    s = spec(twins, store, good, budget=10, mode="review", every=2, deadline_s=2)
    campaign = Running(s)
    run = campaign.run()
    state = campaign.finish()
    assert state.is_completed(), state
    s = CampaignStore.open(str(store), create=False)
    decisions = s.read_decisions()
    agent = [d for d in decisions if d.policy == "coorchestrate"]
    reviewed = [d for d in agent if d.human_input is not None]
    assert len(agent) == 10 - 4 and len(reviewed) == 3  # every 2nd agent decision
    assert {d.human_input.operator for d in reviewed} == {DEADLINE}
    assert all(d.human_input.replaced["measurement_id"] == d.measurement_id for d in reviewed)
    with get_client(sync_client=True) as client:
        reviews = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
    assert len(reviews) == 3 and all(r.state.is_completed() for r in reviews)
    measured = s.read_measurements()
    # the instruments did not all wait for one review: another one measured meanwhile (not
    # for every review: two may wait at once, and the last may have nothing left to share)
    during = [  # from the proposal to its answer
        m
        for d in reviewed
        for m in measured
        if m.instrument != d.instrument and d.created < m.ended < d.human_input.at
    ]
    assert during, "every instrument waited while a proposal was under review"


@pytest.fixture(scope="module")
def slow_twins(tmp_path_factory):
    """PFM and Raman twins that take their (scaled) time, so operators can vote meanwhile."""
    from coorch.deployments.config import InstrumentConfig
    from coorch.instrument_agents.launch import start_twin

    token_file = tmp_path_factory.mktemp("tokens") / "agent.token"
    token_file.write_text("slow-twin-token")
    kinds = [("afm", "pfm_loop"), ("raman", "raman")]
    agents = [
        start_twin(kind, token="slow-twin-token", seed=k + 1, time_scale=0.04)
        for k, (kind, _) in enumerate(kinds)
    ]
    yield [
        InstrumentConfig(
            name=a.driver.describe().id, kind=kind, modality=mod, url=a.url, token_file=token_file
        )
        for a, (kind, mod) in zip(agents, kinds, strict=True)
    ]
    for a in agents:
        a.stop()


def in_target(x: float) -> bool:
    return x <= 2.5  # the library's first quarter along the Sm gradient (0-10 mm)


def votes_campaign(twins, tmp_path, name: str, vote: bool) -> list:
    from coorch.flows.progress import watching
    from coorch.flows.steer_client import send

    tok = "votes-token-0123456789abcdef"
    store = tmp_path / f"{name}.zarr"
    s = spec(twins, store, token_file(tmp_path, tok), budget=26, mode="votes", target_weight=0.8)
    s = s.model_copy(update={"name": name})
    seen: queue.Queue = queue.Queue()
    with watching(lambda m, info: seen.put(m)):
        campaign = Running(s)
        run = campaign.run()
        while campaign.thread.is_alive() or not seen.empty():
            try:
                m = seen.get(timeout=0.2)
            except queue.Empty:
                continue
            if vote and campaign.thread.is_alive():  # an operator who likes the target region
                score = 5 if in_target(m.library_x) else 1
                send(run, tok, "carol", "vote", measurement_id=m.measurement_id, score=score)
        assert campaign.finish().is_completed()
    return CampaignStore.open(str(store), create=False).read_decisions()


@pytest.mark.slow
def test_votes_send_more_measurements_to_what_operators_score_high(
    prefect_server, slow_twins, tmp_path
):
    def share_in_target(decisions) -> tuple[int, int]:
        return sum(in_target(d.library_x) for d in decisions), len(decisions)

    def by_agent(decisions, since: float = 0.0) -> list:
        return [d for d in decisions if d.policy == "coorchestrate" and d.created > since]

    plain = votes_campaign(slow_twins, tmp_path, "plain", vote=False)
    voted = votes_campaign(slow_twins, tmp_path, "voted", vote=True)
    votes = [d for d in voted if d.human_input is not None and d.human_input.action == "vote"]
    assert len(votes) >= 10 and {v.human_input.operator for v in votes} == {"carol"}
    # the agent's choices once the campaign had three votes: on a loaded machine the votes
    # reach it measurements late (in one CI run only the last half of its choices followed
    # them), so counting every choice measured the machine's load as much as the votes
    since = sorted(v.created for v in votes)[2]
    (a, n), (b, m) = share_in_target(by_agent(plain)), share_in_target(by_agent(voted, since))
    print(f"agent decisions in the target: {a} of {n} without votes, {b} of {m} after 3 votes")
    assert m >= 8 and b / m > a / n + 0.25
