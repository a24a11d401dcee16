"""Dask on an HPC queue (``DaskConfig(jobqueue=...)``): the config refuses what a site would
trip over, the job scripts say what the config says, and a real adaptive run goes through
dask-jobqueue's own job machinery.

There is no SLURM here: the run puts stand-in ``sbatch``, ``squeue`` and ``scancel`` first on
PATH. ``sbatch`` starts the job script dask-jobqueue wrote as a local background process in a
process group of its own (its worker on loopback, ``interface: lo``) and prints SLURM's
``Submitted batch job <id>``; ``scancel`` SIGTERMs that group (SIGKILL after 5 s, as SLURM's
KillWait does after 30). Everything above the queue is real: the cluster class, its job script,
its submission and id parsing, Dask's adaptive scaling, the workers and the close.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from coorch.deployments.dask_config import DaskConfig
from coorch.deployments.jobqueue_cluster import job_script, jobqueue_cluster

HERE = Path(__file__).parent
API = "http://login01:4200/api"
SITE = {
    "queue": "regular",
    "account": "mat123",
    "walltime": "02:00:00",
    "cores": 8,
    "memory": "32GB",
    "interface": "ib0",
    "export_env": ["PREFECT_API_URL"],
    "job_script_prologue": ["module load python/3.11", "source /opt/coorch/.venv/bin/activate"],
    "local_directory": "$TMPDIR",
    "minimum_jobs": 0,
    "maximum_jobs": 4,
}


def refused(fragment: str, **fields) -> None:
    with pytest.raises(ValidationError) as err:
        DaskConfig(**fields)
    assert fragment in str(err.value), str(err.value)


# -- the config -----------------------------------------------------------------------------


def test_bad_jobqueue_settings_are_refused_with_the_field_named():
    refused("maximum_jobs=1 is less than minimum_jobs=2", jobqueue="slurm", minimum_jobs=2,
            maximum_jobs=1)  # fmt: skip
    refused("minimum_jobs=2 needs maximum_jobs", jobqueue="slurm", minimum_jobs=2)
    refused("walltime '2h' is not HH:MM:SS", jobqueue="slurm", walltime="2h")
    refused("walltime '01:75:00' is not HH:MM:SS", jobqueue="pbs", walltime="01:75:00")
    refused("memory 'lots' is not an amount of bytes", jobqueue="slurm", memory="lots")
    refused("less than a MiB", jobqueue="slurm", memory="16")
    refused("interface 'ib0; rm' is not", jobqueue="slurm", interface="ib0; rm")
    refused("one line per item", jobqueue="slurm", job_script_prologue=["a\nb"])
    refused("'PREFECT API' is not an environment", jobqueue="slurm", export_env=["PREFECT API"])
    refused("queue, walltime only mean something with jobqueue", queue="q", walltime="01:00:00")
    refused("maximum_jobs only mean", maximum_jobs=2)
    refused("address and jobqueue", jobqueue="slurm", address="tcp://127.0.0.1:8786")
    refused("Input should be 'slurm' or 'pbs'", jobqueue="sge")
    refused("minimum_jobs", jobqueue="slurm", minimum_jobs=-1)


def test_old_specs_load_and_a_dumped_config_loads_again():
    old = DaskConfig.model_validate(
        {"n_workers": 2, "jobqueue": "SLURM", "jobqueue_kwargs": {"cores": 4, "memory": "8GB"}}
    )
    assert old.jobqueue == "slurm" and not old.adaptive
    assert DaskConfig.model_validate({"n_workers": 2, "threads_per_worker": 2}).jobqueue is None
    for config in (DaskConfig(), DaskConfig(jobqueue="pbs", **SITE)):
        assert DaskConfig.model_validate(config.model_dump()) == config
        assert DaskConfig.model_validate_json(config.model_dump_json()) == config


def test_a_job_needs_cores_and_memory_and_its_exports_set():
    with pytest.raises(ValueError, match="needs cores and memory per job"):
        job_script(DaskConfig(jobqueue="slurm", cores=4))
    config = DaskConfig(jobqueue="slurm", cores=4, memory="8GB", export_env=["COORCH_NOPE"])
    with pytest.raises(ValueError, match="export_env names COORCH_NOPE, not set"):
        job_script(config, environ={})


# -- the job scripts ------------------------------------------------------------------------


def worker_line(script: str) -> str:
    (line,) = [ln for ln in script.splitlines() if "-m distributed.cli.dask_worker" in ln]
    return line


def test_the_slurm_job_script_says_what_the_config_says():
    config = DaskConfig(jobqueue="slurm", job_extra_directives=["--gres=gpu:1"], **SITE)
    script = job_script(config, "tcp://10.0.0.1:8786", environ={"PREFECT_API_URL": API})
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("-p regular", "-A mat123", "-t 02:00:00", "--cpus-per-task=8",
                      "--mem=30G", "--gres=gpu:1"):  # fmt: skip
        assert f"#SBATCH {directive}" in lines, (directive, script)
    exports = lines.index(f"export PREFECT_API_URL={API}")
    assert lines[exports + 1 : exports + 3] == SITE["job_script_prologue"]
    worker = worker_line(script)
    assert lines.index(worker) > exports + 2  # the prologue runs first
    assert worker.split()[1:4] == ["-m", "distributed.cli.dask_worker", "tcp://10.0.0.1:8786"]
    assert "--interface ib0" in worker and "--local-directory $TMPDIR" in worker
    assert "--nthreads 2" in worker and "--nworkers 4" in worker  # 8 cores: 4 processes x 2


def test_the_pbs_job_script_says_what_the_config_says():
    config = DaskConfig(jobqueue="pbs", processes=1, **SITE)
    script = job_script(config, environ={"PREFECT_API_URL": API})
    lines = script.splitlines()
    for directive in ("-q regular", "-A mat123", "-l select=1:ncpus=8:mem=30GB",
                      "-l walltime=02:00:00"):  # fmt: skip
        assert f"#PBS {directive}" in lines, (directive, script)
    assert f"export PREFECT_API_URL={API}" in lines
    worker = worker_line(script)
    assert "--interface ib0" in worker and "--nthreads 8" in worker
    assert "--nworkers" not in worker  # one process of 8 threads


def test_jobqueue_kwargs_go_last_and_a_cluster_renders_the_same_script():
    config = DaskConfig(
        jobqueue="slurm",
        cores=1,
        memory="1GB",
        interface="lo",
        jobqueue_kwargs={"job_name": "coorch-sim", "walltime": "00:10:00"},
    )
    cluster = jobqueue_cluster(config)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")  # on `interface`
        assert not cluster.workers  # constructed, nothing submitted
        script = cluster.job_script()
        assert script == job_script(config, cluster.scheduler_address)
        assert "#SBATCH -J coorch-sim" in script and "#SBATCH -t 00:10:00" in script
    finally:
        cluster.close()


def test_an_unquoted_yaml_walltime_is_read_as_the_seconds_it_became():
    import yaml

    data = yaml.safe_load("jobqueue: slurm\nwalltime: 12:00:00\n")
    assert data["walltime"] == 43200  # YAML 1.1 sexagesimal (02:00:00 stays a string)
    assert DaskConfig.model_validate(data).walltime == "12:00:00"
    assert DaskConfig(jobqueue="pbs", walltime=90).walltime == "00:01:30"


def doc_blocks(lang: str) -> list[str]:
    text = (HERE.parent / "docs" / "hpc.md").read_text()
    return [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith(lang + "\n")]


def test_the_docs_yaml_loads_and_prints_the_job_script_the_docs_show(tmp_path, capsys, monkeypatch):
    """docs/hpc.md's `dask` and `theory.dask` examples are valid, and the script it shows is
    what ``python -m coorch.deployments.jobqueue_cluster`` prints (its log folder moved here:
    rendering the script creates it)."""
    import sys

    from coorch.deployments.jobqueue_cluster import main

    logs = "/scratch/mat123/coorch/dask-logs"
    campaign, conavigation = doc_blocks("yaml")[:2]
    (tmp_path / "campaign.yaml").write_text(campaign.replace(logs, str(tmp_path / "logs")))
    assert main([str(tmp_path / "campaign.yaml")]) == 0
    (shown,) = [b for b in doc_blocks("bash") if b.startswith("#!/usr/bin/env bash")]
    shown = shown.replace(logs, str(tmp_path / "logs"))
    shown = shown.replace("/home/u/coorch/.venv/bin/python -m", f"{sys.executable} -m")
    assert capsys.readouterr().out == shown

    (tmp_path / "conav.yaml").write_text(conavigation)
    monkeypatch.setenv("PREFECT_API_URL", API)  # what its export_env reads
    assert main([str(tmp_path / "conav.yaml"), "theory.dask"]) == 0
    script = capsys.readouterr().out
    assert f"export PREFECT_API_URL={API}" in script and "#SBATCH -t 04:00:00" in script
    assert main([str(tmp_path / "conav.yaml")]) == 2  # no `dask` at the top
    assert "no `dask` section" in capsys.readouterr().err


# -- a real run through stand-in sbatch/squeue/scancel --------------------------------------

SBATCH = """\
#!/usr/bin/env bash
# stand-in sbatch: run the job script here, in the background, in a process group of its own
set -eu
jobs="$(dirname "$0")/jobs"
mkdir -p "$jobs"
id=$$
cp "$1" "$jobs/$id.sh"
SLURM_JOB_ID=$id setsid bash "$jobs/$id.sh" >"$jobs/$id.log" 2>&1 </dev/null &
echo $! >"$jobs/$id.pid"
echo "$id" >>"$jobs/submitted"
echo "Submitted batch job $id"
"""
SCANCEL = """\
#!/usr/bin/env bash
# stand-in scancel: SIGTERM the job's process group, SIGKILL what is left after 5 s
jobs="$(dirname "$0")/jobs"
for id in "$@"; do
  echo "$id" >>"$jobs/cancelled"
  pid=$(cat "$jobs/$id.pid" 2>/dev/null) || { echo "scancel: invalid job id $id" >&2; exit 1; }
  kill -TERM -- "-$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || continue 2; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
