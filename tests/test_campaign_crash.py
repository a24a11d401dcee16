"""kill -9 a running campaign at random moments, resume it: nothing lost, nothing duplicated.

The campaign runs as `coorch run SPEC` in its own process group (Dask workers included) against a
real local Prefect server process and HTTP twins in this process; each kill takes the whole group
down mid-flight. The twins count what they actually measured, so "no duplicate" is checked at the
instrument, not only in the store.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import yaml
from crash_support import TOKEN, end_group, failure, run_campaign

from coorch.deployments.prefect_server import local_prefect_server
from coorch.instrument_agents.launch import start_twin
from coorch.storage import CampaignStore

BUDGET = 24


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    with local_prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing(prefect_api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    rng = random.Random(7)
    agents = {
        "afm": start_twin("afm", token=TOKEN, seed=1, time_scale=0.004),
        "raman": start_twin("raman", token=TOKEN, seed=2, time_scale=0.004),
    }
    try:
        store_url = tmp_path / "crash.zarr"
        spec = {
            "name": "crash",
            "policy": "coorchestrate",
            "budget": BUDGET,
            "seeds_per_instrument": 2,
            "grid": [21, 3],
            "refit_every": 4,
            "store": str(store_url),
            "instruments": [
                {
                    "name": a.driver.describe().id,
                    "kind": k,
                    "modality": m,
                    "url": a.url,
                    "token_file": str(token_file),
                }
                for (k, m), a in zip(
                    [("afm", "pfm_loop"), ("raman", "raman")], agents.values(), strict=True
                )
            ],
        }
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        kills = 0
        for _ in range(4):
            proc = run_campaign(spec_file, prefect_api)
            # let it get past start-up into measuring before the kill lands
            time.sleep(rng.uniform(6.0, 14.0))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            end_group(proc)
        proc = run_campaign(spec_file, prefect_api)
        proc.wait(300)
        assert proc.returncode == 0, failure(proc)
        assert kills >= 2, "the campaign finished before it could be killed: slow it down"

        store = CampaignStore.open(str(store_url), create=False)
        table = store.measurements_table()
        assert len(table) == BUDGET
        assert table["measurement_id"].is_unique
        assert table["decision_id"].is_unique  # one measurement per decision, never two
        measured = sum(a.driver.n_measured for a in agents.values())
        assert measured == BUDGET  # the instruments measured each point exactly once
        assert store.verify() == []
    finally:
        for a in agents.values():
            a.stop()
