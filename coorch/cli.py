"""The ``coorch`` command line: demo, instrument agents, the store, benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import typer

app = typer.Typer(
    help="Co-orchestration of characterisation instruments.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    facility: Path = typer.Option(
        Path("runs/facility"),
        envvar="COORCH_FACILITY",
        help="a facility started by `coorch up`: its Prefect server is used when "
        "PREFECT_API_URL is not set",
    ),
) -> None:
    """Co-orchestration of characterisation instruments."""
    info = facility / "facility.json"
    if "PREFECT_API_URL" not in os.environ and info.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.environ["PREFECT_API_URL"] = json.loads(info.read_text())["prefect_api_url"]


bench_app = typer.Typer(help="Benchmarks (figures go to docs/benchmarks.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def demo(
    run_dir: Path = typer.Option(
        Path("runs/demo"), help="where the store, report and Prefect state go"
    ),
    budget: int = typer.Option(40, min=12, help="measurements per campaign, seeds included"),
    seed: int = typer.Option(0, help="seed of the twins and the policies"),
    facility: Path | None = typer.Option(
        None,
        "--against",
        help="run on the facility of `coorch up` in this folder (its twins, Dask, Prefect "
        "server: the runs stay in its UI) instead of starting the demo's own",
    ),
) -> None:
    """Run a co-orchestrated PFM + Raman + WDS + STEM campaign on digital twins, then the same
    budget at random positions, and report both against the ground truth."""
    from coorch.demo import run_demo

    run_demo(run_dir, budget=budget, seed=seed, facility=facility)


@app.command()
def run(
    spec_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="campaign spec, YAML or JSON (a CampaignSpec)"
    ),
) -> None:
    """Run, or resume from its store, the campaign in SPEC_FILE against running agents.

    Uses the Prefect server named by PREFECT_API_URL (Prefect's local ephemeral server when
    unset). Safe to re-run after a crash: the store says what is done.
    """
    import yaml

    from coorch.deployments.config import CampaignSpec

    spec = CampaignSpec(**yaml.safe_load(spec_file.read_text()))
    from coorch.flows.coorchestrate import coorchestrate

    result = coorchestrate(spec)
    typer.echo(f"{spec.name}: {result.n_measurements} measurements in {result.store}")


def _mount() -> None:
    """Sub-commands owned by the layers and the benchmarks."""
    from coorch.benchmarks.decision import bench_decision_command
    from coorch.benchmarks.efficiency import bench_efficiency_command
    from coorch.benchmarks.ingest import bench_ingest_command
    from coorch.benchmarks.overhead import bench_overhead_command
    from coorch.benchmarks.pareto import bench_pareto_command
    from coorch.facility_cli import down_command, up_command
    from coorch.im2spec_cli import im2spec_command
    from coorch.instrument_agents.cli import agent_app
    from coorch.report_cli import report_command
    from coorch.steer_cli import steer_app
    from coorch.storage.cli import store_app

    app.add_typer(agent_app, name="agent", help="Instrument agents (serve a twin or replay).")
    app.add_typer(store_app, name="store", help="Inspect, verify and export stores.")
    app.add_typer(steer_app, name="steer", help="Review and redirect running campaigns.")
    app.command("im2spec")(im2spec_command)
    app.command("report")(report_command)
    app.command("up")(up_command)
    app.command("down")(down_command)
    bench_app.command("decision")(bench_decision_command)
    bench_app.command("efficiency")(bench_efficiency_command)
    bench_app.command("overhead")(bench_overhead_command)
    bench_app.command("pareto")(bench_pareto_command)
    bench_app.command("ingest")(bench_ingest_command)


_mount()

if __name__ == "__main__":
    app()
