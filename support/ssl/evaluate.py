"""I-SynMed's comparison: the same DINO pretraining on each source (synthetic sets, the real training
split, nothing at all), every encoder then judged on the same real tasks by
:func:`support.downstream.suite.judge` (07 judges pneumonia, findings, lung-field and pneumothorax
segmentation: the table I-SynMed implies, rows = pretraining source, columns = task x fraction).
"""

from __future__ import annotations

import warnings
from typing import Mapping

import torch


def pretrain(sources: Mapping[str, object], config, models_dir,
             num_processes: int = 1) -> tuple[dict[str, object], dict[str, str]]:
    """One DINO run per source under the same ``config`` (the same number of updates for every
    source), its teacher backbone returned; a source of None is the starting network without
    pretraining (initialised at ``config.train.seed``, or ``config.init_weights``): what pretraining
    is measured against. Returns (encoders, skipped): a source smaller than one batch per process
    is not trained, and ``skipped`` names it with the reason (warned too)."""
    from pathlib import Path

    from support.core.trainer import TooFewItems
    from support.downstream.encoders import load_encoder_folder
    from support.ssl.train import ENCODER_DIR, launch_dino, start_backbone, uniform_collapse

    encoders, skipped = {}, {}
    for name, images in sources.items():
        if images is None:
            torch.manual_seed(config.train.seed)
            encoders[name] = start_backbone(config).eval()
            continue
        out = Path(models_dir) / f"dino-{name}"
        try:
            history = launch_dino(config, images, out, source=name, num_processes=num_processes)
        except TooFewItems as e:
            skipped[name] = str(e)
            warnings.warn(f"DINO source {name!r} skipped: {e}", stacklevel=2)
            continue
        encoders[name] = load_encoder_folder(out / ENCODER_DIR)
        encoders[name].info["uniform_collapse"] = uniform_collapse(history["loss"], config.head.prototypes)
        if encoders[name].info["uniform_collapse"]:
            warnings.warn(f"DINO on {name!r} ended in uniform collapse (loss {history['loss'][-1]:.3f} = ln "
                          f"{config.head.prototypes}): its encoder stands for no pretraining, whatever it scores",
                          stacklevel=2)
    if skipped and len(skipped) == sum(images is not None for images in sources.values()):
        raise ValueError(f"DINO: every source is smaller than one batch: {skipped}")
    return encoders, skipped
