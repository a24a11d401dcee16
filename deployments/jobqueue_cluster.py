"""Dask on an HPC queue: a :class:`~coorch.deployments.dask_config.DaskConfig` with ``jobqueue``
made into a dask-jobqueue cluster (SLURM or PBS), and the job script it would submit.

The scheduler runs where the cluster is made (the flow's process, on a login node); each Dask
worker is a batch job that the cluster submits with ``sbatch``/``qsub`` and cancels with
``scancel``/``qdel``. A job's script is a shebang, the batch directives, the prologue (our
``export_env`` exports, then ``job_script_prologue``), and one ``python -m
distributed.cli.dask_worker tcp://<scheduler>`` line: the worker dials the scheduler, so the
compute nodes must reach the login node on ``interface`` at ``scheduler_port``.

:func:`job_script` renders that script without starting anything (no scheduler, no interface
needed here), for ``coorch`` commands and for checking a site's YAML on a laptop;
:func:`jobqueue_cluster` makes the cluster (its scheduler listens from then on) without
submitting a job; :func:`start_jobs` submits them, adaptively or a fixed number, and replaces
a job that dies. ``python -m coorch.deployments.jobqueue_cluster SPEC.yaml [theory.dask]``
prints the job script of a spec's section.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

from coorch.deployments.dask_config import SCHEDULER_HTTP, DaskConfig

if TYPE_CHECKING:
    from dask_jobqueue.core import JobQueueCluster

#: Keyword arguments of a dask-jobqueue cluster that its Job class does not take.
CLUSTER_ONLY = frozenset(
    {
        "n_workers",
        "loop",
        "security",
        "shared_temp_directory",
        "silence_logs",
        "name",
        "asynchronous",
        "dashboard_address",
        "host",
        "scheduler_options",
        "scheduler_cls",
    }
)
#: What :func:`job_script` names the scheduler when none is running yet.
PLACEHOLDER_SCHEDULER = "tcp://<scheduler-address>:8786"


def cluster_class(config: DaskConfig) -> type[JobQueueCluster]:
    """The dask-jobqueue cluster class for ``config.jobqueue``."""
    if config.jobqueue is None:
        raise ValueError("this DaskConfig names no jobqueue ('slurm' or 'pbs')")
    try:
        import dask_jobqueue
    except ImportError as exc:  # pragma: no cover - a dependency of coorch
        raise RuntimeError("jobqueue clusters need `pip install dask-jobqueue`") from exc
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[config.jobqueue]


def cluster_kwargs(config: DaskConfig, environ: Mapping[str, str] | None = None) -> dict:
    """The keyword arguments of :func:`cluster_class` for ``config``: its typed fields, those
    left None omitted (the site's jobqueue.yaml, then dask-jobqueue, decide), then
    ``jobqueue_kwargs`` over them (its ``scheduler_options`` merged key by key).

    ``environ``: where ``export_env`` values are read (default ``os.environ``); a name that is
    not set there is refused, since workers that cannot report fail far from here."""
    import dask

    environ = os.environ if environ is None else environ
    section = f"jobqueue.{config.jobqueue}"
    cores = config.cores or dask.config.get(f"{section}.cores", None)
    memory = config.memory or dask.config.get(f"{section}.memory", None)
    if cores is None or memory is None:
        raise ValueError(
            f"a {config.jobqueue} cluster needs cores and memory per job: set `cores` and "
            f"`memory` in the dask section (or {section}.cores/.memory in the site's "
            "jobqueue.yaml)"
        )
    missing = [name for name in config.export_env if name not in environ]
    if missing:
        raise ValueError(f"export_env names {', '.join(missing)}, not set in this environment")
    exports = [f"export {n}={shlex.quote(environ[n])}" for n in config.export_env]
    prologue = exports + config.job_script_prologue
    typed = {
        "cores": config.cores,
        "memory": config.memory,
        "processes": config.processes,
        "queue": config.queue,
        "account": config.account,
        "walltime": config.walltime,
        "interface": config.interface,
        "local_directory": config.local_directory,
        "log_directory": config.log_directory,
        "job_script_prologue": prologue or None,
        "job_extra_directives": config.job_extra_directives or None,
    }
    kwargs = {k: v for k, v in typed.items() if v is not None}
    # the campaign needs no dashboard (and two on one login node fight over port 8787)
    scheduler = {**SCHEDULER_HTTP, **dask.config.get(f"{section}.scheduler-options", {})}
    if config.scheduler_port:
        scheduler["port"] = config.scheduler_port
    extra = dict(config.jobqueue_kwargs)
    scheduler.update(extra.pop("scheduler_options", None) or {})
    return {**kwargs, "scheduler_options": scheduler, **extra}


def job_script(
    config: DaskConfig,
    scheduler: str = PLACEHOLDER_SCHEDULER,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The batch script a job of ``config`` runs, its worker dialling ``scheduler``: rendered by
    dask-jobqueue's own Job class, with nothing started (a ``log_directory`` is created, as
    dask-jobqueue does)."""
    job_cls = cluster_class(config).job_cls
    kwargs = {k: v for k, v in cluster_kwargs(config, environ).items() if k not in CLUSTER_ONLY}
    return job_cls(scheduler=scheduler, name="dummy-name", **kwargs).job_script()


def jobqueue_cluster(
    config: DaskConfig, environ: Mapping[str, str] | None = None
) -> JobQueueCluster:
    """The dask-jobqueue cluster of ``config``, its scheduler listening, no job submitted yet
    (:func:`start_jobs` submits them; ``cluster.job_script()`` is what each will run)."""
    return cluster_class(config)(**cluster_kwargs(config, environ))


def start_jobs(cluster: JobQueueCluster, config: DaskConfig) -> None:
    """Submit ``config``'s jobs to ``cluster``: adapting between ``minimum_jobs`` and
    ``maximum_jobs`` with the scheduler's load when ``maximum_jobs`` is set, else ``n_workers``
    jobs (each of ``processes`` worker processes).

    Both adapt (a fixed count is ``minimum_jobs = maximum_jobs = n_workers``): Dask's adaptive
    loop compares, every second, the jobs it planned with the jobs it has, and resubmits one
    whose worker died (walltime, a node lost) once ``distributed.deploy.lost-worker-timeout``
    (15 s) has passed; ``cluster.scale(jobs=n)`` never looks again, and tasks wait for ever for
    a worker that will not come back (tests/test_jobqueue.py kills a job to check)."""
    if config.maximum_jobs is not None:
        low, high = config.minimum_jobs, config.maximum_jobs
    else:
        low = high = config.n_workers
    cluster.adapt(minimum_jobs=low, maximum_jobs=high)


def config_at(path: str, section: str = "dask") -> DaskConfig:
    """The :class:`DaskConfig` at the dotted ``section`` of the YAML file ``path`` (``dask`` in
    a campaign spec, ``theory.dask`` in a co-navigation spec)."""
    from pathlib import Path

    import yaml

    node = yaml.safe_load(Path(path).read_text())
    for key in section.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{path}: no `{section}` section")
        node = node[key]
    return DaskConfig.model_validate(node)


def main(argv: list[str] | None = None) -> int:
    """``python -m coorch.deployments.jobqueue_cluster SPEC.yaml [SECTION]``: print the job
    script the ``dask`` (or ``SECTION``, e.g. ``theory.dask``) section of SPEC would submit."""
    import sys

    from pydantic import ValidationError

    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m coorch.deployments.jobqueue_cluster SPEC.yaml [SECTION]")
        return 2
    try:
        print(job_script(config_at(*argv)), end="")
    except (ValueError, ValidationError, OSError) as exc:
        print(f"jobqueue_cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
