"""16 twin agents and 8 campaigns at once on one Prefect server and one Dask cluster: every
measurement is stored exactly once, in its own campaign's store, and is what the instruments
measured.

The rig is ``coorch bench load`` at a reduced budget (:func:`coorch.benchmarks.load.run_load`):
a real Prefect server process, a Dask LocalCluster whose address all eight specs name, sixteen
HTTP twins (two per campaign, mixed kinds, each campaign with its own token), and eight
``coorch run SPEC`` processes started together. Its timings are the benchmark's business; this
test asserts only what must hold under load.
"""

from __future__ import annotations

import pytest

from coorch.benchmarks.load import run_load

AGENTS, CAMPAIGNS, BUDGET = 16, 8, 6


@pytest.mark.slow
def test_eight_concurrent_campaigns_on_sixteen_agents_store_every_measurement_once(tmp_path):
    out = run_load(AGENTS, CAMPAIGNS, BUDGET, time_scale=0.01, timeout_s=420, work=tmp_path)

    assert out["failed"] == [], out["errors"]
    rows = out["campaigns_detail"]
    assert len(rows) == CAMPAIGNS
    instruments = [i for r in rows for i in r["instruments"]]
    assert len(set(instruments)) == AGENTS  # every campaign on its own two agents
    for r in rows:
        assert r["stored"] == BUDGET, r  # the budget, no more and no less
        assert r["duplicates"] == 0, r
        assert r["decisions"] == BUDGET, r
        assert r["one_measurement_per_decision"], r
        # what the store holds is exactly what this campaign's agents measured, once each
        assert r["store_matches_agents"], r
        assert r["agents_measured"] == r["acquisitions"] == BUDGET, r
    assert out["stored"] == AGENTS // 2 * BUDGET
