"""The figure of ``coorch bench theory``: the posterior narrowing, the PFM map error with and
without theory, and the discrepancy map."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_theory(result: dict, path: Path) -> Path:
    """Three rows of panels: each parameter's mean and 90 % interval against simulations
    landed (every seed, hidden value dashed); PFM nRMSE against instrument-seconds (seed
    means, target dotted); seed 0's discrepancy (experiment minus theory) over the library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["hidden"])
    fig, axes = plt.subplots(1, len(names) + 2, figsize=(5 * (len(names) + 2), 4))
    for ax, name in zip(axes, names, strict=False):
        for h in result["histories"]:
            n = [r["n_simulations"] for r in h]
            ax.fill_between(
                n,
                [r[f"{name}_lo"] for r in h],
                [r[f"{name}_hi"] for r in h],
                alpha=0.08,
                color="C0",
            )
            ax.plot(n, [r[f"{name}_mean"] for r in h], color="C0", lw=0.8)
        ax.axhline(result["hidden"][name], ls="--", color="k", lw=1, label="hidden")
        ax.set(xlabel="simulations landed", ylabel=name, title=f"{name}: mean, 90 % interval")
        ax.legend(loc="upper right")
    ax = axes[len(names)]
    for arm, c in result["arms"].items():
        ax.plot(c["seconds"], c["pfm_nrmse"], marker=".", label=f"{arm} theory")
    ax.axhline(result["target"]["pfm_nrmse"], ls=":", color="k", label="target")
    ax.set(
        xlabel="instrument-seconds (all instruments)",
        ylabel="PFM map nRMSE",
        yscale="log",
        title="PFM map error (seed mean)",
    )
    ax.legend()
    ax = axes[-1]
    m = result["discrepancy_map"]
    if m:
        x, y, d = (np.asarray(m[k]) for k in ("x_mm", "y_mm", "mean"))
        sc = ax.scatter(
            x, y, c=d, cmap="RdBu_r", s=60, marker="s", vmin=-np.abs(d).max(), vmax=np.abs(d).max()
        )
        fig.colorbar(sc, ax=ax, label="experiment - theory (pm/V x V)")
    ax.set(xlabel="library x (mm)", ylabel="library y (mm)", title="discrepancy (seed 0)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
