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


def run_demo(
    run_dir: Path,
    *,
    budget: int = 40,
    seed: int = 0,
    fresh: bool = True,
    time_scale: float = 0.05,
    console: Console | None = None,
) -> dict:
    """Both campaigns, the report and the summary. ``time_scale`` shrinks the instruments'
    real cost (a 30 s PFM loop takes 1.5 s at 0.05) so the background fits have time to land."""
    from coorch.deployments.prefect_server import local_prefect_server

    console = console or Console()
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_environment(run_dir)
    with contextlib.ExitStack() as stack:
        with console.status(f"starting a local Prefect server (state in {run_dir}/.prefect)"):
            stack.enter_context(local_prefect_server(run_dir / ".prefect"))
        return _campaigns(
            run_dir, budget=budget, seed=seed, fresh=fresh, time_scale=time_scale, console=console
        )


def _campaigns(
    run_dir: Path, *, budget: int, seed: int, fresh: bool, time_scale: float, console: Console
) -> dict:
    from coorch.deployments.config import CampaignSpec, InstrumentConfig
    from coorch.flows.coorchestrate import coorchestrate
    from coorch.flows.progress import watching
    from coorch.instrument_agents.launch import start_twin
    from coorch.storage import CampaignStore
    from coorch.tasks.setup import geometry

    quiet_libraries()  # again: importing Prefect reconfigured logging

    token = secrets.token_hex(16)
    token_file = run_dir / "agent.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    agents = {
        kind: start_twin(kind, "smbfo", token=token, seed=seed + k, time_scale=time_scale)
        for k, (kind, _) in enumerate(DEMO_INSTRUMENTS)
    }
    for agent in agents.values():  # the demo's sample is already mounted: a 60 s check, not a
        agent.driver.sample_load_cost_s = 60.0  # 30-minute STEM transfer
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
        stores = {}
        for policy, store_name in (("coorchestrate", "campaign.zarr"), ("random", "random.zarr")):
            store = run_dir / store_name
            if fresh and store.exists():
                shutil.rmtree(store)
            spec = CampaignSpec(
                name=f"demo-{policy}",
                library="smbfo",
                instruments=instruments,
                policy=policy,
                budget=budget,
                store=str(store),
                seed=seed,
            )
            console.rule(f"[bold]{policy}[/] campaign: {budget} measurements -> {store}")
            t0 = time.perf_counter()
            result = _run_with_progress(coorchestrate, watching, spec, console)
            console.print(
                f"  done in {time.perf_counter() - t0:.1f} s, "
                f"{result.n_fits} background GP fits on Dask"
            )
            stores[policy] = CampaignStore.open(str(store), create=False).read_measurements()

        return _score(run_dir, stores, instruments, agents, geometry(spec).bounds, console)
    finally:
        for a in agents.values():
            a.stop()


def _score(
    run_dir: Path,
    stores: dict,
    instruments: list,
    agents: dict,
    extent: np.ndarray,
    console: Console,
) -> dict:
    """Each run's error against the twins' ground truth, the report figure and page, the summary."""
    from coorch.models.mtgp import aspect, fit_hyperparameters
    from coorch.tasks.report import ground_truth, nrmse_curve, plot_report, training_arrays
    from coorch.tasks.report_html import write_report

    twins = {i.name: agents[i.kind].driver for i in instruments}
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
    cost = {
        i.name: agents[i.kind].driver.describe().modality(i.modality).cost_s for i in instruments
    }
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
