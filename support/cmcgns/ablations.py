"""08's grid: every ablation (``global``, ``local``, ``cgns``, ``cmcgns``) pretrained on every
source of image-report pairs (the real training split, each synthetic set that carries reports)
at one budget, and what each run learned."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from support.cmcgns.config import METHODS, CMCGNSConfig, cmcgns_config
from support.core.config import config_dict


def notebook_config(profile: str, seed: int = 0, stage1_steps: int = 0, stage2_steps: int = -1,
                    text_model: str = "", image_weights: str = "", overrides: Mapping | None = None,
                    allow_stand_ins: bool = False) -> CMCGNSConfig:
    """08's base config: the profile, then ``overrides`` (nested), then the notebook's seed, budget
    (``stage1_steps`` > 0 and ``stage2_steps`` >= 0 replace the preset's) and local weights. ``full``
    refuses to stand a small BERT in for Bio_ClinicalBERT unless ``allow_stand_ins``."""
    from support.params import ParameterError

    overrides = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (overrides or {}).items()}
    if profile == "full" and not allow_stand_ins and not (text_model or overrides.get("text", {}).get("model_path")):
        raise ParameterError("08_cmcgns_pretrain: the full profile is the paper's, whose report encoder is "
                             "Bio_ClinicalBERT: set text_model to its local folder (nothing is downloaded), "
                             "or allow_stand_ins to train a small BERT in its place")
    train = {**overrides.pop("train", {}), "seed": seed}
    if stage1_steps > 0:
        train.update(max_steps=stage1_steps, epochs=None)
    if stage2_steps >= 0:
        train.update(stage2_max_steps=stage2_steps, stage2_epochs=None)
    if text_model:
        overrides.setdefault("text", {})["model_path"] = text_model
    if image_weights:
        overrides.setdefault("image", {})["init_weights"] = image_weights
    return cmcgns_config(profile, {**overrides, "train": train}, source="08_cmcgns_pretrain parameters")


def with_method(config: CMCGNSConfig, method: str) -> CMCGNSConfig:
    """``config`` as ablation ``method``; everything else, the budget included, unchanged."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {list(METHODS)}")
    return type(config)(**{**{f: getattr(config, f) for f in ("image", "text", "train")},
                           "loss": type(config.loss)(**{**config_dict(config.loss), "method": method})}).validate()


def report_sets(sets: Mapping[str, Path]) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The synthetic sets whose records carry report text (a T2I-LoRA set's prompts, XGeM's
    reports), as record tables; and the others with the reason they cannot pretrain CM-CGNS."""
    from support.data.adapters import load_dataset

    usable, skipped = {}, {}
    for name, root in sets.items():
        records, _ = load_dataset("mimic-cxr-jpg", root, reports="auto")
        text = records["findings"].fillna("").astype(str).str.strip() + records["impression"].fillna("").astype(str)
        if text.str.strip().ne("").any():
            usable[name] = records.assign(split="train")          # a synthetic set is all pretraining data
        else:
            skipped[name] = "no report text (an unconditional set: images only)"
    return usable, skipped


def run_name(method: str, source: str) -> str:
    return f"cmcgns-{method}-{source}"


def pretrain_grid(sources: Mapping[str, pd.DataFrame], methods: Sequence[str], config: CMCGNSConfig,
                  models_dir: str | os.PathLike, num_processes: int = 1) -> tuple[pd.DataFrame, dict, dict]:
    """One pretraining per (method, source) at ``config``'s budget, in ``models_dir/cmcgns-<method>-<source>``.
    Returns a summary (one row per run: pairs, sentences, each loss part at the start and end,
    seconds, encoder folder), the histories by run name, and the sources skipped with the reason:
    one whose pairs give no full batch per process is not trained (warned too)."""
    from support.cmcgns.train import ENCODER_DIR, pretrain
    from support.core.trainer import TooFewItems

    rows, histories, skipped = [], {}, {}
    for source, records in sources.items():
        for method in methods:
            name = run_name(method, source)
            out = Path(models_dir) / name
            start = time.perf_counter()
            try:
                history = pretrain(with_method(config, method), records, out, source=source,
                                   num_processes=num_processes)
            except TooFewItems as e:   # the same pairs for every method: none of them can train
                skipped[source] = str(e)
                warnings.warn(f"CM-CGNS source {source!r} skipped: {e}", stacklevel=2)
                break
            histories[name] = history
            first, last = history["stage1"], history[list(history)[-1]]
            row = {"method": method, "source": source, "pairs": first["n_pairs"], "sentences": first["n_sentences"],
                   "seconds": round(time.perf_counter() - start, 1), "encoder": str(out / ENCODER_DIR)}
            for key in first:
                if key.startswith("loss"):
                    row[f"{key} start"] = first[key][0]
            for key in last:
                if key.startswith("loss"):
                    row[f"{key} end"] = last[key][-1]
            rows.append(row)
    if sources and not rows:
        raise ValueError(f"CM-CGNS: every source is smaller than one batch: {skipped}")
    return pd.DataFrame(rows), histories, skipped


def loss_frame(histories: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """Long table of every logged loss part: run, stage, update (counted across stages), part, value."""
    rows = []
    for name, stages in histories.items():
        offset = 0
        for stage, history in stages.items():
            for key, values in history.items():
                if key.startswith("loss/"):
                    rows += [{"run": name, "stage": stage, "update": offset + s, "part": key[5:], "value": v}
                             for s, v in zip(history["step"], values)]
            offset += history["max_steps"]
    return pd.DataFrame(rows)


def plot_losses(frame: pd.DataFrame):
    """Each loss part against the update, one line per run (stage 2 continues stage 1's count)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = sns.relplot(frame, x="update", y="value", hue="run", col="part", col_wrap=3, kind="line", height=2.4,
                       aspect=1.3, facet_kws={"sharey": False})
    grid.set_titles("{col_name}")
    plt.tight_layout()
    return grid.figure
