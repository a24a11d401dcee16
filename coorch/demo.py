"""``coorch demo``: a full co-orchestrated campaign on the embedded defaults.

Four digital twins (PFM loops, Raman spectra, WDS composition, STEM HAADF images) over the
virtual Sm-doped BiFeO3 library, served over HTTP on loopback; a local Prefect server (its own
process, state in the run folder); a Dask LocalCluster for the GP fits; a local zarr store. The
same campaign is then run with random positions, and both are scored against the twins' ground
truth.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEMO_INSTRUMENTS = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"), ("stem", "stem_haadf"))


def prepare_environment(run_dir: Path) -> None:
    """Keep Prefect's state inside the run folder and its logs quiet (before importing it)."""
    os.environ["PREFECT_HOME"] = str((run_dir / ".prefect").resolve())
    quiet_environment()


def quiet_environment() -> None:
    """Prefect's and Dask's logs at WARNING (before Prefect is imported)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_DISTRIBUTED_LEVEL", "WARNING")
    quiet_libraries()


def quiet_libraries() -> None:
    """Library chatter that says nothing to a facility user."""
    import logging
    import warnings

    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.core",
        "distributed.worker",
        "distributed.http.proxy",
        "uvicorn",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")


def check_arguments(run_dir: Path, facility: Path | None) -> None:
    """Raise a ``ValueError`` naming the option when ``--run-dir`` cannot be written or
    ``--against`` names a folder where no facility is up: found before a Prefect server, twins
    and Dask start (seconds), for ``coorch demo`` to say in one line."""
    from coorch.errors import check_writable

    check_writable(run_dir, "--run-dir", folder=True)
    if facility is None:
        return
    from coorch.deployments.facility import read_info

    if read_info(facility) is None:
        raise ValueError(
            f"--against {facility}: no facility is up there (start one: coorch up --dir {facility})"
        )


def run_demo(
    run_dir: Path,
    *,
    budget: int = 40,
    seed: int = 0,
    fresh: bool = True,
    time_scale: float = 0.05,
    console: Console | None = None,
    facility: Path | None = None,
) -> dict:
    """Both campaigns, the report and the summary. ``time_scale`` shrinks the instruments'
    real cost (a 30 s PFM loop takes 1.5 s at 0.05) so the background fits have time to land.

    ``facility``: the folder of a facility started by ``coorch up``: its twins, Prefect server
    (the runs stay there, in its UI) and Dask cluster are used instead of the demo's own."""
    from coorch.deployments.prefect_server import local_prefect_server

    console = console or Console()
    run_dir.mkdir(parents=True, exist_ok=True)
    if facility is not None:
        quiet_environment()
        return _campaigns(run_dir, _Facility.attach(facility), budget, fresh, console)
    prepare_environment(run_dir)
    with contextlib.ExitStack() as stack:
        with console.status(f"starting a local Prefect server (state in {run_dir}/.prefect)"):
            stack.enter_context(local_prefect_server(run_dir / ".prefect"))
        site = stack.enter_context(_Facility.own(run_dir, seed, time_scale))
        return _campaigns(run_dir, site, budget, fresh, console)


class _Facility:
    """Where the demo's campaigns run: its own twins (started here) or those of a running
    ``coorch up``; ``twins`` are twin objects of the same seeds, for the ground truth."""

    def __init__(self, instruments: list, twins: dict, sample: str, dask, seed: int) -> None:
        self.instruments, self.twins, self.sample, self.dask = instruments, twins, sample, dask
        self.seed = seed

    @classmethod
    @contextlib.contextmanager
    def own(cls, run_dir: Path, seed: int, time_scale: float):
        from coorch.deployments.config import DaskConfig, InstrumentConfig
        from coorch.instrument_agents.launch import start_twin

        quiet_libraries()  # again: importing Prefect reconfigured logging
        token_file = run_dir / "agent.token"
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)
        token = token_file.read_text()
        agents = {
            kind: start_twin(kind, "smbfo", token=token, seed=seed + k, time_scale=time_scale)
            for k, (kind, _) in enumerate(DEMO_INSTRUMENTS)
        }
        for agent in agents.values():  # the demo's sample is already mounted: a 60 s check,
            agent.driver.sample_load_cost_s = 60.0  # not a 30-minute STEM transfer
        try:
            instruments = [
                InstrumentConfig(
                    name=agents[kind].driver.describe().id,
                    kind=kind,
                    modality=mod,
                    url=agents[kind].url,
                    token_file=token_file,
                )
                for kind, mod in DEMO_INSTRUMENTS
            ]
            twins = {i.name: agents[i.kind].driver for i in instruments}
            yield cls(instruments, twins, "smbfo-001", DaskConfig(), seed)
        finally:
            for a in agents.values():
                a.stop()

    @classmethod
    def attach(cls, folder: Path) -> _Facility:
        import yaml

        from coorch.deployments.config import CampaignSpec
        from coorch.deployments.facility import read_info
        from coorch.instrument_agents.launch import make_twin

        info = read_info(folder)
        if info is None:
            raise SystemExit(f"no facility is up in {folder}: start one with `coorch up`")
        os.environ["PREFECT_API_URL"] = info.prefect_api_url
        spec = CampaignSpec(**yaml.safe_load(Path(info.campaign_spec).read_text()))
        twins = {  # the facility seeds its k-th twin with seed + k
            i.name: make_twin(i.kind, info.library, seed=spec.seed + k)
            for k, i in enumerate(spec.instruments)
        }
        return cls(spec.instruments, twins, spec.sample, spec.dask, spec.seed)


