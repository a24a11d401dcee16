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
    plot_curves,
    run_dataset,
    run_twins,
)

DATA = REPLAY_FILE
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} not present")


@pytest.fixture(scope="module")
def replay_result() -> dict:
    return run_dataset(DATA, steps=3, seeds=1, workers=1)


@needs_data
def test_dataset_json_shape(replay_result: dict) -> None:
    modalities = [str(m) for m in xr.open_dataset(DATA)["modality"].values]
    assert {"policies", "published"} <= set(replay_result)
    assert set(replay_result["policies"]) == set(DEFAULT_POLICIES)
    for figures in replay_result["policies"].values():
        assert set(figures) == {"rmse", "nrmse"}
        for key in ("rmse", "nrmse"):
            assert list(figures[key]) == modalities
            assert all(math.isfinite(v) and v > 0 for v in figures[key].values())
    json.dumps(replay_result)  # plain JSON types only


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
        dataset=DATA, library="smbfo", steps=3, seeds=1, json_out=True, plot=None, workers=1
    )
    assert json.loads(capsys.readouterr().out) == replay_result


def test_twins_curves_shapes(tmp_path: Path) -> None:
    policies = ("coorchestrate", "random")
    result = run_twins("smbfo", budget=8, seeds=1, policies=policies, score_every=1, workers=1)
    assert set(result["policies"]) == set(policies)
    assert len(result["instruments"]) >= 2
    assert len({i["cost_s"] for i in result["instruments"].values()}) >= 2  # costs differ
    for curve in result["policies"].values():
        n = len(curve["measurements"])
        assert curve["measurements"][-1] == 8
        assert len(curve["seconds"]) == len(curve["mean_nrmse"]) == n
        assert all(len(v) == n for v in curve["nrmse"].values())
        assert np.all(np.diff(curve["seconds"]) > 0)
        assert np.isfinite(curve["mean_nrmse"]).all()
        assert {"median_s", "reached", "of"} <= set(curve["to_target"])
    assert plot_curves(result, tmp_path / "twins.png").stat().st_size > 0
