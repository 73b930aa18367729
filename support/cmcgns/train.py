"""CM-CGNS pretraining as tasks of the shared trainer: stage 1 (alignment: global, local, cluster-
guided), then stage 2 (the same plus CM-MIR), each resumable in its own folder; stage 2 starts
from stage 1's weights. What downstream tasks use is the image encoder, exported as an encoder
folder of :mod:`support.downstream`.

From a notebook: :func:`pretrain` (one or more processes).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from support.cmcgns.config import CMCGNSConfig
from support.cmcgns.data import ReportPairs, collate_pairs
from support.cmcgns.model import CMCGNS
from support.core import trainer
from support.downstream.encoders import save_encoder_folder

ENCODER_DIR = "encoder"             # the pretrained image encoder (support.downstream's encoder folder)
TOKENIZER_DIR = "tokenizer"
NETWORK = "network.safetensors"     # the whole network at the end of a stage (stage 2's start)


class CMCGNSTask(trainer.Task):
    """One stage of CM-CGNS on image-report ``pairs`` (:class:`~support.cmcgns.data.ReportPairs`)."""

    def __init__(self, config: CMCGNSConfig, pairs: ReportPairs, stage: int, start: str | os.PathLike | None = None,
                 export_dir: str | os.PathLike | None = None, source: str = "pairs"):
        self.config, self.stage, self.start, self.source = config, stage, start, source
        self.export_dir = Path(export_dir) if export_dir else None
        self.name = f"cmcgns-stage{stage}"
        self.train_set = pairs
        self.collate_fn = functools.partial(collate_pairs, pad_id=pairs.tokenizer.pad_token_id or 0)

    def setup(self) -> trainer.Parts:
        from support.io import load_state_dict

        self.network = CMCGNS(self.config, len(self.train_set.tokenizer))
        if self.start:
            self.network.load_state_dict(load_state_dict(self.start))
        for part in self.network.idle_parts(self.stage):
            part.requires_grad_(False)
        return trainer.Parts(models=[self.network])

    def loss(self, batch: dict[str, torch.Tensor], step: trainer.Step):
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        cluster = self.stage == 2 or step.step >= self.config.loss.cluster_start
        return self.models[0](batch, step.generator, stage=self.stage, cluster=cluster)

    def describe(self) -> dict[str, Any]:
        pairs = self.train_set
        return {"stage": self.stage, "source": self.source, "method": self.config.loss.method,
                "n_pairs": len(pairs), "n_sentences": sum(len(s) for s in pairs.sentences),
                "dropped_sentences": pairs.dropped_sentences, "left_out": dict(pairs.summary.excluded),
                "image_parameters": sum(p.numel() for p in self.network.image_encoder.parameters())}

    def export(self) -> None:
        from support.io import save_state_dict

        network = self.ctx.accelerator.unwrap_model(self.models[0])
        save_state_dict(network.state_dict(), self.ctx.output_dir / NETWORK)
        if self.export_dir is not None:
            image = self.config.image
            save_encoder_folder(network.image_encoder, image.encoder, _encoder_config(image),
                                self.export_dir / ENCODER_DIR,
                                {"source": self.source, "method": f"cmcgns:{self.config.loss.method}"})


def _encoder_config(image) -> Any:
    from support.downstream.encoders import ENCODERS
    from support.params import from_mapping

    return from_mapping(ENCODERS[image.encoder].config_type, dict(image.encoder_config),
                        source="CM-CGNS image.encoder_config")


def report_tokenizer(config: CMCGNSConfig, records: pd.DataFrame, output_dir: str | os.PathLike):
    """The local BERT's tokenizer, or one trained on ``records``' report sentences and kept in
    ``output_dir/tokenizer`` (a resumed run reads it back rather than training another)."""
    from support.cmcgns.text import report_sentences
    from support.core.tokenizer import load_tokenizer, train_wordpiece

    if config.text.model_path:
        return load_tokenizer(config.text.model_path)
    folder = Path(output_dir) / TOKENIZER_DIR
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    sentences = [s for _, r in records.iterrows() for s in report_sentences(r.get("findings"), r.get("impression"))[0]]
    if not sentences:
        raise ValueError(f"CM-CGNS: none of {len(records)} records has a report with 3 or more words "
                         "(columns 'findings' and 'impression')")
    tokenizer = train_wordpiece(sentences, config.text.vocab_size)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def pretrain(config: CMCGNSConfig, records: pd.DataFrame, output_dir: str | os.PathLike, source: str = "pairs",
             num_processes: int = 1, progress: bool = True) -> dict[str, dict]:
    """Stage 1, then stage 2, on the frontal image-report pairs of ``records``; returns each stage's
    history. Writes ``tokenizer/``, ``stage1/``, ``stage2/`` (the trainer's folders) and
    ``encoder/`` (the final image encoder, :func:`~support.downstream.encoders.load_encoder_folder`)."""
    config = config.validate()
    out = Path(output_dir)
    tokenizer = report_tokenizer(config, records, out)
    pairs = ReportPairs(records, tokenizer, config.text.max_tokens, config.image.size)
    if not len(pairs):
        raise ValueError(f"CM-CGNS on {source}: no frontal image with a usable report among {len(records)} records "
                         f"({dict(pairs.summary.excluded)})")
    two = config.train.has_stage2
    histories = {"stage1": trainer.launch(CMCGNSTask(config, pairs, 1, export_dir=None if two else out, source=source),
                                          config, out / "stage1", num_processes, progress=progress)}
    if two:
        stage2 = dataclasses.replace(config, train=config.train.stage2())
        histories["stage2"] = trainer.launch(CMCGNSTask(stage2, pairs, 2, start=out / "stage1" / NETWORK,
                                                        export_dir=out, source=source), stage2, out / "stage2",
                                             num_processes, progress=progress)
    return histories
