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
        await_worker(proc, "test-worker", log, timeout_s=60)
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


@pytest.mark.slow
def test_a_deployment_runs_to_completion_on_a_process_worker(worker, twins, tmp_path):
    from coorch.deployments.config import CampaignSpec
    from coorch.storage import CampaignStore

    store = tmp_path / "deployed.zarr"
    spec = CampaignSpec(
        name="deployed",
        instruments=twins,
        policy="random",
        budget=6,
        seeds_per_instrument=1,
        grid=(21, 3),
        store=str(store),
        report="",
    )
    run = run_to_completion("coorchestrate/coorchestrate", {"spec": spec.model_dump(mode="json")})
    assert run.state is not None and run.state.is_completed(), (run.state, tail(worker))
    table = CampaignStore.open(str(store), create=False).measurements_table()
    assert len(table) == 6 and table["measurement_id"].is_unique
    assert set(table["instrument"]) == {c.name for c in twins}
    assert set(table["flow_run_id"]) == {str(run.id)}


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
