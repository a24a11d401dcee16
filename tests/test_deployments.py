"""The deployments of ``prefect.yaml`` register on a real Prefect server and run there: every
one with its entrypoint, and one run to completion by a process worker, as a facility runs it.

One server and one worker for the module: the server's start and the registration (which reads
each flow's parameter schema, importing torch) take ~30 s on two busy cores, the run ~15 s (its
flow run is a process that imports the flows and starts a LocalCluster). The run is
:func:`run_to_completion` of a deployment name and its parameters, so another deployment can
take its place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coorch.deployments.project_deployments import ProjectError, read_project

PREFECT_YAML = Path(__file__).parent.parent / "prefect.yaml"


def declared() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


# -- without a server --------------------------------------------------------------------------


def test_prefect_yaml_is_read_as_declared():
    data = yaml.safe_load(PREFECT_YAML.read_text())
    project = read_project(PREFECT_YAML)
    assert [(d.name, d.entrypoint) for d in project] == [
        (e["name"], e["entrypoint"]) for e in data["deployments"]
    ]
    for d, entry in zip(project, data["deployments"], strict=True):
        assert d.work_pool == entry["work_pool"]["name"]
        assert d.parameters == entry.get("parameters", {})
        assert d.pull_steps == data["pull"]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"name": "x", "entrypoint": "m.f", "work_pool": {"name": "p"}, "schedules": []},
         "deployments.0: schedules not supported"),
        ({"name": "x", "work_pool": {"name": "p"}}, "deployments.0.entrypoint: missing"),
        ({"name": "x", "entrypoint": "flows/x.py:f", "work_pool": {"name": "p"}},
         "is a file path"),
        ({"name": "x", "entrypoint": "m.f"}, "deployments.0.work_pool.name: missing"),
        ({"name": "x", "entrypoint": "m.f", "work_pool": {"name": "p", "image": "i"}},
         "work_pool: image not supported"),
    ],
)  # fmt: skip
def test_what_prefect_yaml_cannot_mean_is_refused(tmp_path, entry, fragment):
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [entry]}))
    with pytest.raises(ProjectError, match=fragment):
        read_project(path)


def test_a_deployment_named_twice_is_refused(tmp_path):
    entry = {"name": "x", "entrypoint": "m.f", "work_pool": {"name": "p"}}
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [entry, entry]}))
    with pytest.raises(ProjectError, match="named twice: x"):
        read_project(path)


# -- one server, one worker --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from coorch.deployments.prefect_server import local_prefect_server

    with local_prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


@pytest.fixture(scope="module")
def registered(server):
    """``{"flow/name": id}`` of every deployment in prefect.yaml, registered on ``server``."""
    from coorch.deployments.project_deployments import register_project

    return register_project(PREFECT_YAML)


@pytest.fixture(scope="module")
def worker(server, registered, tmp_path_factory):
    """A process worker for the pool (as ``coorch up`` starts it), flow runs in a tmp home."""
    from coorch.deployments.facility_worker import await_worker, spawn_worker, stop_worker

    home = tmp_path_factory.mktemp("home")
    log = home / "worker.log"
    proc = spawn_worker("test-worker", server, log, home)
    try:
        await_worker(proc, "test-worker", log, timeout_s=120)
        yield log
    finally:
        stop_worker(proc)


@pytest.mark.slow
def test_every_deployment_in_prefect_yaml_is_registered(registered):
    from prefect.client.orchestration import get_client

    assert len(registered) == len(declared())
    with get_client(sync_client=True) as client:
        for entry in declared():
            (full,) = [k for k in registered if k.endswith(f"/{entry['name']}")]
            d = client.read_deployment_by_name(full)
            assert d.id == registered[full]
            assert d.entrypoint == entry["entrypoint"]
            assert d.work_pool_name == entry["work_pool"]["name"]
            assert d.work_queue_name == entry["work_pool"]["work_queue_name"]
            assert d.parameters == entry.get("parameters", {})
            assert d.pull_steps == yaml.safe_load(PREFECT_YAML.read_text())["pull"]
            assert "spec" in d.parameter_openapi_schema["properties"]  # the UI's run form


def run_to_completion(deployment: str, parameters: dict, timeout_s: float = 240):
    """Run ``deployment`` (``flow/name``) with ``parameters`` through the worker; return the
    flow run once it is final (or the timeout passed)."""
    from prefect.deployments import run_deployment

    return run_deployment(
        deployment, parameters=parameters, timeout=timeout_s, poll_interval=1, as_subflow=False
    )


@pytest.fixture(scope="module")
def lgd_twins(tmp_path_factory):
    """A PFM and a Raman twin over ``smbfo-lgd`` (the PFM loops are the LGD simulator's at
    hidden parameters), served over loopback HTTP."""
    from coorch.deployments.config import InstrumentConfig
    from coorch.instrument_agents.launch import start_twin

    token = "deployed-token"
    token_file = tmp_path_factory.mktemp("tokens") / "agent.token"
    token_file.write_text(token)
    kinds = [("afm", "pfm_loop"), ("raman", "raman")]
    agents = [
        # measurements that take time (a PFM loop 1.5 s, a Raman spectrum 0.5 s), as theirs do
        start_twin(kind, "smbfo-lgd", token=token, seed=k, time_scale=0.05)
        for k, (kind, _) in enumerate(kinds)
    ]
    yield [
        InstrumentConfig(
            name=a.driver.describe().id, kind=kind, modality=mod, url=a.url, token_file=token_file
        )
        for a, (kind, mod) in zip(agents, kinds, strict=True)
    ]
    for a in agents:
        a.stop()


@pytest.mark.slow
def test_conavigate_runs_to_completion_on_a_process_worker(worker, lgd_twins, tmp_path):
    """The co-navigation deployment end to end: measurements and simulations in one store, both
    under the deployment's flow run, the simulations asked for while the instruments measure, and
    the posterior over the simulator's parameters in the store's metadata."""
    import pandas as pd

    from coorch.deployments.dask_config import DaskConfig
    from coorch.deployments.theory_config import ConavigateSpec, TheoryConfig
    from coorch.storage import CampaignStore

    store = tmp_path / "deployed.zarr"
    spec = ConavigateSpec(
        name="deployed",
        library="smbfo-lgd",
        instruments=lgd_twins,
        budget=8,
        seeds_per_instrument=2,
        grid=(21, 3),
        store=str(store),
        report="",
        theory=TheoryConfig(
            instrument=lgd_twins[0].name,
            initial_simulations=6,
            max_simulations=12,
            # four submitted at once: the campaign's end waits for what is in flight, so at
            # least four land however late the process worker's Dask cluster comes up
            in_flight=4,
            dask=DaskConfig(n_workers=1, threads_per_worker=2),
        ),
    )
    run = run_to_completion("conavigate/conavigate", {"spec": spec.model_dump(mode="json")})
    assert run.state is not None and run.state.is_completed(), (run.state, tail(worker))
    with CampaignStore.open(str(store), create=False) as s:
        table, sims, meta = s.measurements_table(), s.read_simulations(), s.metadata()
    assert len(table) == 8 and table["measurement_id"].is_unique
    assert set(table["instrument"]) == {c.name for c in lgd_twins}
    assert set(table["flow_run_id"]) == {str(run.id)}
    # the campaign's end ends the theory: what is in flight lands, nothing new starts
    assert 4 <= len(sims) <= 12 and {x.status for x in sims} == {"done"}
    assert {x.flow_run_id for x in sims} == {str(run.id)} and {x.campaign for x in sims} == {
        "deployed"
    }
    first, last = (pd.Timestamp(t).timestamp() for t in table["start_time"].agg(["min", "max"]))
    # asked for beside the measurements, not after them (when they land depends on how soon
    # the process worker's Dask cluster is up: under load, after the last of 8 quick ones)
    asked = [x.requested_at.timestamp() for x in sims]
    assert any(first < t < last for t in asked)
    theory = meta["theory"]
    assert set(theory["posterior"]) == {"s_c", "depol"} and theory["history"]
    for row in theory["posterior"].values():
        assert row["lo"] < row["mean"] < row["hi"]
    assert theory["discrepancy_map"]["mean"]


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


@pytest.mark.slow
def test_the_module_entry_point_registers_and_says_so(registered, capsys):
    """``python -m coorch.deployments.project_deployments`` (what a site runs by hand)."""
    from coorch.deployments.project_deployments import main

    assert main([str(PREFECT_YAML)]) == 0
    out = capsys.readouterr().out
    for full, deployment_id in registered.items():  # upserted: the same ids
        assert f"{full} ({deployment_id})" in out
    assert "prefect worker start --pool coorch-process --type process" in out
    assert main([str(PREFECT_YAML.with_name("no-such.yaml"))]) == 2
    assert "no-such.yaml" in capsys.readouterr().err
