"""``coorch bench theory``: theory in the loop on the simulator-generated twin.

The ``smbfo-lgd`` library's PFM loops come from the LGD simulator (:mod:`coorch.lgd`) at hidden
parameters times a film-thickness term the simulator lacks; its Raman and WDS twins see the same
phase boundary. Per seed, two campaigns of the same budget on the same twins (same noise):

* **without theory**: co-orchestration as ``coorch bench efficiency`` runs it;
* **with theory**: the same, plus the co-navigation's :class:`~coorch.tasks.theory.TheoryLoop`
  (real simulations on a Dask LocalCluster, ``sims_per_measurement`` of them landing after each
  measurement, the surrogate and the parameter posterior refitted as a campaign refits them);
  the PFM map is then the theory-informed one (posterior-averaged theory plus discrepancy).

Figures: whether the final 90 % credible intervals contain the hidden parameters (per seed),
how the intervals narrow as simulations land, the PFM map's normalised RMSE against cumulative
instrument-seconds in both arms, and the instrument-seconds each needs to reach the error
target (the median over seeds of the no-theory arm's final PFM nRMSE); their ratio is the
headline.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer

from coorch.benchmarks.efficiency import seconds_to_target, twin_curve
from coorch.benchmarks.problems import Problem, twin_measure, twin_setup
from coorch.benchmarks.simulate import Settings, Trace, simulate
from coorch.deployments.dask_config import DaskConfig
from coorch.deployments.theory_config import TheoryConfig
from coorch.tasks.background import InlineExecutor
from coorch.tasks.runtime import Campaign
from coorch.tasks.theory import TheoryLoop

LIBRARY = "smbfo-lgd"
PFM = "afm"  # the twin kind whose descriptor the simulator predicts


@dataclasses.dataclass
class TheoryCompanion:
    """The theory beside a simulated campaign (:class:`coorch.benchmarks.simulate.Companion`)."""

    work: TheoryLoop
    task: int

    def settle(self, campaign: Campaign) -> None:
        self.work.settle(campaign)

    def rmse(self, problem: Problem, rmse: np.ndarray) -> np.ndarray:
        """The PFM task scored on the theory-informed map once a posterior exists."""
        models = self.work.models
        if models.posterior is None:
            return rmse
        mean, _ = models.predict(problem.query)
        out = np.array(rmse, float)
        out[self.task] = float(np.sqrt(np.mean((mean - problem.truth[:, self.task]) ** 2)))
        return out


def theory_config(sims_per_measurement: int, max_simulations: int) -> TheoryConfig:
    """The defaults a campaign gets, with the simulations' pace fixed for the benchmark."""
    return TheoryConfig(
        instrument=PFM,
        in_flight=sims_per_measurement,
        max_simulations=max_simulations,
    )


def companion(
    client, config: TheoryConfig, seed: int, keep: list
) -> Callable[..., TheoryCompanion]:
    """A factory :func:`simulate` calls with the campaign's store and agent."""

    def build(store, agent) -> TheoryCompanion:
        task = agent.instrument(PFM).tasks[0]
        loop = TheoryLoop(
            config,
            instrument=PFM,
            task=task,
            store=store,
            bounds=agent.bounds,
            client=client,
            fits=InlineExecutor(),
            campaign=f"bench-theory-{seed}",
            seed=seed,
        )
        keep.append(loop)
        return TheoryCompanion(loop, task)

    return build


def run_seed(
    client, seed: int, budget: int, config: TheoryConfig, settings: Settings, score_every: int
) -> dict:
    """Both arms on one seed's twins; the theory's posterior history and final interval."""
    out: dict = {"seed": seed}
    loops: list[TheoryLoop] = []
    for arm in ("without", "with"):
        setup = twin_setup(LIBRARY, seed)  # fresh twins: the same noise in both arms
        steps = max(budget - len(setup.problem.seeds), 0)
        t0 = time.perf_counter()
        beside = companion(client, config, seed, loops) if arm == "with" else None
        trace = simulate(
            setup.problem,
            "coorchestrate",
            seed,
            steps,
            twin_measure(setup),
            settings,
            score_every,
            companion=beside,
        )
        out[arm] = trace
        out[f"{arm}_wall_s"] = round(time.perf_counter() - t0, 1)
    loop = loops[0]
    out["history"] = loop.history
    out["posterior"] = loop.models.summary()
    out["simulations"] = dict(loop.counts)
    out["discrepancy_map"] = loop.models.discrepancy_map()
    out["disagreements"] = loop.models.disagreements()
    return out


def coverage(runs: list[dict], hidden: dict[str, float]) -> dict:
    """Per parameter: in how many seeds the final 90 % interval contains the hidden value,
    and the seeds where all parameters are covered."""
    per = {
        name: sum(r["posterior"][name]["lo"] <= v <= r["posterior"][name]["hi"] for r in runs)
        for name, v in hidden.items()
    }
    both = sum(
        all(r["posterior"][n]["lo"] <= v <= r["posterior"][n]["hi"] for n, v in hidden.items())
        for r in runs
    )
    return {"per_parameter": per, "all": both, "of": len(runs)}


