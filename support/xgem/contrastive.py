"""XGeM stage 3: the shared latent space, CLIP-style.

One vision tower serves both views, one text tower the reports (transformers' ``CLIPModel``); each
gives one pooled, projected, L2-normalised context vector of ``embed_dim``. With ``clip_path`` the
towers start from that local CLIP folder (its tokenizer; gray images copied to 3 channels and
normalised with the folder's processor mean and std); otherwise they are built from the config
sizes with 1-channel images in [-1, 1] and the tokenizer trained on the reports, shared with the
report autoencoder (``output_dir.parent / "tokenizer"``).

The loss over a batch of studies is symmetric InfoNCE with a learnable temperature (the scale
``exp(logit_scale)``, clamped at ``logit_scale_max``): frontal-report over the studies with a
report, plus lateral-report over those that also have a lateral, the two terms weighted by their
numbers of pairs; a term with fewer than 2 pairs is skipped. The empty embeddings (an empty
report, a blank image) stand for a dropped condition in the diffusion stages.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from support.core import trainer
from support.core.config import LoopConfig, config_dict
from support.params import Checked
from support.xgem.config import ContrastiveConfig, XGeMConfig
from support.xgem.text import TOKENIZER_DIR, report_tokenizer, special_ids, token_batch

WEIGHTS = "model.safetensors"
TOWERS_JSON = "towers.json"         # what load_contrastive needs to rebuild the towers
# OpenAI CLIP's processor statistics, for a CLIP folder without preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transformers' CLIPTextModel pools at argmax(input_ids) when eos_token_id is 2 (the old configs)
LEGACY_EOS_ID = 2
DIRECTIONS = (("F->T", "frontal", "report"), ("T->F", "report", "frontal"), ("L->T", "lateral", "report"),
              ("T->L", "report", "lateral"), ("F->L", "frontal", "lateral"), ("L->F", "lateral", "frontal"))
RECALL_KS = (1, 5)


@dataclass
class ContrastiveStage(Checked):
    """What the trainer gets: the towers' fields (the resume key) and the stage's loop."""

    title = "XGeM contrastive stage"

    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    train: LoopConfig = field(default_factory=LoopConfig)


# ------------------------------------------------------------------------------ tokens
# ------------------------------------------------------------------------------ the towers
def clip_config(cfg: ContrastiveConfig, tokenizer):
    """A ``CLIPConfig`` of the config sizes: 1-channel images, the tokenizer's vocabulary, and
    ``eos_token_id`` its end token, where the text tower pools."""
    from transformers import CLIPConfig

    start, end, pad = special_ids(tokenizer)
    if end == LEGACY_EOS_ID:
        raise ValueError(f"the tokenizer's end token has id {LEGACY_EOS_ID}, which CLIPTextModel reads as the old "
                         f"argmax pooling; put it elsewhere in the vocabulary")
    text = dict(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                max_position_embeddings=cfg.max_tokens, pad_token_id=pad, bos_token_id=start, eos_token_id=end,
                projection_dim=cfg.embed_dim)
    vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads, num_channels=1,
                  image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.embed_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                      logit_scale_init_value=cfg.logit_scale_init)


def _architecture_mismatches(clip, cfg: ContrastiveConfig) -> list[str]:
    c, t, v = clip.config, clip.config.text_config, clip.config.vision_config
    pairs = (("embed_dim", c.projection_dim, cfg.embed_dim), ("image_size", v.image_size, cfg.image_size),
             ("patch_size", v.patch_size, cfg.patch_size), ("vision_hidden", v.hidden_size, cfg.vision_hidden),
             ("vision_layers", v.num_hidden_layers, cfg.vision_layers),
             ("vision_heads", v.num_attention_heads, cfg.vision_heads), ("text_hidden", t.hidden_size, cfg.text_hidden),
             ("text_layers", t.num_hidden_layers, cfg.text_layers), ("text_heads", t.num_attention_heads, cfg.text_heads))
    wrong = [f"{name}: the folder has {got}, the config {want}" for name, got, want in pairs if got != want]
    if v.num_channels != 3:
        wrong.append(f"vision num_channels {v.num_channels} (expected 3)")
    if t.max_position_embeddings < cfg.max_tokens:
        wrong.append(f"max_tokens {cfg.max_tokens} exceeds the folder's {t.max_position_embeddings} positions")
    return wrong


def _eos_mismatch(clip, tokenizer) -> str | None:
    """Where the text tower would pool, if not at the tokenizer's end token."""
    eos, end = clip.config.text_config.eos_token_id, special_ids(tokenizer)[1]
    if eos == end or (eos == LEGACY_EOS_ID and end == len(tokenizer) - 1):   # argmax finds the highest id
        return None
    return f"the text tower pools at token id {eos}, the tokenizer ends texts with id {end}"


