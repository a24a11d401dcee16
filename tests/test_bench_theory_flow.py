"""``coorch bench theory-flow`` runs end to end: both campaigns on real twins, a real Prefect
server and real clusters, and the simulations beside the co-navigating one (a benchmark
nothing else runs, which a Prefect upgrade broke once without a test noticing)."""

from __future__ import annotations

import pytest

from coorch.benchmarks.theory_flow import run_pair


@pytest.mark.slow
def test_the_theory_flow_benchmark_runs_both_campaigns_and_counts_the_simulations(tmp_path):
    out = run_pair(tmp_path, budget=8, time_scale=0.0, sims=16, workers=1)
    assert set(out) == {"coorchestrate", "conavigate"}
    for r in out.values():
        measured = {k: v for k, v in r["instruments"].items() if k != "span_s"}
        assert sum(v["measurements"] for v in measured.values()) == 8
        assert all(0.0 <= v["idle_share"] <= 1.0 for v in measured.values())
    assert out["coorchestrate"]["theory"] == {"simulations": 0}
    theory = out["conavigate"]["theory"]
    assert theory["simulations"] > 0 and theory["by_status"].get("done", 0) > 0
    assert theory["cluster_busy_share"] > 0.0
