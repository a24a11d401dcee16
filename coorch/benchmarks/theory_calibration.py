"""Calibration check of the theory models: coverage, interval width against simulations, cost.

The models of :mod:`coorch.models.theory_posterior` are only useful if their 90 % intervals
contain the truth about 90 % of the time and narrow as simulations land. This script measures
both, on two problems with a known answer:

* ``standin``: the LGD-shaped stand-in of ``tests/theory_synthetic.py`` (same formula and
  library), with a discrepancy of +-30 % along library y;
* ``lgd``: the LGD simulator itself (:mod:`coorch.lgd`): the experiment is its loop at
  :data:`coorch.lgd.HIDDEN` times a clamping factor ``1 + 0.08 (y - 1)`` (the ``smbfo-lgd``
  twin library's), with the AFM twin's loop noise (3 % gain, 1.5 pm/V), reduced by
  :func:`coorch.models.descriptors.loop_opening` as the campaign reduces measured loops.

Per seed: 15 observations stratified along the library; a Sobol design of the largest
simulation count, whose prefixes give the smaller counts (a scrambled Sobol prefix is itself
space-filling); the surrogate and the posterior at each count; and one co-navigation arm, which
after the first 20 Sobol simulations adds batches of 10 chosen by
:func:`~coorch.models.theory_design.next_simulations`. Run it as
``python -m coorch.benchmarks.theory_calibration --out DIR``; JSON and PNG go to ``DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer

from coorch.models.theory_design import initial_design, next_simulations
from coorch.models.theory_posterior import ParameterPosterior, infer_parameters
from coorch.models.theory_space import ParameterSpace
from coorch.models.theory_surrogate import TheorySurrogate

BOUNDS_MM = np.array([[0.0, 10.0], [0.0, 2.0]])
S_RANGE = (0.0, 0.2)
N_OBS = 15
SIMS = (20, 40, 80, 160)
NAVIGATE = (20, 10, 6)  # co-navigation arm: Sobol start, batch size, batches


@dataclasses.dataclass(frozen=True)
class Problem:
    """A calibration problem with a known answer."""

    name: str
    space: ParameterSpace
    hidden: np.ndarray  # (k,)
    simulate: Callable[[np.ndarray], np.ndarray]  # rows (n, 1+k) -> descriptors (n,)
    experiment: Callable[[np.ndarray, np.random.Generator], np.ndarray]  # x (n, 2) -> y (n,)
    truth: Callable[[np.ndarray], np.ndarray]  # x (n, 2) -> noise-free descriptor (n,)


def composition(x_mm: np.ndarray) -> np.ndarray:
    """The library's nominal Sm fraction along x."""
    return S_RANGE[0] + (S_RANGE[1] - S_RANGE[0]) * x_mm / BOUNDS_MM[0, 1]


def standin() -> Problem:
    """The stand-in of ``tests/theory_synthetic.py``."""
    space = ParameterSpace(("s_c", "depol"), np.array([[0.08, 0.20], [0.0, 0.6]]))
    hidden = np.array([0.135, 0.25])

    def eta(s: np.ndarray, theta: np.ndarray) -> np.ndarray:
        amp = 4000.0 * (1.0 - 0.9 * theta[:, 1]) / (1.0 + theta[:, 1])
        return amp * np.maximum(theta[:, 0] - s, 0.0) ** 2

    def truth(x: np.ndarray) -> np.ndarray:
        clean = eta(composition(x[:, 0]), np.broadcast_to(hidden, (len(x), 2)))
        return clean * (1.0 + 0.3 * (x[:, 1] - 1.0))

    def experiment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return truth(x) + rng.normal(0.0, 1.0, len(x))

    simulate = lambda d: eta(d[:, 0], d[:, 1:])  # noqa: E731
    return Problem("standin", space, hidden, simulate, experiment, truth)


def lgd_problem() -> Problem:
    """The LGD simulator, its hidden parameters and the smbfo-lgd twin's clamping and noise."""
    from coorch import lgd
    from coorch.models.descriptors import loop_opening
    from coorch.records import Signal

    space = ParameterSpace.from_lgd()
    hidden = np.array([lgd.HIDDEN[name] for name in space.names])
    bias = lgd.default_bias()

    def opening(loops: np.ndarray) -> np.ndarray:
        coords = {"branch": ["forward", "reverse"], "bias": bias.tolist()}
        return np.array(
            [
                loop_opening(Signal.from_array("pfm_loop", ["branch", "bias"], lp, coords=coords))[
                    0
                ]
                for lp in loops
            ]
        )

    def simulate(rows: np.ndarray) -> np.ndarray:
        return opening(lgd.simulate_many(rows[:, 0], rows[:, 1:], bias))

    def loops(x: np.ndarray) -> np.ndarray:
        theta = np.broadcast_to(hidden, (len(x), len(hidden)))
        clean = lgd.simulate_many(composition(x[:, 0]), theta, bias)
        return clean * (1.0 + 0.08 * (x[:, 1] - 1.0))[:, None, None]

    def experiment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        clean = loops(x)
        gain = 1.0 + rng.normal(0.0, 0.03, (len(x), 1, 1))
        noise = rng.normal(0.0, 1.5, clean.shape) * (1.0 + 0.02 * np.abs(clean))
        return opening(gain * clean + noise)

    return Problem("lgd", space, hidden, simulate, experiment, lambda x: opening(loops(x)))