def _campaigns(run_dir: Path, site: _Facility, budget: int, fresh: bool, console: Console) -> dict:
    from coorch.deployments.config import CampaignSpec
    from coorch.flows.coorchestrate import coorchestrate
    from coorch.flows.progress import watching
    from coorch.storage import CampaignStore
    from coorch.tasks.setup import geometry

    quiet_libraries()  # again: importing Prefect reconfigured logging
    stores = {}
    for policy, store_name in (("coorchestrate", "campaign.zarr"), ("random", "random.zarr")):
        store = run_dir / store_name
        if fresh and store.exists():
            shutil.rmtree(store)
        spec = CampaignSpec(
            name=f"demo-{policy}",
            library="smbfo",
            sample=site.sample,
            instruments=site.instruments,
            policy=policy,
            budget=budget,
            store=str(store),
            seed=site.seed,
            dask=site.dask,
        )
        console.rule(f"[bold]{policy}[/] campaign: {budget} measurements -> {store}")
        t0 = time.perf_counter()
        result = _run_with_progress(coorchestrate, watching, spec, console)
        console.print(
            f"  done in {time.perf_counter() - t0:.1f} s, "
            f"{result.n_fits} background GP fits on Dask"
        )
        stores[policy] = CampaignStore.open(str(store), create=False).read_measurements()
    return _score(run_dir, stores, site.instruments, site.twins, geometry(spec).bounds, console)


def _score(
    run_dir: Path,
    stores: dict,
    instruments: list,
    twins: dict,
    extent: np.ndarray,
    console: Console,
) -> dict:
    """Each run's error against the twins' ground truth, the report figure and page, the summary."""
    from coorch.models.mtgp import aspect, fit_hyperparameters
    from coorch.tasks.report import ground_truth, nrmse_curve, plot_report, training_arrays
    from coorch.tasks.report_html import write_report

    modalities = {i.name: i.modality for i in instruments}
    truth = ground_truth(twins, modalities, extent)
    log_tasks = np.array([i.log_scale for i in instruments])
    curves = {p: nrmse_curve(ms, truth, extent, log_tasks=log_tasks) for p, ms in stores.items()}
    hyper = fit_hyperparameters(
        *training_arrays(stores["coorchestrate"], truth.tasks, extent),
        len(truth.tasks),
        aspect=aspect(extent),
        log_tasks=log_tasks,
    )
    png = plot_report(run_dir / "report.png", stores, curves, truth, extent, hyper)
    page = write_report(run_dir / "campaign.zarr", run_dir / "report.html", truth=truth)
    summary = {
        p: dict(zip(truth.tasks, np.round(c[1][-1], 4).tolist(), strict=True))
        for p, c in curves.items()
    }
    cost = {i.name: twins[i.name].describe().modality(i.modality).cost_s for i in instruments}
    console.rule("[bold]result")
    for p, errs in summary.items():
        tasks = ", ".join(f"{k} {v:.3f}" for k, v in errs.items())
        seconds = sum(cost[m.instrument] for m in stores[p])
        console.print(
            f"{p:>14}: final normalised RMSE vs ground truth: {tasks} "
            f"(mean {np.mean(list(errs.values())):.3f}); instrument time "
            f"{seconds:.0f} s",
            soft_wrap=True,
        )
    console.print(f"store: {run_dir / 'campaign.zarr'}   report: {png}   {page}")
    return {"summary": summary, "report": str(png), "report_html": str(page)}


def _run_with_progress(flow_fn, watching, spec, console: Console):
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        job = bar.add_task("measuring", total=spec.budget)

        def show(m, info) -> None:
            d = float(np.ravel(info["descriptor"])[0])
            bar.console.print(
                f"  [{info['n']:>3}/{info['budget']}] {m.instrument:<10} x={m.library_x:5.2f} "
                f"y={m.library_y:4.2f} mm  {m.modality}={d:8.2f}  why: {info['why']}",
                overflow="ignore",
                crop=False,
                soft_wrap=True,
            )
            bar.update(job, completed=info["n"])

        with watching(show):
            return flow_fn(spec)