def _processor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    from support.io import read_json
    stats = read_json(path)
    return tuple(stats.get("image_mean", CLIP_MEAN)), tuple(stats.get("image_std", CLIP_STD))


def load_clip_folder(cfg: ContrastiveConfig):
    """(CLIPModel, tokenizer, mean, std) from ``cfg.clip_path``, checked against the config sizes."""
    from transformers import CLIPModel

    from support.core.tokenizer import load_tokenizer

    folder = Path(cfg.clip_path)
    try:
        clip, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"contrastive.clip_path {folder}: not a CLIP folder with its tokenizer ({exc})") from exc
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise ValueError(f"contrastive.clip_path {folder}: the weights do not fit its CLIPModel config: {problems}")
    wrong = _architecture_mismatches(clip, cfg) + [m for m in [_eos_mismatch(clip, tokenizer)] if m]
    if wrong:
        raise ValueError(f"contrastive.clip_path {folder}: not the CLIP the config describes: {'; '.join(wrong)}")
    mean, std = _processor_stats(folder)
    return clip, tokenizer, mean, std


def _eval_mode(module: nn.Module):
    """Evaluation mode for the block, the previous mode after it."""
    @contextlib.contextmanager
    def scope():
        was = module.training
        module.eval()
        try:
            yield
        finally:
            module.train(was)
    return scope()


