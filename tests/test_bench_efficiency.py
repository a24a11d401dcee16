"""``coorch bench efficiency`` on the real replay file and on the twins, tiny budgets: the shape
of what it prints, not its figures (docs/benchmarks.md, "Efficiency", has those)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from shared_data import REPLAY_FILE

from coorch.benchmarks.efficiency import (
    DEFAULT_POLICIES,
    bench_efficiency_command,
    paired_comparison,
    run_dataset,
    run_twins,
)
from coorch.benchmarks.efficiency_format import format_dataset, format_twins
from coorch.benchmarks.efficiency_plot import plot_curves

DATA = REPLAY_FILE
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} not present")


@pytest.fixture(scope="module")
def replay_result() -> dict:
    return run_dataset(DATA, steps=3, seeds=1, workers=1)


FINAL = {
    "rmse",
    "nrmse",
    "mean_nrmse",
    "coverage",
    "measured",
    "measured_per_seed",
    "seeds",
    "mean_nrmse_per_seed",
}


def check_final(final: dict, tasks: list[str], seeds: int, measurements: int) -> None:
    """The figures after the last step: per task, finite and positive errors whose mean over
    tasks is the score, counts that add up to every measurement taken, coverage a share."""
    assert set(final) == FINAL
    for key in ("rmse", "nrmse", "measured"):
        assert list(final[key]) == tasks
    assert all(math.isfinite(v) and v > 0 for k in ("rmse", "nrmse") for v in final[k].values())
    assert final["mean_nrmse"] == pytest.approx(np.mean(list(final["nrmse"].values())), abs=1e-3)
    assert final["seeds"] == list(range(seeds)) and len(final["mean_nrmse_per_seed"]) == seeds
    assert len(final["measured_per_seed"]) == seeds
    assert all(sum(c.values()) == measurements for c in final["measured_per_seed"])
    assert sum(final["measured"].values()) == pytest.approx(measurements)
    if final["coverage"] is not None:  # None while the traces carry no coverage
        assert list(final["coverage"]) == tasks
        assert all(0.0 <= v <= 1.0 for v in final["coverage"].values())


def check_paired(paired: dict, policies: list[str], seeds: int, seconds: bool) -> None:
    assert paired["reference"] == "coorchestrate"
    assert set(paired["baselines"]) == set(policies) - {"coorchestrate"}
    for row in paired["baselines"].values():
        assert row["of"] == seeds
        assert row["nrmse_wins"] + row["nrmse_losses"] <= seeds
        assert ("seconds_wins" in row) is seconds
        assert ("seconds_saving" in row) is seconds
        assert set(row["nrmse_difference"]) == {"value", "low", "high"}
        assert row["wins"] == row["seconds_wins" if seconds else "nrmse_wins"]
    assert ("against_best" in paired) is seconds


@needs_data
def test_dataset_json_shape(replay_result: dict) -> None:
    ds = xr.open_dataset(DATA)
    modalities = [str(m) for m in ds["modality"].values]
    assert {"policies", "published", "paired", "scale", "score"} <= set(replay_result)
    assert set(replay_result["policies"]) == set(DEFAULT_POLICIES)
    for figures in replay_result["policies"].values():
        assert set(figures) == {"final"}
        check_final(figures["final"], modalities, seeds=1, measurements=ds.sizes["seed"] + 3)
    check_paired(replay_result["paired"], list(DEFAULT_POLICIES), seeds=1, seconds=False)
    json.dumps(replay_result)  # plain JSON types only


@needs_data
def test_dataset_table_shows_every_policy_and_the_paired_wins(replay_result: dict) -> None:
    text = format_dataset(replay_result)
    assert all(p in text for p in DEFAULT_POLICIES)
    assert "published mtgp" in text and "mean nRMSE" in text
    paired = text.split("paired:")[1]
    assert all(p in paired for p in DEFAULT_POLICIES if p != "coorchestrate")


@needs_data
def test_published_figures_come_from_the_file(replay_result: dict) -> None:
    ds = xr.open_dataset(DATA)
    modalities = [str(m) for m in ds["modality"].values]
    for model, var in (("mtgp", "published_rmse_mtgp"), ("gp", "published_rmse_gp")):
        last = ds[var].values[-1]
        assert replay_result["published"][model] == pytest.approx(
            {m: float(last[k]) for k, m in enumerate(modalities)}
        )


@needs_data
def test_dataset_curves_start_at_the_seeds(replay_result: dict, tmp_path: Path) -> None:
    n_seeds = xr.open_dataset(DATA).sizes["seed"]
    for curve in replay_result["curves"].values():
        assert curve["measurements"] == list(range(n_seeds, n_seeds + 4))
    assert plot_curves(replay_result, tmp_path / "curves.png").stat().st_size > 0


@needs_data
def test_cli_prints_one_json_object(
    replay_result: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coorch.benchmarks.efficiency as eff

    monkeypatch.setattr(eff, "run_dataset", lambda *a, **kw: replay_result)
    bench_efficiency_command(
        dataset=DATA,
        library="smbfo",
        steps=3,
        seeds=1,
        baseline_seeds=0,
        cache=None,
        json_out=True,
        plot=None,
        workers=1,
        policy=list(DEFAULT_POLICIES),
    )
    assert json.loads(capsys.readouterr().out) == replay_result


def test_twins_curves_shapes(tmp_path: Path) -> None:
    policies = ("coorchestrate", "random")
    result = run_twins("smbfo", budget=8, seeds=1, policies=policies, score_every=1, workers=1)
    assert set(result["policies"]) == set(policies)
    assert len(result["instruments"]) >= 2
    assert len({i["cost_s"] for i in result["instruments"].values()}) >= 2  # costs differ
    tasks = list(result["instruments"])
    for curve in result["policies"].values():
        n = len(curve["measurements"])
        assert curve["measurements"][-1] == 8
        assert len(curve["seconds"]) == len(curve["mean_nrmse"]) == n
        assert all(len(v) == n for v in curve["nrmse"].values())
        assert np.all(np.diff(curve["seconds"]) > 0)
        assert np.isfinite(curve["mean_nrmse"]).all()
        assert {"median_s", "reached", "of"} <= set(curve["to_target"])
        check_final(curve["final"], tasks, seeds=1, measurements=8)
        assert curve["final"]["mean_nrmse"] == pytest.approx(curve["mean_nrmse"][-1], abs=1e-3)
    check_paired(result["paired"], list(policies), seeds=1, seconds=True)
    text = format_twins(result)
    assert "s to target" in text and "paired:" in text and "random" in text.split("paired:")[1]
    json.dumps(result)
    assert plot_curves(result, tmp_path / "twins.png").stat().st_size > 0


def test_paired_comparison_counts_wins_seed_by_seed() -> None:
    """Hand-made per-seed figures: a lower final nRMSE wins its seed; on seconds, reaching the
    target beats never reaching it and fewer seconds beat more; ties count for neither."""
    nrmse = {
        "coorchestrate": {0: 0.10, 1: 0.20, 2: 0.30, 3: 0.40},
        "random": {0: 0.15, 1: 0.10, 2: 0.30, 3: 0.50},
        "grid": {3: 0.30, 2: 0.40, 1: 0.30, 0: 0.20},  # seed order does not matter
    }
    seconds = {
        "coorchestrate": {0: 500.0, 1: None, 2: 800.0, 3: None},
        "random": {0: None, 1: 400.0, 2: 900.0, 3: None},
        "grid": {0: 400.0, 1: None, 2: 800.0, 3: 700.0},
    }
    both = paired_comparison(nrmse, seconds)
    assert both["reference"] == "coorchestrate" and both["wins_on"] == "seconds to the target"
    counts = ("of", "nrmse_wins", "nrmse_losses", "seconds_wins", "seconds_losses", "wins")
    assert {k: both["baselines"]["random"][k] for k in counts} == {
        "of": 4,
        "nrmse_wins": 2,  # seeds 0 and 3; seed 2 ties
        "nrmse_losses": 1,
        "seconds_wins": 2,  # seed 0 (random never reached) and seed 2 (800 < 900)
        "seconds_losses": 1,  # seed 1 (coorchestrate never reached); seed 3: neither
        "wins": 2,
    }
    grid = both["baselines"]["grid"]
    assert (grid["nrmse_wins"], grid["nrmse_losses"]) == (3, 1)
    assert (grid["seconds_wins"], grid["seconds_losses"], grid["wins"]) == (0, 2, 0)

    alone = paired_comparison(nrmse)  # the replay: nRMSE only
    assert alone["wins_on"] == "final mean nRMSE" and "against_best" not in alone
    grid = alone["baselines"]["grid"]
    assert {k: grid[k] for k in counts if "seconds" not in k} == {
        "of": 4,
        "nrmse_wins": 3,
        "nrmse_losses": 1,
        "wins": 3,
    }
    assert grid["nrmse_difference"]["value"] == pytest.approx(-0.05)  # (-.1 - .1 - .1 + .1) / 4
    assert "seconds_saving" not in grid
    short = paired_comparison({"coorchestrate": {0: 0.1, 1: 0.1}, "random": {1: 0.2}})
    assert short["baselines"]["random"]["of"] == 1  # only the seeds both ran
    assert paired_comparison({"random": {0: 0.1}, "grid": {0: 0.2}}) is None


def test_mean_difference_interval_brackets_the_figure() -> None:
    """The paired bootstrap of a mean difference: an interval around the figure, wide when
    the seeds disagree, none from one seed."""
    from coorch.benchmarks.paired_intervals import mean_difference

    rng = np.random.default_rng(1)
    noisy = mean_difference(rng.normal(-0.01, 0.02, 10), np.zeros(10))
    assert noisy["low"] < noisy["value"] < noisy["high"]
    assert noisy["high"] - noisy["low"] > 0.01  # a spread of 0.02 over 10 seeds is not sure
    same = mean_difference([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    assert (same["value"], same["low"], same["high"]) == pytest.approx((-0.1, -0.1, -0.1))
    assert mean_difference([0.1], [0.2]) == {"value": -0.1, "low": None, "high": None}


def _curves(errors: dict[str, list[float]], seeds: int = 3) -> dict:
    """Hand-made learning curves: every seed of a policy the same, scored at 100, 200, 300 s."""
    return {
        p: {
            "final": {"seeds": list(range(seeds))},
            "per_seed_nrmse": [e] * seeds,
            "per_seed_seconds": [[100.0, 200.0, 300.0]] * seeds,
        }
        for p, e in errors.items()
    }


def test_seconds_saved_against_the_best_baseline_at_the_resampled_target() -> None:
    """The target is random's median final error (0.30 here); the best baseline is the one
    with the lowest median seconds to it; a seed that never reaches it is infinitely slow."""
    from coorch.benchmarks.paired_intervals import seconds_savings

    curves = _curves(
        {
            "coorchestrate": [0.29, 0.2, 0.1],  # reaches 0.30 at 100 s
            "grid": [0.5, 0.29, 0.2],  # at 200 s
            "random": [0.5, 0.4, 0.30],  # at 300 s
        }
    )
    out = seconds_savings(curves, "coorchestrate", "random")
    assert out["baselines"]["grid"] == {"value": 0.5, "low": 0.5, "high": 0.5}
    assert out["baselines"]["random"]["value"] == pytest.approx(1 - 100 / 300, abs=1e-4)
    assert out["against_best"] == {
        "best": "grid",
        "seeds": 3,
        "value": 0.5,
        "low": 0.5,
        "high": 0.5,
    }
    curves["grid"]["per_seed_nrmse"] = [[0.5, 0.5, 0.5]] * 3  # grid never reaches it
    out = seconds_savings(curves, "coorchestrate", "random")
    assert out["baselines"]["grid"]["value"] == 1.0
    assert out["against_best"]["best"] == "random"
    curves["coorchestrate"]["per_seed_nrmse"] = [[0.5, 0.5, 0.5]] * 3
    assert seconds_savings(curves, "coorchestrate", "random")["against_best"]["value"] == float(
        "-inf"
    )
