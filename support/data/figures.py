"""Figures of a dataset: paired views with their reports, prevalence, annotations, text overlays."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from support.data.datasets import decode_mask
from support.data.images import read_image
from support.data.schema import ANATOMY_MASKS, CHEXPERT_LABELS, is_frontal, is_lateral


def paired_studies(records: pd.DataFrame, n: int, seed: int = 0) -> list[tuple[pd.Series, pd.Series | None]]:
    """Up to ``n`` studies as (frontal, lateral-or-None), studies with both views first."""
    pairs = []
    for _, group in records.groupby(["subject_id", "study_id"], sort=True):
        front = group[group["view"].map(is_frontal)]
        lat = group[group["view"].map(is_lateral)]
        if len(front):
            pairs.append((front.iloc[0], lat.iloc[0] if len(lat) else None))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    pairs.sort(key=lambda p: p[1] is None)
    return pairs[:n]


def plot_study_pairs(records: pd.DataFrame, n: int = 4, seed: int = 0, report_chars: int = 600):
    """One row per study: frontal, lateral, and the report's FINDINGS / IMPRESSION."""
    pairs = paired_studies(records, n, seed)
    if not pairs:
        raise ValueError("no study with a frontal view to show")
    fig, axes = plt.subplots(len(pairs), 3, figsize=(12, 3.6 * len(pairs)),
                             gridspec_kw={"width_ratios": [1, 1, 1.5]}, squeeze=False)
    for row, (front, lat) in zip(axes, pairs):
        row[0].imshow(read_image(front["path"]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{front['view']}  study {front['study_id']}", fontsize=9)
        if lat is not None:
            row[1].imshow(read_image(lat["path"]), cmap="gray", vmin=0, vmax=1)
            row[1].set_title(lat["view"], fontsize=9)
        else:
            row[1].text(0.5, 0.5, "no lateral", ha="center", va="center")
        text = ""
        if front.get("findings"):
            text += "FINDINGS: " + str(front["findings"]) + "\n\n"
        if front.get("impression"):
            text += "IMPRESSION: " + str(front["impression"])
        text = text[:report_chars] + ("…" if len(text) > report_chars else "")
        wrapped = "\n".join(textwrap.fill(p, 60) for p in text.split("\n"))
        row[2].text(0, 1, wrapped, va="top", ha="left", fontsize=8, family="monospace")
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
        row[2].axis("off")
    fig.tight_layout()
    return fig


def prevalence_table(records: pd.DataFrame, labels: Sequence[str] = CHEXPERT_LABELS) -> pd.DataFrame:
    """Share of studies positive for each label, per split (one row per study, frontal first)."""
    studies = records.drop_duplicates(["subject_id", "study_id"])
    rows = []
    for split, group in studies.groupby("split"):
        for label in labels:
            if label in group:
                rows.append({"split": split, "label": label, "positive": float((group[label] == 1).mean()),
                             "n_studies": len(group)})
    return pd.DataFrame(rows)


def plot_prevalence(records: pd.DataFrame, labels: Sequence[str] = CHEXPERT_LABELS):
    import seaborn as sns

    table = prevalence_table(records, labels)
    table = table[table.groupby("label")["positive"].transform("max") > 0]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(4, table["label"].nunique()) + 1))
    sns.barplot(table, y="label", x="positive", hue="split", ax=ax, orient="h")
    ax.set_xlabel("share of studies positive")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def _draw_annotations(ax, rec: pd.Series, image: np.ndarray) -> None:
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    colours = plt.get_cmap("tab10")
    names = sorted({b["label"] for b in rec["boxes"]} | {m["label"] for m in _finding_masks(rec)})
    for entry in rec["masks"]:
        mask = decode_mask(entry, (h, w))
        if entry["label"] in ANATOMY_MASKS:  # the anatomy, muted, under the findings
            ax.contour(mask, levels=[0.5], colors=["white"], linewidths=0.5, linestyles="dashed")
        else:
            ax.contour(mask, levels=[0.5], colors=[colours(names.index(entry["label"]) % 10)], linewidths=1)
    for box in rec["boxes"]:
        c = colours(names.index(box["label"]) % 10)
        x0, y0, x1, y1 = box["x0"] * w, box["y0"] * h, box["x1"] * w, box["y1"] * h
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.2))
        ax.text(x0, max(y0 - 2, 0), box["label"], color=c, fontsize=7, va="bottom")
    ax.set_title(f"{rec['view']}  {rec['image_id'][:8]}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])


def _finding_masks(rec: pd.Series) -> list[dict]:
    return [m for m in rec["masks"] if m["label"] not in ANATOMY_MASKS]


def plot_annotations(records: pd.DataFrame, n: int = 4, seed: int = 0):
    """Images with their finding boxes (rectangles) and masks (outlines), lung fields and heart
    (dashed) where the dataset has them."""
    has = records[(records["boxes"].map(len) > 0) | records.apply(lambda r: bool(_finding_masks(r)), axis=1)]
    if has.empty:
        raise ValueError("no record has boxes or masks")
    pick = has.sample(min(n, len(has)), random_state=seed)
    fig, axes = plt.subplots(1, len(pick), figsize=(3.6 * len(pick), 3.8), squeeze=False)
    for ax, (_, rec) in zip(axes[0], pick.iterrows()):
        _draw_annotations(ax, rec, read_image(rec["path"]))
    fig.tight_layout()
    return fig


def plot_text_overlays(records: pd.DataFrame, phantom_root: str | Path, n: int = 3, seed: int = 0):
    """Phantom images with burned-in text: the image, its text mask, and the clean twin."""
    root = Path(phantom_root)
    with_text = records[records["image_id"].map(lambda i: (root / "phantom" / "text_masks" / f"{i}.png").exists())]
    if with_text.empty:
        raise ValueError(f"{root}: no image has a text mask under phantom/text_masks/")
    pick = with_text.sample(min(n, len(with_text)), random_state=seed)
    fig, axes = plt.subplots(len(pick), 3, figsize=(9, 3.1 * len(pick)), squeeze=False)
    for row, (_, rec) in zip(axes, pick.iterrows()):
        image = read_image(rec["path"])
        mask = read_image(root / "phantom" / "text_masks" / f"{rec['image_id']}.png") > 0.5
        clean = read_image(root / "phantom" / "clean" / f"{rec['image_id']}.png")
        row[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"with text ({rec['view']})", fontsize=9)
        row[1].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[1].imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.7)
        row[1].set_title(f"text mask ({mask.mean():.2%} of pixels)", fontsize=9)
        row[2].imshow(clean, cmap="gray", vmin=0, vmax=1)
        row[2].set_title("clean twin", fontsize=9)
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_figure(fig, figures_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a figure as PNG under the run's figures/ (the run index shows them)."""
    from support.io import atomic_write

    path = Path(figures_dir) / f"{name}.png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path
