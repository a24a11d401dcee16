"""``coorch campaign``: campaigns submitted to a facility run as flow runs of its deployment,
through its process worker; submit refuses what would fail out of sight; cancel and resume
leave nothing measured twice.

The refusals and the end-to-end test share one real facility (``coorch up``: a Prefect server
with its UI, two twins, Dask, the process worker), started once for the module: ~40 s on two
cores, hence slow. The first tests need no server at all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from coorch.cli import app
from coorch.deployments import campaign_runs as runs
from coorch.deployments.facility_state import AgentInfo, FacilityInfo, read_info
from coorch.net import free_port


def coorch(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="coorch")


def assert_refused(res, command: str, *fragments: str) -> None:
    """Status 2, one or two ``coorch campaign CMD: ...`` lines holding ``fragments``."""
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert 1 <= len(lines) <= 2, res.stderr
    assert all(line.startswith(f"coorch campaign {command}: ") for line in lines), res.stderr
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in res.stderr, (fragment, res.stderr)


# -- without a server --------------------------------------------------------------------------


def test_the_deployment_registers_the_flows_own_parameter_schema():
    from prefect.utilities.callables import parameter_schema

    from coorch.deployments.work_pool import parameter_schema as registered
    from coorch.flows.coorchestrate import coorchestrate

    assert registered() == parameter_schema(coorchestrate.fn).model_dump(exclude_unset=True)


def test_prefect_yaml_deploys_coorchestrate_as_coorch_up_registers_it():
    from coorch.deployments import work_pool as wp

    config = yaml.safe_load(Path("prefect.yaml").read_text())
    entry = next(d for d in config["deployments"] if d["name"] == wp.DEPLOYMENT)
    assert entry["entrypoint"] == wp.ENTRYPOINT
    assert entry["work_pool"] == {"name": wp.POOL, "work_queue_name": wp.QUEUE}
    assert config["pull"] == wp.PULL_STEPS
    assert all("concurrency_limit" not in d for d in config["deployments"])


def test_no_server_and_no_facility_say_coorch_up(tmp_path):
    closed = free_port()
    dead = tmp_path / "dead"
    dead.mkdir()
    info = FacilityInfo(
        prefect_api_url=f"http://127.0.0.1:{closed}/api",
        ui_url=f"http://127.0.0.1:{closed}",
        dask_address="tcp://127.0.0.1:1",
        library="smbfo",
        instruments=[AgentInfo(name="afm-twin", kind="afm", modality="pfm_loop", url="http://x")],
        token_file=str(tmp_path / "t"),
        steer_token_file=str(tmp_path / "s"),
        campaign_spec=str(tmp_path / "c.yaml"),
        log_file=str(tmp_path / "l"),
        supervisor_pid=1,
        facility_db=f"sqlite:///{tmp_path / 'facility.db'}",
    )
    (dead / "facility.json").write_text(info.model_dump_json())
    res = coorch("campaign", "list", "--dir", str(dead))
    assert_refused(res, "list", "cannot reach the facility's Prefect server", "coorch up")
    res = coorch("campaign", "show", "abcd1234", "--dir", str(tmp_path / "none"))
    assert_refused(res, "show", "no facility is up", "coorch up --dir")


# -- one facility for the rest ----------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A facility (two twins, time scale 0.01, random policy) and a folder for specs."""
    from coorch.deployments.facility import facility

    d = tmp_path_factory.mktemp("campaigns")
    config = d / "facility.yaml"
    twins = [{"kind": "afm", "modality": "pfm_loop"}, {"kind": "raman", "modality": "raman"}]
    config.write_text(
        yaml.safe_dump(
            {
                "instruments": twins,
                "time_scale": 0.01,
                "budget": 6,
                "policy": "random",
                "steering": "off",
            }
        )
    )
    run_dir = d / "facility"
    with facility(run_dir, config=config, port=free_port()):
        yield run_dir, d


def write_spec(site, name: str, **changes) -> Path:
    """A spec of the facility's campaign.yaml, renamed, with its own store and samples."""
    run_dir, d = site
    info = read_info(run_dir)
    data = yaml.safe_load(Path(info.campaign_spec).read_text())
    data.pop("facility")  # submit sets it
    data.update(name=name, owner=f"{name}-owner", store=str(d / "stores" / f"{name}.zarr"))
    for inst in data["instruments"]:
        inst["sample"] = f"smbfo-{name}.{inst['kind']}"
    data.update(changes)
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_submit_refuses_an_instrument_the_facility_lacks(site):
    spec = write_spec(site, "lost")
    data = yaml.safe_load(spec.read_text())
    data["instruments"][1]["name"] = "xrd-twin"
    spec.write_text(yaml.safe_dump(data))
    res = coorch("campaign", "submit", str(spec), "--dir", str(site[0]))
    assert_refused(res, "submit", f"{spec}: instruments.1.name: 'xrd-twin'", "afm-twin")

    data["instruments"][1]["name"] = "raman-twin"
    data["instruments"][1]["url"] = "http://127.0.0.1:9"
    spec.write_text(yaml.safe_dump(data))
    res = coorch("campaign", "submit", str(spec), "--dir", str(site[0]))
    assert_refused(res, "submit", "instruments.1.url: http://127.0.0.1:9 is not where")