def narrowing(runs: list[dict], names: list[str], at: tuple[int, ...]) -> dict:
    """Median 90 % interval width per parameter after ``at`` simulations (the first fit with
    at least that many), over seeds."""
    out: dict[str, list] = {}
    for name in names:
        row = []
        for n in at:
            widths = []
            for r in runs:
                h = next((h for h in r["history"] if h["n_simulations"] >= n), None)
                if h is not None:
                    widths.append(h[f"{name}_hi"] - h[f"{name}_lo"])
            row.append(None if not widths else round(float(np.median(widths)), 4))
        out[name] = row
    return {"simulations": list(at), "median_width": out}


def run_theory(
    seeds: int = 10,
    budget: int = 40,
    sims_per_measurement: int = 4,
    max_simulations: int = 160,
    score_every: int = 2,
    workers: int = 2,
) -> dict:
    """Both arms over ``seeds`` seeds (see the module docstring)."""
    from coorch import lgd
    from coorch.deployments.dask_cluster import dask_client

    config = theory_config(sims_per_measurement, max_simulations)
    settings = Settings()
    runs = []
    with dask_client(DaskConfig(n_workers=workers)) as client:
        for seed in range(seeds):
            runs.append(run_seed(client, seed, budget, config, settings, score_every))
            print(f"seed {seed}: {runs[-1]['posterior']}", file=sys.stderr)
    return summarise(runs, lgd.HIDDEN, budget, config)


def summarise(runs: list[dict], hidden: dict[str, float], budget: int, config) -> dict:
    setup = twin_setup(LIBRARY, 0)
    tasks = setup.problem.tasks
    scale = setup.problem.truth.std(0)
    k = tasks.index(PFM)
    curves = {}
    for arm in ("without", "with"):
        traces: list[Trace] = [r[arm] for r in runs]
        curve = twin_curve(traces, scale, tasks)
        pfm = np.array([np.asarray(t.rmse)[:, k] / scale[k] for t in traces])
        curve["per_seed_nrmse"] = pfm.round(4).tolist()  # the PFM map's, for the target
        curve["pfm_nrmse"] = pfm.mean(0).round(4).tolist()
        curves[arm] = curve
    target = float(np.median([c[-1] for c in curves["without"]["per_seed_nrmse"]]))
    for arm in curves:
        curves[arm]["to_target"] = seconds_to_target(curves[arm], target)
    a, b = (curves[arm]["to_target"]["median_s"] for arm in ("with", "without"))
    names = list(hidden)
    return {
        "library": LIBRARY,
        "budget": budget,
        "seeds": len(runs),
        "hidden": hidden,
        "theory": config.model_dump(mode="json"),
        "target": {
            "pfm_nrmse": round(target, 4),
            "definition": "median over seeds of the no-theory arm's final PFM nRMSE",
        },
        "ratio_seconds": None if not (a and b) else round(a / b, 3),
        "coverage": coverage(runs, hidden),
        "narrowing": narrowing(runs, names, (16, 32, 64, 96, 128, 160)),
        "posteriors": [r["posterior"] for r in runs],
        "simulations": [r["simulations"] for r in runs],
        "wall_s": {arm: [r[f"{arm}_wall_s"] for r in runs] for arm in ("without", "with")},
        "arms": curves,
        "histories": [r["history"] for r in runs],
        "discrepancy_map": runs[0]["discrepancy_map"],  # seed 0's
        "disagreements": runs[0]["disagreements"],
    }


def format_theory(result: dict) -> str:
    """A plain-text summary: coverage, narrowing, seconds to the PFM target, the ratio."""
    cov, t = result["coverage"], result["target"]
    lines = [
        f"hidden {result['hidden']}: 90 % intervals cover all parameters in "
        f"{cov['all']}/{cov['of']} seeds (per parameter {cov['per_parameter']})",
        "median interval width after n simulations: "
        + "; ".join(f"{n}: {w}" for n, w in result["narrowing"]["median_width"].items())
        + f" (n = {result['narrowing']['simulations']})",
        f"PFM target nRMSE {t['pfm_nrmse']:.3f} ({t['definition']})",
        f"{'arm':<10}{'final PFM nRMSE':>16}{'s to target':>13}{'reached':>9}",
    ]
    for arm, c in result["arms"].items():
        tt = c["to_target"]
        med = "never" if tt["median_s"] is None else f"{tt['median_s']:.0f}"
        lines.append(f"{arm:<10}{c['pfm_nrmse'][-1]:>16.3f}{med:>13}{tt['reached']:>6}/{tt['of']}")
    lines.append(f"instrument-seconds with / without theory: {result['ratio_seconds']}")
    return "\n".join(lines)


def bench_theory_command(
    seeds: int = typer.Option(10, min=1, help="seeds (each runs both arms)"),
    budget: int = typer.Option(40, min=8, help="measurements per campaign, seeds included"),
    sims_per_measurement: int = typer.Option(4, min=1, help="simulations landing per measurement"),
    max_simulations: int = typer.Option(160, min=16, help="simulations per campaign"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    save: Path | None = typer.Option(None, help="write the full result as JSON here"),
    plot: Path | None = typer.Option(None, help="save the figure to this PNG"),
) -> None:
    """Theory in the loop on the LGD twin: credible-interval coverage of the hidden
    parameters, their narrowing, and instrument-seconds to the PFM error target with and
    without theory (progress on stderr)."""
    result = run_theory(seeds, budget, sims_per_measurement, max_simulations)
    if save is not None:
        save.write_text(json.dumps(result))
    if plot is not None:
        from coorch.benchmarks.theory_plot import plot_theory

        print(f"figure: {plot_theory(result, plot)}", file=sys.stderr)
    print(json.dumps(result) if json_out else format_theory(result))
