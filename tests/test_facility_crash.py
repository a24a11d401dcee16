"""A campaign killed while it holds a shared instrument: on a real local Prefect server, the
instrument is free again within the slot's lease and the other campaign goes on, with nothing
lost or twice in its store. (Resuming a killed campaign is tests/test_crash_suites.py's and
tests/test_campaign_cli.py's.)

Real parts throughout: ``prefect server start`` (its repossessor frees lapsed concurrency leases,
which the test harness does not), two ``coorch run`` processes, twin agents as processes with
command logs, one facility database (arbiter and sample registry).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from crash_support import (
    Figures,
    PrefectServer,
    check_campaign,
    end_group,
    failure,
    run_campaign,
    start_agents,
    write_spec,
)

from coorch.deployments.arbiter import Arbiter
from coorch.instrument_agents.command_log import interleaved

#: The arbiter's slot lease (Prefect's minimum), and what the repossessor and a poll may add.
LEASE_S, SLACK_S = 60.0, 30.0


def wait_until(what, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s")


@pytest.mark.slow
def test_a_killed_campaigns_instrument_comes_back_within_its_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "2")
    server = PrefectServer(tmp_path / "prefect").start()
    # a PFM loop takes 30 s x 0.05 = 1.5 s: a kill lands inside a measurement
    started = start_agents(tmp_path, time_scale=0.05)
    agents = started[:1]  # the AFM: both campaigns need it
    db = f"sqlite:///{tmp_path / 'facility.db'}"
    try:
        specs = {
            name: write_spec(
                tmp_path,
                name,
                agents,
                budget,
                facility=db,
                policy="random",
                sample=f"lib-{name}",
                seeds_per_instrument=1,
            )
            for name, budget in (("victim", 8), ("survivor", 6))
        }
        victim = run_campaign(specs["victim"], server.url)
        arbiter = Arbiter(db)
        held = wait_until(
            lambda: [g for g in arbiter.grants() if g.campaign == "victim" and g.released is None],
            timeout_s=240,
        )
        survivor = run_campaign(specs["survivor"], server.url)
        wait_until(lambda: arbiter.waiting() or arbiter.grants()[-1].campaign == "survivor", 240)
        held = [g for g in arbiter.grants() if g.campaign == "victim" and g.released is None]
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        end_group(victim)

        assert survivor.wait(600) == 0, failure(survivor)
        after = [g for g in arbiter.grants() if g.campaign == "survivor" and g.granted > killed_at]
        assert after, "the survivor never got the instrument after the kill"
        # free again within the slot's lease (the victim may have been between turns: sooner)
        free_after_s = min(g.granted for g in after) - killed_at
        assert free_after_s <= LEASE_S + SLACK_S
        print(f"\nfacility crash: instrument free again {free_after_s:.1f} s after the kill")
        if held:  # the turn the kill cut short stays unreleased, its slot came back anyway
            assert all(g.released is None for g in arbiter.grants() if g.id == held[-1].id)

        check_campaign(tmp_path / "survivor.zarr", agents, 6, Figures())
        assert interleaved(agents[0].command_log) == []
        arbiter.close()
    finally:
        for a in started:
            a.stop()
        server.stop()
