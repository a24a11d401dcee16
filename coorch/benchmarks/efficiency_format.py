"""Plain-text tables of ``coorch bench efficiency`` results (the JSON has every figure; these
show the ones a reader compares: the score, error per task, where the measurements went, the
interval coverage, seconds to the target, and how often co-orchestration won seed by seed).

A module of its own so that the benchmark's runs stay readable and under the size limit; it
reads result dicts only and imports nothing from the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_dataset(result: dict) -> str:
    """Replay: per policy the score (mean nRMSE over modalities), RMSE (nRMSE) per modality,
    measurements and 90 % coverage per modality; the published final errors; paired wins."""
    policies = result["policies"]
    tasks = list(next(iter(policies.values()))["final"]["rmse"])
    scale = result.get("scale", {})
    header = ["policy", "mean nRMSE"]
    header += [f"{m} RMSE (nRMSE)" for m in tasks]
    header += [f"measured {_names(tasks)}", f"90% coverage {_names(tasks)}"]
    rows = []
    for p, v in policies.items():
        f = v["final"]
        cells = [f"{f['rmse'][m]:.3f} ({f['nrmse'][m]:.3f})" for m in tasks]
        rows.append([p, f"{f['mean_nrmse']:.3f}", *cells, *_counts_and_coverage(f, tasks)])
    for model, v in result["published"].items():
        rows.append([f"published {model}", *_published(v, scale, tasks), "-", "-"])
    lines = [f"score: {result.get('score', 'final mean nRMSE')}, mean over {_seeds(policies)}"]
    lines += _table(header, rows)
    return "\n".join(lines + _paired_lines(result.get("paired")))


def _seeds(policies: dict) -> str:
    """'N seeds' when every policy ran as many, else the count per policy."""
    n = {p: len(v["final"]["seeds"]) for p, v in policies.items()}
    if len(set(n.values())) == 1:
        return f"{next(iter(n.values()))} seeds"
    return "seeds " + ", ".join(f"{p} {k}" for p, k in n.items())


def format_twins(result: dict) -> str:
    """Twins: per policy seconds to the target (median, seeds reaching it), final mean nRMSE
    and nRMSE per task, measurements and 90 % coverage per task, instrument-seconds spent;
    then the paired wins."""
    t = result["target"]
    policies = result["policies"]
    tasks = list(next(iter(policies.values()))["final"]["nrmse"])
    header = ["policy", "s to target", "reached", "final nRMSE", f"nRMSE {_names(tasks)}"]
    header += [f"measured {_names(tasks)}", f"90% coverage {_names(tasks)}", "seconds used"]
    rows = []
    for p, c in policies.items():
        tt, f = c["to_target"], c["final"]
        med = "never" if tt["median_s"] is None else f"{tt['median_s']:.0f}"
        rows.append(
            [
                p,
                med,
                f"{tt['reached']}/{tt['of']}",
                f"{f['mean_nrmse']:.3f}",
                _slash((f["nrmse"][m] for m in tasks), "{:.3f}"),
                *_counts_and_coverage(f, tasks),
                f"{c['final_seconds']:.0f}",
            ]
        )
    lines = [f"target nRMSE {t['nrmse']:.3f} ({t['definition']})", *_table(header, rows)]
    return "\n".join(lines + _paired_lines(result.get("paired")))


def _counts_and_coverage(final: dict, tasks: Sequence[str]) -> list[str]:
    cov = final.get("coverage")
    return [
        _slash((final["measured"][m] for m in tasks), "{:.1f}"),
        "-" if cov is None else _slash((cov[m] for m in tasks), "{:.2f}"),
    ]


def _published(v: Mapping[str, float], scale: Mapping[str, float], tasks: Sequence[str]) -> list:
    """A published row: mean nRMSE (when every modality has an error and a scale) and RMSE
    (nRMSE) per modality, '-' where the file has no figure."""
    cells, nrmse = [], []
    for m in tasks:
        if m not in v:
            cells.append("-")
            continue
        if m in scale:
            nrmse.append(v[m] / scale[m])
            cells.append(f"{v[m]:.3f} ({nrmse[-1]:.3f})")
        else:
            cells.append(f"{v[m]:.3f}")
    mean = f"{sum(nrmse) / len(nrmse):.3f}" if nrmse and len(nrmse) == len(tasks) else "-"
    return [mean, *cells]


def _paired_lines(paired: dict | None) -> list[str]:
    """The paired comparison as 'wins-losses of seeds' per baseline (the rest are ties), the
    mean nRMSE difference and (twins) the share of seconds saved, each with its 95 % interval;
    then (twins) the saving against the best baseline."""
    if not paired:
        return []
    rows = []
    twins = any("seconds_wins" in b for b in paired["baselines"].values())
    for name, b in paired["baselines"].items():
        row = [name, f"{b['nrmse_wins']}-{b['nrmse_losses']} of {b['of']}"]
        row.append(_interval(b.get("nrmse_difference"), "{:+.4f}"))
        if twins:
            row[1:1] = [
                f"{b['seconds_wins']}-{b['seconds_losses']} of {b['of']}",
                _interval(b.get("seconds_saving"), _PERCENT),
            ]
        rows.append(row)
    header = ["baseline"]
    header += ["s to target", "fewer seconds (95% CI)"] if twins else []
    header += ["final mean nRMSE", "nRMSE difference (95% CI)"]
    lines = [
        "",
        f"paired: {paired['reference']} against each baseline on the same seeds, "
        "wins-losses (the rest tie)",
        *_table(header, rows),
    ]
    best = paired.get("against_best")
    if best:
        lines.append(
            f"against the best baseline ({best['best']}): "
            f"{_interval(best, _PERCENT)} fewer instrument-seconds to the target "
            f"({best['seeds']} seeds, paired bootstrap)"
        )
    return lines


_PERCENT = "{:.1%}"


def _interval(v: dict | None, fmt: str) -> str:
    """'value (low to high)', 'value' without an interval, '-' without a value; an infinite
    saving (the reference never reached the target) is 'never'."""
    if not v:
        return "-"

    def one(x: float) -> str:
        return "never" if x == float("-inf") else fmt.format(x)

    if v.get("low") is None:
        return one(v["value"])
    return f"{one(v['value'])} ({one(v['low'])} to {one(v['high'])})"


def _names(tasks: Sequence[str]) -> str:
    return "/".join(tasks)


def _slash(values, fmt: str) -> str:
    return "/".join(fmt.format(v) for v in values)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell, the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return [line(r) for r in (header, *rows)]