def observe(problem: Problem, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``N_OBS`` observations stratified along x, uniform along y."""
    u = (np.arange(N_OBS) + rng.uniform(size=N_OBS)) / N_OBS
    x = np.column_stack([BOUNDS_MM[0, 1] * u, rng.uniform(*BOUNDS_MM[1], size=N_OBS)])
    return x, composition(x[:, 0]), problem.experiment(x, rng)


def _record(problem: Problem, post: ParameterPosterior, **extra) -> dict:
    ci = post.interval(0.9)
    inside = (ci[:, 0] <= problem.hidden) & (problem.hidden <= ci[:, 1])
    return {
        **extra,
        "mean": post.mean().tolist(),
        "lo": ci[:, 0].tolist(),
        "hi": ci[:, 1].tolist(),
        "covered": inside.tolist(),
        "ess": post.effective_samples,
    }


def _calibrate(problem: Problem, rows: np.ndarray, y: np.ndarray, obs: tuple, seed: int):
    t0 = time.perf_counter()
    sur = TheorySurrogate.fit(rows[:, 0], rows[:, 1:], y, problem.space, S_RANGE, seed=seed)
    t1 = time.perf_counter()
    post = infer_parameters(sur, *obs, bounds_mm=BOUNDS_MM, seed=seed)
    return sur, post, {"fit_s": t1 - t0, "infer_s": time.perf_counter() - t1}


def one_seed(problem: Problem, seed: int) -> list[dict]:
    """Sobol prefixes of every size in ``SIMS``, then the co-navigation arm."""
    rng = np.random.default_rng(seed)
    obs = observe(problem, rng)
    design = initial_design(problem.space, S_RANGE, max(SIMS), seed)
    y = problem.simulate(design)
    out = []
    for n in SIMS:
        _, post, times = _calibrate(problem, design[:n], y[:n], obs, seed)
        out.append(_record(problem, post, seed=seed, arm="sobol", n_sim=n, **times))
    start, batch, rounds = NAVIGATE
    rows, ys = design[:start], y[:start]
    grid = np.linspace(*S_RANGE, 101)
    for _ in range(rounds + 1):
        sur, post, times = _calibrate(problem, rows, ys, obs, seed)
        out.append(_record(problem, post, seed=seed, arm="navigate", n_sim=len(rows), **times))
        new = next_simulations(sur, post, grid, batch, rng=rng)
        rows, ys = np.vstack([rows, new]), np.concatenate([ys, problem.simulate(new)])
    return out


def timings(problem: Problem) -> dict:
    """Fit at n = 100 and 300 simulations; infer at 50 and 100 observations (300 sims)."""
    design = initial_design(problem.space, S_RANGE, 300, 7)
    y = problem.simulate(design)
    out: dict[str, float] = {}
    for n in (100, 300):
        t = time.perf_counter()
        sur = TheorySurrogate.fit(design[:n, 0], design[:n, 1:], y[:n], problem.space, S_RANGE)
        out[f"fit_n{n}_s"] = time.perf_counter() - t
    rng = np.random.default_rng(7)
    for m in (50, 100):
        x = np.column_stack([rng.uniform(*BOUNDS_MM[0], m), rng.uniform(*BOUNDS_MM[1], m)])
        yo = problem.experiment(x, rng)
        infer_parameters(sur, x, composition(x[:, 0]), yo, bounds_mm=BOUNDS_MM)  # warm
        t = time.perf_counter()
        infer_parameters(sur, x, composition(x[:, 0]), yo, bounds_mm=BOUNDS_MM)
        out[f"infer_nobs{m}_nsim300_s"] = time.perf_counter() - t
    return out


def summarise(records: list[dict]) -> dict:
    """Per arm and simulation count: coverage per parameter, median interval width."""
    table: dict[str, dict] = {}
    for arm in ("sobol", "navigate"):
        for n in sorted({r["n_sim"] for r in records if r["arm"] == arm}):
            rs = [r for r in records if r["arm"] == arm and r["n_sim"] == n]
            width = np.array([np.subtract(r["hi"], r["lo"]) for r in rs])
            table[f"{arm}/{n}"] = {
                "seeds": len(rs),
                "coverage": np.mean([r["covered"] for r in rs], axis=0).tolist(),
                "joint_coverage": float(np.mean([all(r["covered"]) for r in rs])),
                "median_width": np.median(width, axis=0).tolist(),
                "median_ess": float(np.median([r["ess"] for r in rs])),
                "median_infer_s": float(np.median([r["infer_s"] for r in rs])),
            }
    return table


def plot(problem: Problem, records: list[dict], path: Path) -> None:
    """Per parameter: every seed's 90 % interval against simulations (Sobol arm, hidden value
    dashed), and the median width against simulations for both arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = problem.space.k
    fig, axes = plt.subplots(2, k, figsize=(5 * k, 7), squeeze=False)
    seeds = sorted({r["seed"] for r in records})
    for i, name in enumerate(problem.space.names):
        ax = axes[0, i]
        for r in (r for r in records if r["arm"] == "sobol"):
            off = (seeds.index(r["seed"]) - len(seeds) / 2) * 0.012
            x = r["n_sim"] * (1 + off)
            color = "C0" if r["covered"][i] else "C3"
            ax.plot([x, x], [r["lo"][i], r["hi"][i]], color=color, lw=1.2)
            ax.plot(x, r["mean"][i], ".", color=color, ms=3)
        ax.axhline(problem.hidden[i], ls="--", color="k", lw=1)
        ax.set(xscale="log", xlabel="simulations (Sobol)", ylabel=name)
        ax.set_title(f"{problem.name}: {name}, 90 % intervals (red: missed)")
        ax = axes[1, i]
        for arm, color in (("sobol", "C0"), ("navigate", "C1")):
            ns = sorted({r["n_sim"] for r in records if r["arm"] == arm})
            med = [
                np.median(
                    [
                        r["hi"][i] - r["lo"][i]
                        for r in records
                        if r["arm"] == arm and r["n_sim"] == n
                    ]
                )
                for n in ns
            ]
            ax.plot(ns, med, "o-", color=color, label=arm)
        ax.set(xscale="log", xlabel="simulations", ylabel=f"median width of {name}'s interval")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_maps(problem: Problem, seed: int, n_sim: int, path: Path) -> dict:
    """Seed ``seed`` at ``n_sim`` Sobol simulations: the truth over the library, the
    theory-informed map (:meth:`ParameterPosterior.predict`), the theory alone at the posterior
    mean, and the fitted discrepancy; returns the maps' RMSE against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = observe(problem, np.random.default_rng(seed))
    design = initial_design(problem.space, S_RANGE, n_sim, seed)
    sur, post, _ = _calibrate(problem, design, problem.simulate(design), obs, seed)
    gx, gy = np.meshgrid(np.linspace(*BOUNDS_MM[0], 41), np.linspace(*BOUNDS_MM[1], 9))
    x = np.column_stack([gx.ravel(), gy.ravel()])
    s = composition(x[:, 0])
    truth = problem.truth(x)
    mean, var = post.predict(x, s)
    theory, _ = sur.predict(s, np.broadcast_to(post.mean(), (len(s), problem.space.k)))
    delta, _ = post.discrepancy(x)
    panels = {
        "truth": truth,
        "theory-informed map (predict)": mean,
        "theory alone at the posterior mean": theory,
        "discrepancy (posterior mean)": delta,
    }
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=True)
    lim = (min(truth.min(), mean.min()), max(truth.max(), mean.max()))
    for ax, (title, values) in zip(axes, panels.items(), strict=True):
        vmin, vmax = lim if "discrepancy" not in title else (values.min(), values.max())
        im = ax.pcolormesh(gx, gy, values.reshape(gx.shape), vmin=vmin, vmax=vmax, shading="auto")
        ax.plot(obs[0][:, 0], obs[0][:, 1], "k.", ms=4)
        ax.set(ylabel="y (mm)", title=title)
        fig.colorbar(im, ax=ax)
    axes[-1].set_xlabel("x (mm)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    def rmse(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - truth) ** 2)))

    z2 = float(np.mean((mean - truth) ** 2 / var))
    return {"rmse_predict": rmse(mean), "rmse_theory_alone": rmse(theory), "mean_z2": z2}


def bench_theory_calibration_command(
    out: Path = typer.Option(Path("theory-calibration"), help="folder for JSON and PNG"),
    seeds: int = typer.Option(10, min=1, help="seeds per problem"),
    problems: list[str] = typer.Option(["standin", "lgd"], help="standin and/or lgd"),
) -> None:
    """Coverage and width of the parameter posterior's 90 % intervals over seeds."""
    out.mkdir(parents=True, exist_ok=True)
    makers = {"standin": standin, "lgd": lgd_problem}
    for name in problems:
        problem = makers[name]()
        records = [r for seed in range(seeds) for r in one_seed(problem, seed)]
        result = {
            "problem": name,
            "hidden": problem.hidden.tolist(),
            "names": list(problem.space.names),
            "summary": summarise(records),
            "timings": timings(problem),
            "maps_seed0_80sims": plot_maps(problem, 0, 80, out / f"{name}-maps.png"),
            "records": records,
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        plot(problem, records, out / f"{name}.png")
        typer.echo(json.dumps({"problem": name, **result["summary"], **result["timings"]}))


if __name__ == "__main__":
    typer.run(bench_theory_calibration_command)
