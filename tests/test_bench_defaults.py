"""``coorch bench defaults`` (leave-one-problem-out choice of co-orchestration's settings) and
the trace cache the benchmarks share: the logic, on hand-made figures and a trivial job."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coorch.benchmarks.defaults_cv import curve_score, leave_one_out
from coorch.benchmarks.efficiency import run_jobs
from coorch.benchmarks.simulate import Settings, Trace
from coorch.benchmarks.trace_cache import job_key

CALLS: list[tuple] = []


def _job(policy: str, seed: int, settings: Settings) -> Trace:
    CALLS.append((policy, seed))
    return Trace(policy, seed, seconds=[1.0], scored_at=[1], rmse=[[0.5]], coverage=[[0.9]])


def test_the_choice_is_made_without_the_held_out_problem() -> None:
    scores = {  # lower is better; "b" wins on a and b, "c" only on its own problem
        "p1": {"a": 1.0, "b": 0.5, "c": 2.0},
        "p2": {"a": 1.0, "b": 0.6, "c": 2.0},
        "p3": {"a": 1.0, "b": 1.2, "c": 0.1},
    }
    out = leave_one_out(scores)
    assert out["folds"]["p3"] == {"chosen": "b", "rank_on_held_out": 3}
    assert out["folds"]["p1"]["chosen"] == "b"
    assert out["default"] == "b"
    assert out["votes"] == {"a": 0, "b": 3, "c": 0}  # c is best only where it is held out


def test_curve_score_rewards_reaching_a_low_error_sooner() -> None:
    def trace(drop_at: int) -> Trace:
        err = [[1.0] if n < drop_at else [0.1] for n in range(1, 11)]
        return Trace(
            "x", 0, seconds=[10.0 * n for n in range(1, 11)], scored_at=list(range(1, 11)), rmse=err
        )

    early, late = curve_score([trace(3), trace(8)], np.array([1.0]), horizon=100.0)
    assert early < late
    assert curve_score([trace(3)], np.array([1.0]), None)[0] < 0


def test_a_cached_job_is_not_run_again_and_settings_a_baseline_ignores_share_it(
    tmp_path: Path,
) -> None:
    CALLS.clear()
    jobs = [("random", 0, Settings(balance=0.0)), ("coorchestrate", 0, Settings(balance=0.0))]
    first = run_jobs(_job, jobs, workers=1, cache=tmp_path)
    assert CALLS == [("random", 0), ("coorchestrate", 0)]
    again = [("random", 0, Settings(balance=1.0)), ("coorchestrate", 0, Settings(balance=1.0))]
    second = run_jobs(_job, again, workers=1, cache=tmp_path)
    assert CALLS[2:] == [("coorchestrate", 0)]  # random reads no co-orchestration option
    assert second[0].rmse == first[0].rmse
    assert job_key(_job, jobs[1]) != job_key(_job, again[1])
    assert len(list(tmp_path.glob("*.pkl"))) == 3