@pytest.mark.slow
def test_submit_refuses_a_deadline_already_past(site):
    spec = write_spec(site, "late", deadline="2020-01-01T00:00:00+00:00")
    res = coorch("campaign", "submit", str(spec), "--dir", str(site[0]))
    assert_refused(res, "submit", f"{spec}: deadline: 2020-01-01T00:00:00+00:00 has passed")


@pytest.mark.slow
def test_submit_refuses_a_store_it_cannot_write(site):
    blocker = site[1] / "a-file"
    blocker.write_text("a file, where the store's folder would go\n")
    spec = write_spec(site, "nowhere", store=str(blocker / "c.zarr"))
    res = coorch("campaign", "submit", str(spec), "--dir", str(site[0]))
    assert_refused(res, "submit", f"{spec}: store: cannot write", "is not a folder")
    assert runs_named(site, "nowhere") == []  # nothing submitted


def runs_named(site, name: str) -> list:
    """The facility's flow runs of campaign ``name``, newest first."""
    info = read_info(site[0])
    with runs.facility_client(info, site[0]) as client:
        found = runs.campaign_runs(client, runs.deployment_id(client, site[0]))
    return [r for r in found if (s := runs.spec_of(r)) is not None and s.name == name]


def wait_for(site, name: str, done, timeout_s: float = 240.0):
    """The newest run of campaign ``name`` once ``done(run)``; fails past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = runs_named(site, name)
        if found and done(found[0]):
            return found[0]
        time.sleep(1.0)
    state = runs.state_name(found[0]) if found else "no run"
    raise AssertionError(f"campaign {name}: still {state} after {timeout_s:g} s")


def stored_ids(store: str) -> list[str]:
    from coorch.storage import CampaignStore

    with CampaignStore.open(store, create=False) as s:
        return list(s.measurements_table()["measurement_id"])


def is_final(run) -> bool:
    return run.state is not None and run.state.is_final()


def submitted_id(res) -> str:
    assert res.exit_code == 0, (res.output, res.exception)
    return res.stdout.split("flow run ", 1)[1].split()[0]


@pytest.mark.slow
def test_two_campaigns_run_one_is_cancelled_and_resumed_nothing_measured_twice(site):
    run_dir = str(site[0])
    quick = write_spec(site, "quick", budget=6)
    long = write_spec(site, "long", budget=30)
    quick_id = submitted_id(coorch("campaign", "submit", str(quick), "--dir", run_dir))
    long_id = submitted_id(coorch("campaign", "submit", str(long), "--dir", run_dir))

    listed = coorch("campaign", "list", "--dir", run_dir)
    assert listed.exit_code == 0, listed.output
    for run_id, owner in ((quick_id, "quick-owner"), (long_id, "long-owner")):
        row = next(line for line in listed.stdout.splitlines() if run_id[:8] in line)
        assert owner in row

    # what another campaign holds is refused while it is active
    thief = write_spec(site, "thief")
    data = yaml.safe_load(thief.read_text())
    data["instruments"][0]["sample"] = "smbfo-long.afm"
    thief.write_text(yaml.safe_dump(data))
    res = coorch("campaign", "submit", str(thief), "--dir", run_dir)
    assert_refused(res, "submit", "sample smbfo-long.afm is held by campaign 'long'")
    again = coorch("campaign", "submit", str(long), "--dir", run_dir)
    assert_refused(again, "submit", "campaign 'long' is already active")

    # the long one is cancelled once it has measured something, while it runs
    store = str(site[1] / "stores" / "long.zarr")
    wait_for(site, "long", lambda r: runs.measured(store) or is_final(r))
    cancel = coorch("campaign", "cancel", long_id[:8], "--dir", run_dir, "--wait", "60")
    assert cancel.exit_code == 0 and "Cancelled" in cancel.stdout, cancel.output
    before = stored_ids(store)
    assert 0 < len(before) < 30 and len(set(before)) == len(before)
    show = coorch("campaign", "show", long_id, "--dir", run_dir)
    assert "Cancelled" in show.stdout and f" {len(before)} of 30" in show.stdout, show.output
    assert "instrument-s (the arbiter's charges)" in show.stdout, show.output

    # the quick one, sharing the twins, runs to completion meanwhile
    done = wait_for(site, "quick", is_final)
    assert runs.state_name(done) == "Completed", done.state.message
    ids = stored_ids(str(site[1] / "stores" / "quick.zarr"))
    assert len(ids) == 6 and len(set(ids)) == 6

    resumed = submitted_id(coorch("campaign", "resume", long_id[:8], "--dir", run_dir))
    assert resumed != long_id
    done = wait_for(site, "long", is_final)
    assert str(done.id) == resumed and runs.state_name(done) == "Completed", done.state.message
    after = stored_ids(store)
    assert len(after) == 30 and len(set(after)) == 30 and set(before) <= set(after)
    listed = coorch("campaign", "list", "--dir", run_dir).stdout
    states = {
        line.split("│")[2].strip(): line.split("│")[5].strip()
        for line in listed.splitlines()
        if "long-" in line
    }
    assert states == {long_id[:8]: "Cancelled", resumed[:8]: "Completed"}, listed
