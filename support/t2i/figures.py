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


def plot_same_seeds(sets: Mapping[str, Any], prompts: Sequence[str] | None = None,
                    titles: Sequence[str] | None = None, n: int = 6, prompt_chars: int = 70):
    """One row per model (``sets``: name -> images), the same prompt and seed in each column;
    the prompt under the column and, when ``titles`` is given (the requested finding), over it."""
    import matplotlib.pyplot as plt

    rows = {name: np.asarray(images) for name, images in sets.items()}
    if not rows:
        raise ValueError("plot_same_seeds: no image sets")
    n = min([n] + [len(images) for images in rows.values()])
    if n < 1:
        raise ValueError("plot_same_seeds: no images")
    prompts = list(prompts) if prompts is not None else [""] * n
    fig, axes = plt.subplots(len(rows), n, figsize=(2.0 * n, 2.6 * len(rows)), squeeze=False)
    for j in range(n):
        for i, (name, images) in enumerate(rows.items()):
            ax = axes[i, j]
            ax.imshow(images[j], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
        if titles is not None:
            axes[0, j].set_title(str(titles[j]), fontsize=8)
        text = str(prompts[j]).replace("view_position = ", "").replace(" modality = CR.", "")
        axes[-1, j].set_xlabel("\n".join(textwrap.wrap(text[:prompt_chars], 24)), fontsize=7)
    fig.tight_layout()
    return fig


def plot_before_after(pair: Mapping[str, Any], n: int = 6, prompt_chars: int = 70):
    """The same prompts and seeds without (top) and with LoRA (bottom): :func:`plot_same_seeds`."""
    return plot_same_seeds({"base": pair["before"], "base + LoRA": pair["after"]}, pair.get("prompts"),
                           pair.get("titles"), n, prompt_chars)


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


def method_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """LoRA beside a full fine-tune (:func:`training_summary` of each): trainable parameters and
    their share, speed, and each method's speed relative to the first."""
    cols = ("trainable_parameters", "trainable_share_unet", "updates", "steps_per_s", "images_per_s", "final_loss")
    frame = pd.DataFrame([{"method": name, **{c: s.get(c, math.nan) for c in cols}} for name, s in summaries.items()])
    if len(frame):
        frame["speed_vs_first"] = frame["images_per_s"] / frame["images_per_s"].iloc[0]
    return frame


def plot_domains(records: pd.DataFrame, base_config, n: int = 4):
    """The first ``n`` training images as the base model was pretrained on them (its source
    domain, top) and as LoRA sees them (the target, bottom)."""
    from support.t2i.data import CaptionedImages

    kwargs = dict(views=base_config.views, splits=("train",), random_crop=False)
    source = CaptionedImages(records, base_config.resolution, domain=base_config.domain, **kwargs)
    target = CaptionedImages(records, base_config.resolution, **kwargs)
    n = min(n, len(target))
    to_unit = lambda item: (item["pixel_values"][0].numpy() + 1.0) / 2.0   # noqa: E731
    return plot_same_seeds({"source (base pretraining)": [to_unit(source[i]) for i in range(n)],
                            "target (LoRA)": [to_unit(target[i]) for i in range(n)]},
                           [source.captions[i] for i in range(n)], n=n)
