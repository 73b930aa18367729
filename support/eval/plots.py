"""Figures of the evaluation notebook: fidelity bars per set, per-finding AUROC with intervals,
utility curves against the fraction of real labels. Each function returns a matplotlib Figure."""

from __future__ import annotations

from typing import Sequence

import numpy as np

PRDC = ("precision", "recall", "density", "coverage")


def _require(df, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: table lacks column(s) {missing}; has {list(df.columns)}")


def plot_precision_recall(table, set_column: str = "set", metrics: Sequence[str] = PRDC):
    """Grouped bars of precision/recall/density/coverage, one group per synthetic set.

    ``table``: one row per set (e.g. the rows of ``evaluate_set``) with ``set_column`` and the metrics.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    _require(table, [set_column, *metrics], "plot_precision_recall")
    long = table.melt(id_vars=[set_column], value_vars=list(metrics), var_name="metric", value_name="value")
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * table[set_column].nunique(), 3.4))
    sns.barplot(data=long, x=set_column, y="value", hue="metric", ax=ax)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")  # density can exceed 1; the rest cannot
    ax.set_xlabel("")
    ax.set_ylabel("value (k = 5)")
    ax.legend(title="", fontsize=8, ncols=len(metrics), loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.tight_layout()
    return fig


def plot_finding_auroc(table, group_column: str | None = None, title: str = "per-finding AUROC"):
    """Points with 95 % interval bars per finding; one colour per group (set or regime) if given.

    ``table`` columns: ``finding``, ``auroc``, and optionally ``ci_low``/``ci_high``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    _require(table, ["finding", "auroc"], "plot_finding_auroc")
    findings = list(dict.fromkeys(table["finding"]))
    groups = list(dict.fromkeys(table[group_column])) if group_column else [None]
    colours = sns.color_palette(n_colors=len(groups))
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(findings) * max(1, len(groups)) ** 0.5 + 1.2))
    offsets = np.linspace(-0.25, 0.25, len(groups)) if len(groups) > 1 else [0.0]
    for g, off, colour in zip(groups, offsets, colours):
        sub = table if g is None else table[table[group_column] == g]
        y = np.array([findings.index(f) for f in sub["finding"]]) + off
        x = sub["auroc"].to_numpy(dtype=float)
        if {"ci_low", "ci_high"} <= set(sub.columns):
            err = np.vstack([x - sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float) - x])
            ax.errorbar(x, y, xerr=np.nan_to_num(err), fmt="o", color=colour, capsize=3, label=g)
        else:
            ax.plot(x, y, "o", color=colour, label=g)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(findings)), findings)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC (95 % CI)")
    ax.set_title(title, fontsize=10)
    if group_column:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def plot_utility_curves(table, findings: Sequence[str] | None = None, ncols: int = 3):
    """AUROC against the fraction of real labels (log scale), one line per regime with its 95 %
    band, one panel per finding. ``table``: the DataFrame of ``utility_study``, or of
    ``utility_studies`` (each synthetic regime then named with its set when there are several)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    _require(table, ["regime", "fraction", "finding", "auroc", "ci_low", "ci_high"], "plot_utility_curves")
    table = table[np.isfinite(table["auroc"].to_numpy(dtype=float))]  # findings absent from the test split
    if table.empty:
        raise ValueError("plot_utility_curves: no finite AUROC to plot (no finding has both classes in the test split)")
    if "set" in table and table["set"].replace("", np.nan).nunique() > 1:   # several sets: each line names its set
        table = table.assign(regime=[f"{r} · {s}" if s else r for r, s in zip(table["regime"], table["set"])])
    findings = [f for f in (findings or dict.fromkeys(table["finding"])) if f in set(table["finding"])]
    x_all = table["fraction"].to_numpy(dtype=float) * 100
    regimes = list(dict.fromkeys(table["regime"]))
    colours = dict(zip(regimes, sns.color_palette(n_colors=len(regimes))))
    ncols = min(ncols, len(findings))
    nrows = int(np.ceil(len(findings) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False, sharey=True)
    for ax, finding in zip(axes.flat, findings):
        for regime in regimes:
            sub = table[(table["finding"] == finding) & (table["regime"] == regime)].sort_values("fraction")
            if sub.empty:
                continue
            x = sub["fraction"].to_numpy(dtype=float) * 100
            ax.plot(x, sub["auroc"], "o-", color=colours[regime], label=regime)
            ax.fill_between(x, sub["ci_low"], sub["ci_high"], color=colours[regime], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_xlim(x_all.min() / 1.5, x_all.max() * 1.5)  # panels share one axis even when a line is missing
        ax.set_title(finding, fontsize=9)
        ax.set_xlabel("% of real labels")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    for ax in list(axes.flat)[len(findings):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("AUROC (95 % CI)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncols=len(regimes), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout()
    return fig