class ContrastiveModel(nn.Module):
    """The two towers and the learnable scale; ``forward(batch)`` is the loss of a batch of studies
    (see :func:`collate_studies`)."""

    def __init__(self, clip, tokenizer, max_tokens: int, logit_scale_max: float,
                 pixel_mean: Sequence[float] | None = None, pixel_std: Sequence[float] | None = None):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer
        self.max_tokens, self.logit_scale_max = int(max_tokens), float(logit_scale_max)
        self.channels = int(clip.config.vision_config.num_channels)
        self.image_size = int(clip.config.vision_config.image_size)
        if self.channels == 3:
            mean, std = pixel_mean or CLIP_MEAN, pixel_std or CLIP_STD
            self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Gray images (B, 1, S, S) in [-1, 1] as the vision tower takes them."""
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.channels == 1:
            return x
        x = ((x + 1) / 2).repeat(1, 3, 1, 1)
        return (x - self.pixel_mean) / self.pixel_std

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unit vectors of images (B, 1, S, S) in [-1, 1]."""
        out = self.clip.get_image_features(pixel_values=self.pixel_values(images))
        return F.normalize(_pooled(out).float(), dim=-1)

    def embed_reports(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unit vectors of tokenised reports (:func:`~support.xgem.text.token_batch`)."""
        out = self.clip.get_text_features(input_ids=input_ids.to(self.device),
                                          attention_mask=attention_mask.to(self.device))
        return F.normalize(_pooled(out).float(), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, embed_dim) unit vectors of report texts."""
        return self.embed_reports(*token_batch(self.tokenizer, texts, self.max_tokens))

    @torch.no_grad()
    def empty_report_embedding(self) -> torch.Tensor:
        """The text tower's vector of an empty report (embed_dim,)."""
        with _eval_mode(self):
            return self.embed_texts([""])[0]

    @torch.no_grad()
    def empty_image_embedding(self) -> torch.Tensor:
        """The vision tower's vector of a blank image, all -1 (embed_dim,)."""
        with _eval_mode(self):
            blank = torch.full((1, 1, self.image_size, self.image_size), -1.0, device=self.device)
            return self.embed_images(blank)[0]

    def scale(self) -> torch.Tensor:
        """The similarity scale exp(logit_scale), clamped at ``logit_scale_max``."""
        return self.clip.logit_scale.float().exp().clamp(max=self.logit_scale_max)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        """(loss, parts) of a batch of studies: frontal-report and lateral-report InfoNCE."""
        has_report = batch["has_report"].to(self.device)
        with_lateral = has_report & batch["has_lateral"].to(self.device)
        n = len(has_report)
        images = torch.cat([batch["frontal"].to(self.device), batch["lateral"].to(self.device)[with_lateral]])
        image_vectors = self.embed_images(images)
        frontal, lateral = image_vectors[:n], image_vectors[n:]
        report = self.embed_reports(batch["input_ids"], batch["attention_mask"])
        scale = self.scale()
        loss, counts = weighted_infonce([(frontal[has_report], report[has_report]), (lateral, report[with_lateral])],
                                        scale)
        if not any(counts):   # nothing to contrast: a zero that still reaches every weight
            loss = loss + 0.0 * (image_vectors.sum() + report.sum())
        return loss, {"scale": scale.detach(), "pairs_frontal": float(counts[0]), "pairs_lateral": float(counts[1])}


def _pooled(out) -> torch.Tensor:
    """The projected pooled vector (transformers 5 returns an output object, older versions a tensor)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def build_contrastive(cfg: ContrastiveConfig, tokenizer=None) -> ContrastiveModel:
    """The towers of ``cfg``: from ``clip_path`` (its own tokenizer), else fresh ones over
    ``tokenizer`` (initialisation draws from torch's global RNG)."""
    from transformers import CLIPModel

    if cfg.clip_path:
        clip, own, mean, std = load_clip_folder(cfg)
        return ContrastiveModel(clip, own, cfg.max_tokens, cfg.logit_scale_max, mean, std)
    if tokenizer is None:
        raise ValueError("contrastive towers without clip_path need the reports' tokenizer")
    return ContrastiveModel(CLIPModel(clip_config(cfg, tokenizer)), tokenizer, cfg.max_tokens, cfg.logit_scale_max)


# ------------------------------------------------------------------------------ the loss
def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's loss of ``n`` pairs (row ``i`` of ``a`` with row ``i`` of ``b``, rows L2-normalised):
    the mean of cross-entropy a->b over the rows of ``logit_scale * a @ b.T`` and b->a over its
    columns. ``logit_scale`` multiplies the cosine similarities (1 / temperature)."""
    logits = logit_scale * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def weighted_infonce(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, list[int]]:
    """The mean of :func:`symmetric_infonce` over several sets of pairs, each weighted by its number
    of pairs; a set of fewer than 2 pairs (nothing to contrast) is skipped, with count 0. Returns
    (loss, counts used); the loss is 0 when every set is skipped."""
    counts = [len(a) if len(a) >= 2 else 0 for a, _ in pairs]
    terms = [n * symmetric_infonce(a, b, logit_scale) for (a, b), n in zip(pairs, counts) if n]
    zero = 0.0 * torch.as_tensor(logit_scale, dtype=torch.float32)
    return (sum(terms) / sum(counts) if terms else zero), counts


# ------------------------------------------------------------------------------ data
def collate_studies(items: Sequence[Mapping[str, Any]], tokenizer, max_tokens: int) -> dict[str, torch.Tensor]:
    """A batch of :class:`~support.xgem.data.Studies` items with the reports tokenised."""
    input_ids, attention_mask = token_batch(tokenizer, [it["report"] for it in items], max_tokens)
    return {"frontal": torch.stack([it["frontal"] for it in items]),
            "lateral": torch.stack([it["lateral"] for it in items]),
            "has_lateral": torch.stack([torch.as_tensor(it["has_lateral"], dtype=torch.bool) for it in items]),
            "has_report": torch.tensor([bool(it["report"]) for it in items]),
            "input_ids": input_ids, "attention_mask": attention_mask}


def split_studies(studies, splits: Sequence[str]) -> Subset:
    """The studies of ``splits`` (``studies.records['split']``)."""
    keep = studies.records["split"].isin(list(splits)).to_numpy()
    return Subset(studies, [int(i) for i in keep.nonzero()[0]])


def _check_studies(dataset, name: str) -> None:
    if not len(dataset):
        raise ValueError(f"{name}: no study")
    item = dataset[0]
    missing = [k for k in ("frontal", "lateral", "has_lateral", "report") if k not in item]
    if missing:
        raise TypeError(f"{name}[0]: expected a study item (support.xgem.data.Studies), missing {missing}")
    shape = tuple(item["frontal"].shape)
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise ValueError(f"{name}[0]['frontal']: expected a gray square image (1, S, S), got {shape}")


# ------------------------------------------------------------------------------ retrieval
@torch.no_grad()
def embed_studies(model: ContrastiveModel, studies: Dataset, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Unit vectors of each study's frontal, lateral and report (zeros where absent), with
    ``has_lateral`` and ``has_report``, on the CPU."""
    collate = functools.partial(collate_studies, tokenizer=model.tokenizer, max_tokens=model.max_tokens)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("frontal", "lateral", "report", "has_lateral",
                                                            "has_report")}
    with _eval_mode(model):
        for batch in DataLoader(studies, batch_size=batch_size, shuffle=False, collate_fn=collate):
            lateral = torch.zeros(len(batch["frontal"]), model.embed_dim)
            report = torch.zeros_like(lateral)
            if batch["has_lateral"].any():
                lateral[batch["has_lateral"]] = model.embed_images(batch["lateral"][batch["has_lateral"]]).cpu()
            keep = batch["has_report"]
            if keep.any():
                report[keep] = model.embed_reports(batch["input_ids"][keep], batch["attention_mask"][keep]).cpu()
            parts["frontal"].append(model.embed_images(batch["frontal"]).cpu())
            parts["lateral"].append(lateral)
            parts["report"].append(report)
            parts["has_lateral"].append(batch["has_lateral"])
            parts["has_report"].append(keep)
    return {k: torch.cat(v) for k, v in parts.items()}


def recall_at_k(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> float:
    """Share of queries whose own candidate (same row) is among the ``k`` most similar; a tie with
    another candidate counts against the query."""
    sims = queries.float() @ candidates.float().T
    own = sims.diagonal().unsqueeze(1)
    others = (sims >= own).sum(dim=1) - 1          # candidates as similar as the own one, or more
    return float((others < k).float().mean())


def _recall_row(direction: str, queries: torch.Tensor, candidates: torch.Tensor, left_out: int) -> dict[str, Any]:
    n = len(queries)
    row: dict[str, Any] = {"direction": direction, "studies": n, "left_out": left_out, "note": ""}
    for k in RECALL_KS:
        needed = max(k, 2)   # with one candidate recall@1 says nothing
        row[f"recall@{k}"] = recall_at_k(queries, candidates, k) if n >= needed else math.nan
    short = [f"recall@{k} needs {max(k, 2)}" for k in RECALL_KS if n < max(k, 2)]
    if short:
        row["note"] = f"too few samples: {n} candidate{'s' * (n != 1)} ({', '.join(short)})"
    return row


def retrieval_table(embeddings: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Recall@1 and recall@5 in each direction among F (frontal), L (lateral), T (report) over the
    studies holding both modalities (the others counted in ``left_out``); NaN with a ``note`` where
    there are too few candidates. ``embeddings`` as :func:`embed_studies` returns them."""
    n = len(embeddings["frontal"])
    present = {"frontal": torch.ones(n, dtype=torch.bool), "lateral": embeddings["has_lateral"].bool(),
               "report": embeddings["has_report"].bool()}
    rows = []
    for direction, source, target in DIRECTIONS:
        both = present[source] & present[target]
        rows.append(_recall_row(direction, embeddings[source][both], embeddings[target][both], int((~both).sum())))
    return pd.DataFrame(rows, columns=["direction", "studies", "left_out", "recall@1", "recall@5", "note"])


def retrieval_recall(model: ContrastiveModel, studies: Dataset, batch_size: int = 32) -> pd.DataFrame:
    """:func:`retrieval_table` of ``studies`` (pass the held-out ones, e.g. ``split_studies(s, ["test"])``)."""
    return retrieval_table(embed_studies(model, studies, batch_size))


def _metric_name(direction: str, k: int) -> str:
    return f"val_recall@{k}_{direction.replace('->', '2').lower()}"


# ------------------------------------------------------------------------------ training
class ContrastiveTask(trainer.Task):
    """Stage 3 on ``studies`` (study items: the train split); ``held_out`` gives retrieval recall."""

    name = "xgem-contrastive"

    def __init__(self, stage: ContrastiveStage, studies: Dataset, tokenizer, held_out: Dataset | None = None):
        self.stage, self.train_set, self.tokenizer, self.held_out = stage, studies, tokenizer, held_out
        self.collate_fn = functools.partial(collate_studies, tokenizer=tokenizer,
                                            max_tokens=stage.contrastive.max_tokens)

    def setup(self) -> trainer.Parts:
        _check_studies(self.train_set, "contrastive training set")
        self.model = build_contrastive(self.stage.contrastive, self.tokenizer)
        return trainer.Parts(models=[self.model])

    def loss(self, batch: Mapping[str, torch.Tensor], step: trainer.Step):
        return self.models[0](batch)

    def validate(self, step: int) -> Mapping[str, float] | None:
        if not self.held_out:
            return None
        model = self.ctx.accelerator.unwrap_model(self.models[0])
        with self.ctx.autocast():
            table = retrieval_recall(model, self.held_out, self.ctx.loop.batch_size)
        metrics = {_metric_name(r["direction"], k): r[f"recall@{k}"] for _, r in table.iterrows() for k in RECALL_KS}
        return {k: v for k, v in metrics.items() if not math.isnan(v)} or None

    def describe(self) -> dict[str, Any]:
        facts = {"n_studies": len(self.train_set), "n_val_studies": len(self.held_out or ()),
                 "vocab_size": len(self.model.tokenizer),
                 "parameters": sum(p.numel() for p in self.model.parameters())}
        reports, laterals = _column(self.train_set, "report"), _column(self.train_set, "lateral_path")
        if reports and laterals:   # known without reading the images
            facts["with_report"] = sum(bool(r) for r in reports)
            facts["with_lateral_and_report"] = sum(bool(r) and bool(v) for r, v in zip(reports, laterals))
        return facts

    def export(self) -> None:
        save_contrastive(self.ctx.accelerator.unwrap_model(self.models[0]), self.stage.contrastive,
                         self.ctx.output_dir)


def _column(dataset, name: str) -> list:
    """A column of the records behind a Studies (or a Subset of one); [] when unknown."""
    indices = None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    records = getattr(dataset, "records", None)
    if records is None or name not in records.columns:
        return []
    values = records[name].tolist()
    return [values[i] for i in indices] if indices is not None else values


def save_contrastive(model: ContrastiveModel, cfg: ContrastiveConfig, folder: str | os.PathLike) -> Path:
    """``model.safetensors``, ``towers.json`` and ``tokenizer/`` in ``folder`` (:func:`load_contrastive`)."""
    from support.io import save_state_dict, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), folder / WEIGHTS)
    model.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    pixels = {"pixel_mean": model.pixel_mean.flatten().tolist(), "pixel_std": model.pixel_std.flatten().tolist()} \
        if model.channels == 3 else {}
    write_json_atomic(folder / TOWERS_JSON, {"clip": json.loads(model.clip.config.to_json_string()),
                                             "max_tokens": model.max_tokens, "logit_scale_max": model.logit_scale_max,
                                             "contrastive": config_dict(cfg), **pixels})
    return folder


def load_contrastive(folder: str | os.PathLike) -> tuple[ContrastiveModel, Any]:
    """(model in eval mode, tokenizer) saved by :func:`save_contrastive` (the stage's output folder)."""
    from transformers import CLIPConfig, CLIPModel

    from support.core.tokenizer import load_tokenizer
    from support.io import load_state_dict

    folder = Path(folder)
    if not (folder / TOWERS_JSON).is_file():
        raise FileNotFoundError(f"{folder}: no {TOWERS_JSON}; expected the output folder of the contrastive stage")
    from support.io import read_json
    spec = read_json(folder / TOWERS_JSON)
    tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    model = ContrastiveModel(CLIPModel(CLIPConfig.from_dict(spec["clip"])), tokenizer, spec["max_tokens"],
                             spec["logit_scale_max"], spec.get("pixel_mean"), spec.get("pixel_std"))
    model.load_state_dict(load_state_dict(folder / WEIGHTS))
    return model.eval(), tokenizer


def contrastive_tokenizer(config: XGeMConfig, studies, output_dir: str | os.PathLike):
    """The CLIP folder's tokenizer, else the reports' one kept in ``output_dir.parent / "tokenizer"``
    (trained on the train split's reports, with the report autoencoder's ``vocab_size``, if absent)."""
    from support.core.tokenizer import load_tokenizer

    if config.contrastive.clip_path:
        return load_tokenizer(config.contrastive.clip_path)
    texts = studies.records.loc[studies.records["split"] == "train", "report"].tolist()
    return report_tokenizer(texts, config.report_vae.vocab_size, Path(output_dir).parent / TOKENIZER_DIR)


def train_contrastive(config: XGeMConfig, studies, output_dir: str | os.PathLike, num_processes: int = 1,
                      progress: bool = True) -> dict:
    """Stage 3 on the train split of ``studies`` (:class:`~support.xgem.data.Studies`; retrieval
    recall on the others at validation); returns the history. Writes the trainer's folder and what
    :func:`load_contrastive` reads."""
    config = config.validate()
    train, held_out = split_studies(studies, ["train"]), split_studies(studies, ["validate", "test"])
    if not len(train):
        raise ValueError(f"XGeM contrastive: none of {len(studies)} studies is in the train split")
    tokenizer = contrastive_tokenizer(config, studies, output_dir)
    stage = ContrastiveStage(contrastive=config.contrastive, train=config.loops.contrastive)
    task = ContrastiveTask(stage, train, tokenizer, held_out if len(held_out) else None)
    return trainer.launch(task, stage, output_dir, num_processes, progress=progress)
