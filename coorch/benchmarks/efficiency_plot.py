"""The learning curves of ``coorch bench efficiency`` as one PNG (``--plot``).

Presentation only, beside the tables of :mod:`coorch.benchmarks.efficiency_format`: it reads
the result dicts of :mod:`coorch.benchmarks.efficiency` and computes nothing. matplotlib is
imported when a plot is asked for, not when the benchmark is.
"""

from __future__ import annotations

from pathlib import Path


def plot_curves(result: dict, path: Path) -> Path:
    """Save the learning curves of
    :func:`~coorch.benchmarks.efficiency.run_dataset` (RMSE per modality vs measurements, the
    published final errors as dashed lines) or of :func:`~coorch.benchmarks.efficiency.run_twins`
    (mean nRMSE vs measurements and vs instrument-seconds, the target dotted) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    twins = "target" in result
    tasks = ["mean"] if twins else list(next(iter(result["policies"].values()))["final"]["rmse"])
    fig, axes = plt.subplots(1, 2 if twins else len(tasks), figsize=(12, 4.5), squeeze=False)
    if twins:
        _plot_twins(result, axes[0])
    else:
        _plot_dataset(result, axes[0], tasks)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_dataset(result: dict, axes, tasks: list[str]) -> None:
    for ax, m in zip(axes, tasks, strict=True):
        for p, c in result["curves"].items():
            ax.plot(c["measurements"], c["rmse"][m], label=p)
        for k, (model, style) in enumerate((("mtgp", "--"), ("gp", ":"))):
            if m in result["published"].get(model, {}):
                ax.axhline(
                    result["published"][model][m],
                    ls=style,
                    color=f"C{7 + k}",
                    label=f"published {model} (final)",
                )
        ax.set(
            title=f"{m}: RMSE vs measurements",
            xlabel="measurements (seeds included)",
            ylabel="RMSE (latent units)",
        )
        ax.legend(fontsize=8)


def _plot_twins(result: dict, axes) -> None:
    for p, c in result["policies"].items():
        axes[0].plot(c["measurements"], c["mean_nrmse"], label=p)
        axes[1].plot(c["seconds"], c["mean_nrmse"], label=p)
    for ax, xlabel in zip(
        axes, ("measurements (seeds included)", "instrument-seconds"), strict=True
    ):
        ax.axhline(result["target"]["nrmse"], ls=":", color="k", label="target")
        ax.set(
            title=f"{result['library']}: mean nRMSE vs {xlabel.split(' (')[0]}",
            xlabel=xlabel,
            ylabel="normalised RMSE (mean over tasks)",
            yscale="log",
        )
        ax.legend(fontsize=8)
