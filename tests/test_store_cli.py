"""`coorch store ...` commands and `coorch bench ingest`, on real stores."""

from __future__ import annotations

import json

import netCDF4
import pandas as pd
import pytest
import typer
import xarray as xr
import zarr
from typer.testing import CliRunner

from coorch.benchmarks import fixtures as syn
from coorch.benchmarks.ingest import bench_ingest_command
from coorch.storage import CampaignStore
from coorch.storage.cli import store_app

runner = CliRunner()


@pytest.fixture
def campaign(tmp_path):
    url = str(tmp_path / "cli.zarr")
    store = CampaignStore.open(url)
    store.set_metadata(spec={"name": "cli-test"})
    store.append_decision(syn.decision(0))
    a, b = syn.measurement(0, decision_id="d-0"), syn.measurement(1, decision_id="d-0")
    store.append_many([a, b, syn.measurement(0, "raman")])
    store.append_decision(syn.decision(1, trained_on=[a.measurement_id]))
    store.append_measurement(syn.measurement(2, decision_id="d-1"))
    store.close()
    return url


def test_ls_show_lineage(campaign):
    res = runner.invoke(store_app, ["ls", campaign])
    assert res.exit_code == 0, res.output
    assert "pfm_loop" in res.output and "raman" in res.output and "decisions" in res.output
    res = runner.invoke(store_app, ["show", campaign])
    assert res.exit_code == 0 and "cli-test" in res.output
    res = runner.invoke(store_app, ["show", campaign, "--modality", "pfm_loop"])
    assert res.exit_code == 0 and "m-pfm_loop-2" in res.output
    res = runner.invoke(store_app, ["lineage", campaign, "m-pfm_loop-0"])
    assert res.exit_code == 0, res.output
    assert "d-0" in res.output and "d-1" in res.output and "m-pfm_loop-2" in res.output
    res = runner.invoke(store_app, ["lineage", campaign, "m-pfm_loop-0", "--json"])
    assert json.loads(res.output)["forward"]["measurements"] == ["m-pfm_loop-2"]
    assert runner.invoke(store_app, ["lineage", campaign, "nope"]).exit_code == 2


def test_verify_exit_codes(campaign, tmp_path):
    res = runner.invoke(store_app, ["verify", campaign])
    assert res.exit_code == 0 and "OK" in res.output
    arr = zarr.open_array(campaign, path="raman/intensity", mode="r+")
    arr[0, 0] = -1.0
    res = runner.invoke(store_app, ["verify", campaign])
    assert res.exit_code == 1
    assert "hash mismatch" in res.output
    assert runner.invoke(store_app, ["verify", str(tmp_path / "missing.zarr")]).exit_code == 2


def test_export_netcdf_and_parquet(campaign, tmp_path):
    nc = tmp_path / "out.nc"
    res = runner.invoke(store_app, ["export", campaign, "--to", "netcdf", "--out", str(nc)])
    assert res.exit_code == 0, res.output
    with netCDF4.Dataset(nc) as f:
        assert set(f.groups) == {"pfm_loop", "raman", "decisions"}
    ds = xr.open_dataset(nc, group="pfm_loop")
    assert ds.sizes["measurement"] == 3 and ds["response"].attrs["units"] == "pm/V"
    pq = tmp_path / "pq"
    res = runner.invoke(store_app, ["export", campaign, "--to", "parquet", "--out", str(pq)])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(pq / "pfm_loop.parquet")
    assert list(df["measurement_id"]) == ["m-pfm_loop-0", "m-pfm_loop-1", "m-pfm_loop-2"]
    assert len(df["response"][0]) == 128
    dec = pd.read_parquet(pq / "decisions.parquet")
    assert list(dec["trained_on"][1]) == ["m-pfm_loop-0"]
    assert runner.invoke(store_app, ["export", campaign, "--to", "csv"]).exit_code != 0


@pytest.mark.slow
def test_bench_ingest_json_local_and_s3(tmp_path):
    app = typer.Typer()
    app.command()(bench_ingest_command)
    res = runner.invoke(
        app,
        [
            "--n",
            "16",
            "--n-single",
            "4",
            "--batch",
            "8",
            "--s3-n",
            "8",
            "--s3-single",
            "1",
            "--json",
            "--workdir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads(res.output)
    assert {r["target"] for r in results} == {"local", "s3 (moto)"}
    assert {r["writer"] for r in results} == {"zarr data", "zarr arrays", "store"}
    assert all(r["spectra_per_s"] > 0 and r["mb_per_s"] > 0 for r in results)
    assert len(results) == 2 * 2 * 6
