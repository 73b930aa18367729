"""Figures and headline numbers of the T2I-LoRA notebook. Each plot returns a matplotlib Figure
(save it with ``support.data.figures.save_figure``); per-finding AUROC before/after is
``support.eval.plots.plot_finding_auroc(finding_rates(...), group_column="set")``."""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


def history_frame(history: Mapping[str, Any]) -> pd.DataFrame:
    """The logged training curve as a table: step, epoch, loss, lr, steps/s, images/s."""
    cols = ("step", "epoch", "loss", "lr", "steps_per_s", "images_per_s")
    missing = [c for c in cols if c not in history]
    if missing:
        raise KeyError(f"training history lacks {missing}; pass what train_lora returned or history.json")
    return pd.DataFrame({c: history[c] for c in cols})


def training_summary(history: Mapping[str, Any]) -> dict[str, Any]:
    """Headline numbers of a LoRA run for the metrics file and the run index."""
    frame = history_frame(history)
    trainable = history.get("trainable") or {}
    captions = history.get("captions") or {}
    return {
        "updates": int(frame["step"].iloc[-1]) if len(frame) else 0,
        "final_loss": float(frame["loss"].iloc[-1]) if len(frame) else math.nan,
        "steps_per_s": float(frame["steps_per_s"].median()) if len(frame) else math.nan,
        "images_per_s": float(frame["images_per_s"].median()) if len(frame) else math.nan,
        "trainable_parameters": trainable.get("unet", {}).get("trainable", 0)
        + trainable.get("text_encoder", {}).get("trainable", 0),
        "trainable_share_unet": trainable.get("unet", {}).get("share", math.nan),
        "trainable_share_pipeline": trainable.get("all", {}).get("share", math.nan),
        "captions_truncated_share": captions.get("share_truncated", math.nan),
        "resolution": history.get("resolution"),
    }


def plot_training(history: Mapping[str, Any]):
    """Loss (log scale) against update, with epoch boundaries."""
    import matplotlib.pyplot as plt

    frame = history_frame(history)
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    ax.plot(frame["step"], frame["loss"], lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("loss (log)")
    for step in frame.loc[frame["epoch"].diff().fillna(0) > 0, "step"]:
        ax.axvline(step, color="grey", lw=0.6, ls=":")
    fig.tight_layout()
    return fig


def plot_before_after(pair: Mapping[str, Any], n: int = 6, prompt_chars: int = 70):
    """The same prompts and seeds without (top) and with LoRA (bottom), prompt under each column
    and, when ``pair["titles"]`` is given (e.g. the requested finding), a title over it."""
    import matplotlib.pyplot as plt

    before, after = np.asarray(pair["before"]), np.asarray(pair["after"])
    prompts: Sequence[str] = pair.get("prompts") or [""] * len(before)
    n = min(n, len(before))
    if n < 1:
        raise ValueError("plot_before_after: no images")
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 5.2), squeeze=False)
    for j in range(n):
        for i, (images, name) in enumerate(((before, "base"), (after, "base + LoRA"))):
            ax = axes[i, j]
            ax.imshow(images[j], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
        if pair.get("titles") is not None:
            axes[0, j].set_title(str(pair["titles"][j]), fontsize=8)
        text = str(prompts[j]).replace("view_position = ", "").replace(" modality = CR.", "")
        axes[1, j].set_xlabel("\n".join(textwrap.wrap(text[:prompt_chars], 24)), fontsize=7)
    fig.tight_layout()
    return fig


def plot_finding_rates(rates: pd.DataFrame):
    """How often the reference classifier finds each finding where it was requested (left panel)
    and where it was not (right panel), one bar per image set (before / after LoRA)."""
    import seaborn as sns

    need = ["set", "finding", "positive_rate_requested", "positive_rate_not_requested"]
    missing = [c for c in need if c not in rates.columns]
    if missing:
        raise KeyError(f"plot_finding_rates: columns {missing} missing; pass what finding_rates returned")
    long = rates.melt(id_vars=["set", "finding"], value_vars=need[2:], var_name="where", value_name="rate")
    long["where"] = long["where"].map({"positive_rate_requested": "requested",
                                       "positive_rate_not_requested": "not requested"})
    grid = sns.catplot(long, x="finding", y="rate", hue="set", col="where", kind="bar",
                       height=3.0, aspect=1.2, sharey=True)
    grid.set(ylim=(0, 1), ylabel="share found (score > 0.5)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=20)
    grid.figure.tight_layout()
    return grid.figure
