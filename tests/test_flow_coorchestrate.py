"""The co-orchestration flow end to end: real Prefect server, Dask, HTTP twins, zarr store."""

from __future__ import annotations

import xarray as xr

from coorch.deployments.config import CampaignSpec
from coorch.storage import CampaignStore


def spec(cfgs, store, budget, policy="coorchestrate"):
    return CampaignSpec(
        name="t",
        instruments=cfgs,
        policy=policy,
        budget=budget,
        seeds_per_instrument=2,
        grid=(21, 3),
        refit_every=3,
        store=str(store),
    )


def task_run_names(flow_run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return {r.name for r in runs}


def run_artifacts(flow_run_id: str) -> dict[str, list]:
    """The flow run's Prefect artifacts by key, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    out: dict[str, list] = {}
    for a in sorted(found, key=lambda a: a.created):
        out.setdefault(a.key, []).append(a)
    return out


def test_flow_writes_every_measurement_with_provenance(prefect_server, twins, tmp_path):
    from coorch.flows.coorchestrate import coorchestrate

    store_url = tmp_path / "c.zarr"
    result = coorchestrate(spec(twins, store_url, budget=10))
    assert result.n_measurements == 10
    store = CampaignStore.open(str(store_url), create=False)
    table = store.measurements_table()
    assert len(table) == 10 and table["measurement_id"].is_unique
    assert set(table["instrument"]) == {c.name for c in twins}
    decisions = store.decisions()
    assert set(table["decision_id"]) <= set(decisions["decision_id"])
    assert set(table["flow_run_id"]) == {result.flow_run_id}
    chosen = decisions[decisions["policy"] == "coorchestrate"]
    assert len(chosen) == 10 - 4  # the rest are seeds
    assert set(decisions["flow_run_id"]) == {result.flow_run_id}  # decided in the flow
    assert set(decisions["measurement_id"]) == set(table["measurement_id"])
    assert {
        f"measure-{m.instrument}-{m.measurement_id}" for m in table.itertuples()
    } == task_run_names(result.flow_run_id)  # one task run per measurement, named after it
    ds = xr.open_zarr(str(store_url), group="pfm_loop")
    assert ds.sizes["measurement"] == len(table[table["instrument"] == twins[0].name])
    assert store.verify() == []
    meta = store.metadata()
    assert meta["code_version"]["package"] == "coorch"  # what `coorch store ls` shows
    assert set(meta["instruments"]) == {c.name for c in twins}
    # what an operator sees: the report beside the store, the run's artifacts in Prefect
    report = tmp_path / "c-report.html"
    assert report.exists() and "data:image/png;base64" in report.read_text()
    artifacts = run_artifacts(result.flow_run_id)
    assert set(artifacts) == {f"t-{k}" for k in ("progress", "summary", "decisions", "report")}
    assert float(artifacts["t-progress"][-1].data) == 100.0
    assert f"| {twins[0].name} |" in artifacts["t-summary"][-1].data
    assert report.resolve().as_uri() in artifacts["t-report"][-1].data


def test_flow_resumes_from_its_store_without_duplicates(prefect_server, twins, tmp_path):
    from coorch.flows.coorchestrate import coorchestrate

    store_url = tmp_path / "r.zarr"
    coorchestrate(spec(twins, store_url, budget=6))
    result = coorchestrate(spec(twins, store_url, budget=9))  # same store, bigger budget
    table = CampaignStore.open(str(store_url), create=False).measurements_table()
    assert len(table) == 9 and table["measurement_id"].is_unique
    assert result.n_measurements == 9


def test_vae_descriptor_is_trained_on_dask_and_becomes_the_gp_tasks(
    prefect_server, twins, tmp_path
):
    from coorch.flows.coorchestrate import coorchestrate

    raman = twins[1].model_copy(update={"descriptor": "vae", "latent_dim": 2})
    s = spec([twins[0], raman], tmp_path / "v.zarr", budget=14)
    result = coorchestrate(s)
    assert result.n_vae_trainings >= 1
    assert result.n_fits >= 1
    # three tasks: the PFM physics descriptor and two Raman latents, all fitted
    assert len(result.hyperparameters["noise"]) == 3
    table = CampaignStore.open(str(tmp_path / "v.zarr"), create=False).measurements_table()
    n_raman = int((table["instrument"] == raman.name).sum())
    assert result.hyperparameters["n_train"] == 14 + n_raman  # each Raman gives 2 latents


def test_vae_is_trained_for_a_policy_that_fits_no_gp(prefect_server, twins, tmp_path):
    """A random (or Pareto, UCB, EI) campaign reading VAE latents still gets a VAE on Dask,
    else its Raman values would stay unknown for the whole campaign."""
    from coorch.flows.coorchestrate import coorchestrate

    raman = twins[1].model_copy(update={"descriptor": "vae", "latent_dim": 2})
    # Raman alone: with a second instrument the share each gets depends on which is free
    # first, and under load Raman could end below the VAE's six signals
    result = coorchestrate(spec([raman], tmp_path / "r.zarr", budget=10, policy="random"))
    assert result.n_vae_trainings >= 1
    assert result.n_fits == 0