done
"""
SQUEUE = """\
#!/usr/bin/env bash
# stand-in squeue: the ids of live jobs (dask-jobqueue 0.9.0 does not call it)
jobs="$(dirname "$0")/jobs"
echo "$*" >>"$jobs/squeue-calls"
echo JOBID
for f in "$jobs"/*.pid; do
  [ -e "$f" ] && kill -0 -- "-$(cat "$f")" 2>/dev/null && basename "$f" .pid
done
true
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder of stand-in SLURM commands first on PATH; yields its ``jobs`` folder. Any job
    still alive at the end is killed (a failed test must not leave workers behind)."""
    bin_dir = tmp_path / "slurm-bin"
    (bin_dir / "jobs").mkdir(parents=True)
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL), ("squeue", SQUEUE)):
        (bin_dir / name).write_text(textwrap.dedent(text))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield bin_dir / "jobs"
    for pgid in job_groups(bin_dir / "jobs").values():
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def job_groups(jobs: Path) -> dict[str, int]:
    """Job id -> the process group its script runs in."""
    return {p.stem: int(p.read_text()) for p in jobs.glob("*.pid")}


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of group ``pgid`` is alive."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def gram_trace(n: int) -> float:
    import numpy as np

    a = np.arange(n * n, dtype=float).reshape(n, n)
    return float(np.trace(a @ a.T))


def in_a_job(n: int) -> tuple[str, str, float]:
    """A small numpy task that says which job ran it, and whether its prologue ran."""
    return os.environ["SLURM_JOB_ID"], os.environ["COORCH_PROLOGUE"], gram_trace(n)


def loopback_jobs(**scaling) -> DaskConfig:
    """Small SLURM jobs whose workers listen on loopback and can import this module."""
    return DaskConfig(
        jobqueue="slurm",
        cores=1,
        memory="1GB",
        processes=1,
        walltime="00:05:00",
        interface="lo",
        # what a site's prologue does: the environment the tasks need (here, this module)
        job_script_prologue=["export COORCH_PROLOGUE=ran", f"export PYTHONPATH={HERE}"],
        **scaling,
    )


def wait_gone(groups: dict[str, int], timeout_s: float = 10.0) -> list[str]:
    """The jobs of ``groups`` still alive after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(group_alive(g) for g in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [job for job, g in groups.items() if group_alive(g)]


def test_an_adaptive_slurm_cluster_runs_tasks_in_jobs_and_cancels_them(fake_slurm):
    from coorch.deployments.dask_cluster import dask_client

    with dask_client(loopback_jobs(minimum_jobs=1, maximum_jobs=2)) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        results = client.gather(client.map(in_a_job, range(2, 8)))
        submitted = lines(fake_slurm / "submitted")
        assert 1 <= len(submitted) <= 2, submitted  # minimum 1, maximum 2
        assert {job for job, _, _ in results} <= set(submitted)  # ran in the jobs
        assert {prologue for _, prologue, _ in results} == {"ran"}
        assert [t for _, _, t in results] == [gram_trace(n) for n in range(2, 8)]
        groups = job_groups(fake_slurm)
        assert any(group_alive(g) for g in groups.values())
    assert set(lines(fake_slurm / "cancelled")) == set(submitted)  # every job scancelled
    assert wait_gone(groups) == []  # and gone


def test_a_job_that_dies_is_replaced_and_its_tasks_finish(fake_slurm):
    """A job ends under its worker (walltime, a lost node): a fixed-size cluster submits
    another once Dask's lost-worker timeout passes (15 s by default, 1 s here), and the work
    goes on there."""
    import dask

    from coorch.deployments.dask_cluster import dask_client

    with (
        dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}),
        dask_client(loopback_jobs(n_workers=1)) as client,
    ):
        first, _, _ = client.submit(in_a_job, 2).result(timeout=60)
        os.killpg(job_groups(fake_slurm)[first], signal.SIGKILL)
        again, prologue, trace = client.submit(in_a_job, 3).result(timeout=60)
        assert again != first and prologue == "ran" and trace == gram_trace(3)
        assert lines(fake_slurm / "submitted") == [first, again]
        groups = job_groups(fake_slurm)
    assert set(lines(fake_slurm / "cancelled")) == {first, again}  # once or twice: harmless
    assert wait_gone(groups) == []


@pytest.mark.slow
def test_a_conavigation_runs_its_simulations_in_slurm_jobs(fake_slurm, prefect_server, tmp_path):
    """The flow itself through dask-jobqueue's machinery: ``theory.dask`` names a SLURM
    cluster, the simulations run in its jobs beside the measurements, the jobs are cancelled
    at the end, and the campaign's fits stay on their LocalCluster."""
    from coorch.deployments.config import InstrumentConfig
    from coorch.deployments.theory_config import ConavigateSpec, TheoryConfig
    from coorch.flows.conavigate import conavigate
    from coorch.instrument_agents.launch import start_twin
    from coorch.storage import CampaignStore

    token = tmp_path / "agent.token"
    token.write_text("hpc-token")
    kinds = (("afm", "pfm_loop"), ("raman", "raman"))
    agents = [
        start_twin(kind, "smbfo-lgd", token="hpc-token", seed=k, time_scale=0.05)
        for k, (kind, _) in enumerate(kinds)
    ]
    try:
        insts = [
            InstrumentConfig(name=a.driver.describe().id, kind=kind, modality=mod, url=a.url,
                             token_file=token)
            for a, (kind, mod) in zip(agents, kinds, strict=True)
        ]  # fmt: skip
        jobs = loopback_jobs(minimum_jobs=1, maximum_jobs=1).model_dump()
        spec = ConavigateSpec(
            name="hpc",
            library="smbfo-lgd",
            instruments=insts,
            budget=8,
            seeds_per_instrument=2,
            grid=(21, 3),
            store=str(tmp_path / "hpc.zarr"),
            report="",
            theory=TheoryConfig(
                instrument=insts[0].name,
                initial_simulations=4,
                max_simulations=8,
                # all four submitted at once: the campaign's end waits for what is in flight,
                # so at least the three a posterior needs land however slowly the job starts
                in_flight=4,
                dask=DaskConfig(**{**jobs, "cores": 2}),
            ),
        )
        result = conavigate(spec)
    finally:
        for a in agents:
            a.stop()
    assert result.n_measurements == 8 and set(result.theory["posterior"]) == {"s_c", "depol"}
    with CampaignStore.open(spec.store, create=False) as store:
        sims = store.read_simulations()
    assert sims and {s.status for s in sims} == {"done"}
    assert all(not s.worker.endswith(f":{os.getpid()}") for s in sims)  # not in this process
    submitted = lines(fake_slurm / "submitted")
    assert len(submitted) >= 1 and set(lines(fake_slurm / "cancelled")) == set(submitted)
    assert wait_gone(job_groups(fake_slurm)) == []
