"""``coorch bench defaults`` (leave-one-problem-out choice of co-orchestration's settings) and
the trace cache the benchmarks share: the logic, on hand-made figures and a trivial job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_the_benchmark_criterion_is_seconds_to_the_random_policys_final_error() -> None:
    """On a twin library: the median instrument-seconds at which a candidate's mean nRMSE first
    reaches the random policy's median final one; a seed that never does counts as 1.5 times
    its budget."""
    from coorch.benchmarks.defaults_cv import benchmark_scores
    from coorch.benchmarks.problems import twin_setup

    scale = twin_setup("smbfo", 0).problem.truth.std(0)

    def trace(nrmse: list[float]) -> Trace:
        steps = len(nrmse)
        return Trace(
            "x",
            0,
            seconds=[100.0 * n for n in range(1, steps + 1)],
            scored_at=list(range(1, steps + 1)),
            rmse=[(e * scale).tolist() for e in nrmse],
        )

    random = [trace([2.0, 1.5, 1.0])] * 3  # its final mean nRMSE, 1.0, is the target
    scores = benchmark_scores(
        "smbfo",
        {"fast": [trace([1.0, 0.8, 0.5])], "slow": [trace([2.0, 0.9, 0.5])],
         "never": [trace([2.0, 2.0, 2.0])]},
        random,
        None,
    )  # fmt: skip
    assert np.exp(scores["fast"]) == pytest.approx(100.0)
    assert np.exp(scores["slow"]) == pytest.approx(200.0)
    assert np.exp(scores["never"]) == pytest.approx(1.5 * 300.0)


def test_on_the_replay_the_benchmark_criterion_is_the_final_mean_nrmse() -> None:
    from shared_data import REPLAY_FILE

    from coorch.benchmarks.defaults_cv import benchmark_scores
    from coorch.benchmarks.problems import load_replay

    if not Path(REPLAY_FILE).exists():
        pytest.skip(f"replay data not found at {REPLAY_FILE}")
    scale = load_replay(str(REPLAY_FILE), 1).values.std(0)
    runs = [Trace("x", s, rmse=[(2 * scale).tolist(), (e * scale).tolist()]) for s, e in
            ((0, 0.4), (1, 0.6))]  # fmt: skip
    scores = benchmark_scores("replay", {"c": runs}, None, str(REPLAY_FILE))
    assert np.exp(scores["c"]) == pytest.approx(0.5)
