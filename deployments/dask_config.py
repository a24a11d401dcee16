"""Where a campaign's Dask work runs: a LocalCluster, an existing scheduler, or an HPC queue.

Its own module so that the cluster factory (:mod:`coorch.deployments.dask_cluster`) and every
spec that names a cluster (a campaign's fits, a co-navigation's simulations under
``theory.dask``) share one shape.

An HPC queue (``jobqueue: slurm`` or ``pbs``) runs each Dask worker as a batch job through
dask-jobqueue. What a site needs is a typed field here (queue, account, walltime, cores and
memory per job, the network interface, shell lines before the worker starts, extra batch
directives, scratch and log folders), refused here when malformed rather than by ``sbatch``
minutes later. A field left None falls back to the site's own dask-jobqueue configuration
(``~/.config/dask/jobqueue.yaml``), then to dask-jobqueue's defaults; anything else goes in
``jobqueue_kwargs``, merged last. docs/hpc.md has a worked example.

Fields are only ever added, each with a default, so a spec stored by older code still loads.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from coorch.deployments.steering_config import STRICT

#: A scheduler's HTTP server (health and metrics; no dashboard) on a free loopback port. Why:
#: ``dashboard_address=None`` turns the dashboard off but not the server, which still asks for
#: port 8787, so a second cluster on the same host (two campaigns, two test processes, two
#: campaigns on one HPC login node) warns that the port is taken and moves to another.
#: ``LocalCluster(scheduler_kwargs=SCHEDULER_HTTP)`` is all a local cluster needs: it merges
#: ``scheduler_kwargs`` over its own ``dashboard_address``.
SCHEDULER_HTTP = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}

#: ``HH:MM:SS`` as ``#SBATCH -t`` and ``#PBS -l walltime`` both read it (hours may pass 24).
WALLTIME = re.compile(r"^\d{1,4}:[0-5]\d:[0-5]\d$")
#: An interface name (``ib0``, ``eth0``, ``lo``, ``enp1s0f0``): it goes onto a command line.
INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")
#: An environment variable name, for :attr:`DaskConfig.export_env`.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: The fields that only mean something to a jobqueue cluster (refused without ``jobqueue``).
JOBQUEUE_FIELDS = (
    "minimum_jobs",
    "maximum_jobs",
    "queue",
    "account",
    "walltime",
    "cores",
    "memory",
    "processes",
    "interface",
    "scheduler_port",
    "job_script_prologue",
    "job_extra_directives",
    "export_env",
    "local_directory",
    "log_directory",
    "jobqueue_kwargs",
)


class DaskConfig(BaseModel):
    """Where Dask work runs: a LocalCluster by default, an existing scheduler (``address``), or
    batch jobs on an HPC queue (``jobqueue``), a fixed number or adaptively many."""

    model_config = STRICT

    address: str | None = Field(None, description="scheduler address; None starts a LocalCluster")
    n_workers: int = Field(
        1, ge=1, le=1024, description="LocalCluster workers; jobs to start without maximum_jobs"
    )
    threads_per_worker: int = Field(1, ge=1, le=256, description="LocalCluster threads each")
    jobqueue: Literal["slurm", "pbs"] | None = Field(
        None, description="run the workers as batch jobs of this queue system (dask-jobqueue)"
    )
    minimum_jobs: int = Field(0, ge=0, le=1024, description="adaptive: jobs kept when idle")
    maximum_jobs: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="adaptive: at most this many jobs; None scales to n_workers jobs instead",
    )
    queue: str | None = Field(None, description="partition (#SBATCH -p) or queue (#PBS -q)")
    account: str | None = Field(None, description="account charged (#SBATCH -A / #PBS -A)")
    walltime: str | None = Field(
        None, description="each job's time limit, HH:MM:SS (a whole number: seconds)"
    )
    cores: int | None = Field(None, ge=1, le=4096, description="cores per job")
    memory: str | None = Field(None, description="memory per job, e.g. '16GB', '64 GiB'")
    processes: int | None = Field(
        None, ge=1, le=512, description="Dask worker processes per job (cores shared among them)"
    )
    interface: str | None = Field(
        None,
        description="network interface the workers and the scheduler listen on, e.g. 'ib0'; "
        "None: the host's default address",
    )
    scheduler_port: int = Field(
        0, ge=0, le=65535, description="the scheduler's port; 0 picks a free one"
    )
    job_script_prologue: list[str] = Field(
        default_factory=list,
        description="shell lines run in each job before the worker: module load, venv, exports",
    )
    job_extra_directives: list[str] = Field(
        default_factory=list,
        description="more batch directives, without the prefix: '--gres=gpu:1', '-l place=excl'",
    )
    export_env: list[str] = Field(
        default_factory=list,
        description="names of variables exported into each job with the value they have where "
        "the cluster starts (e.g. PREFECT_API_URL, known only once the server is up)",
    )
    local_directory: str | None = Field(None, description="worker scratch (spill), e.g. $TMPDIR")
    log_directory: str | None = Field(None, description="where the queue writes jobs' output")
    jobqueue_kwargs: dict = Field(
        default_factory=dict,
        description="anything else for the dask-jobqueue cluster class, merged last",
    )

    @field_validator("jobqueue", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("walltime", mode="before")
    @classmethod
    def _seconds(cls, v: object) -> object:
        """YAML 1.1 (PyYAML) reads an unquoted ``12:00:00`` as the sexagesimal 43200: seconds."""
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return f"{v // 3600:02d}:{v % 3600 // 60:02d}:{v % 60:02d}"
        return v

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str | None) -> str | None:
        if v is not None and not WALLTIME.match(v):
            raise ValueError(f"walltime {v!r} is not HH:MM:SS, e.g. '02:00:00'")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from dask.utils import parse_bytes  # lazily: specs load where dask is not needed

        try:
            n = parse_bytes(v)
        except (ValueError, TypeError):
            raise ValueError(f"memory {v!r} is not an amount of bytes, e.g. '16GB'") from None
        if n < 2**20:
            raise ValueError(f"memory {v!r} is less than a MiB per job; say '16GB', not '16'")
        return v

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str | None) -> str | None:
        if v is not None and not INTERFACE.match(v):
            raise ValueError(f"interface {v!r} is not a network interface name, e.g. 'ib0'")
        return v

    @field_validator("job_script_prologue", "job_extra_directives")
    @classmethod
    def _one_line_each(cls, v: list[str]) -> list[str]:
        for line in v:
            if "\n" in line or "\r" in line:
                raise ValueError(f"{line!r}: one line per item")
        return v

    @field_validator("export_env")
    @classmethod
    def _env_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DaskConfig:
        if self.jobqueue is None:
            given = [f for f in JOBQUEUE_FIELDS if getattr(self, f) != _DEFAULTS[f]]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only mean something with jobqueue ('slurm' or 'pbs')"
                )
            return self
        if self.address is not None:
            raise ValueError("address and jobqueue: give one (a scheduler, or jobs that start one)")
        if self.maximum_jobs is None and self.minimum_jobs:
            raise ValueError(
                f"minimum_jobs={self.minimum_jobs} needs maximum_jobs (adaptive scaling); "
                "without it the cluster runs n_workers jobs"
            )
        if self.maximum_jobs is not None and self.maximum_jobs < self.minimum_jobs:
            raise ValueError(
                f"maximum_jobs={self.maximum_jobs} is less than minimum_jobs={self.minimum_jobs}"
            )
        return self

    @property
    def adaptive(self) -> bool:
        """Whether a jobqueue cluster adapts between minimum and maximum jobs."""
        return self.jobqueue is not None and self.maximum_jobs is not None


_DEFAULTS = {
    name: field.get_default(call_default_factory=True)
    for name, field in DaskConfig.model_fields.items()
}
