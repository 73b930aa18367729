"""09's judgement: every CM-CGNS encoder 08 exported, beside a random start of the same network and
the reference encoder, on the downstream suite (:mod:`support.downstream.suite`, the MGCA protocol:
encoder frozen, 1/10/100 % of the labels); and each ablation's gain over ``global``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from support.downstream.suite import HEADLINE

PREFIX = "cmcgns-"


def pretrained_encoders(models_dir: str | os.PathLike, names: Sequence[str] = ()) -> dict[str, torch.nn.Module]:
    """The encoders under ``models_dir/cmcgns-*/encoder``, keyed ``"<method>|<source>"`` (08's
    runs), in method order then source; ``names`` picks some of them."""
    from support.cmcgns.config import METHODS
    from support.downstream.encoders import load_encoder_folder

    found = {}
    for folder in sorted(Path(models_dir).glob(f"{PREFIX}*/encoder")):
        if not (folder / "encoder.json").is_file():
            continue
        encoder = load_encoder_folder(folder)
        method = str(encoder.info.get("method", "")).removeprefix("cmcgns:")
        found[f"{method}|{encoder.info.get('source', folder.parent.name)}"] = encoder
    if names:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise ValueError(f"encoders {unknown}: not among 08's runs in {models_dir} ({sorted(found)})")
        found = {k: v for k, v in found.items() if k in names}
    order = {m: i for i, m in enumerate(METHODS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0].split("|")[0], 99), kv[0])))


def random_start(encoder: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same network as ``encoder`` (its ``encoder.json``) at a seeded random start: what
    pretraining is measured against."""
    from support.downstream import build_encoder

    torch.manual_seed(seed)
    return build_encoder(encoder.info["encoder"], encoder.info["config"]).eval()


def gains(long: pd.DataFrame, baseline: str = "global") -> pd.DataFrame:
    """Each ablation's headline metric minus ``baseline``'s on the same source, task, protocol and
    fraction (rows: ablation|source; columns: task x fraction); NaN where either is not scored."""
    picked = long[long["metric"] == long["task"].map(HEADLINE)]
    picked = picked[picked["source"].str.contains("|", regex=False)]
    split = picked["source"].str.split("|", n=1, expand=True)
    picked = picked.assign(method=split[0], pretraining=split[1])
    base = picked[picked["method"] == baseline].set_index(["pretraining", "task", "protocol", "fraction"])["value"]
    others = picked[picked["method"] != baseline]
    delta = others["value"].to_numpy() - base.reindex(
        pd.MultiIndex.from_frame(others[["pretraining", "task", "protocol", "fraction"]])).to_numpy()
    table = others.assign(gain=delta).pivot_table(index="source", columns=["task", "fraction"], values="gain",
                                                  aggfunc="first", dropna=False)
    judged = set(zip(others["task"], others["fraction"]))      # not the task x fraction pairs never run
    table = table[[c for c in table.columns if c in judged]]
    return table.reindex(index=list(dict.fromkeys(others["source"])))
