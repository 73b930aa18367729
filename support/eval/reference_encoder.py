"""The reference encoder: a small chest X-ray classifier whose penultimate layer is the default
feature space of the evaluation (FD, KID, precision/recall, Turing test, privacy audit) and whose
outputs score conditional fidelity.

A ResNet-18-style network (BasicBlocks, four stages, width a parameter, one input channel) is
trained from scratch as the downstream harness's multi-label task under its fine-tune recipe
(:mod:`support.downstream`, through the shared trainer) on a Dataset yielding
``{"image": (1, H, W) tensor, "labels": (L,) float}``; labels other than 0/1 (NaN unknown,
-1 uncertain) are left out of the loss (the CheXpert "U-Ignore" policy). It is trained once per
dataset: weights (safetensors) and a JSON config are cached under a key made of the dataset
fingerprint and the training config, and reused when the same pair is asked for again.
Held-out AUROC per finding is stored with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from support.core.config import LoopConfig
from support.core.images import resize
from support.data.fingerprint import dataset_fingerprint
from support.data.schema import CHEXPERT_LABELS
from support.downstream.auroc import per_finding_auroc
from support.downstream.backbones import ReferenceNet
from support.downstream.tasks import MultiLabelClassification, loop_for, train_head
from support.params import Check, Checked

__all__ = ["ReferenceEncoder", "ReferenceEncoderConfig", "ReferenceNet", "dataset_labels", "reference_encoder_for",
           "split_indices", "train_reference_encoder"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class ReferenceEncoderConfig(Checked):
    """How the reference encoder is built and trained."""

    title = "reference encoder parameters"

    label_names: tuple[str, ...] = CHEXPERT_LABELS
    width: int = 32                      # channels of the first stage; later stages x2, x4, x8
    blocks: tuple[int, ...] = (2, 2, 2, 2)   # BasicBlocks per stage (ResNet-18: 2, 2, 2, 2)
    image_size: int = 128                # every image is resized to this square first
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2            # held out (by patient when groups are known) for AUROC
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    def checks(self) -> Iterable[Check]:
        yield len(self.label_names) > 0, "label_names", "one or more findings"
        yield self.width > 0 and all(b > 0 for b in self.blocks) and len(self.blocks) > 0, "blocks", \
            "one or more positive block counts (and a positive width)"
        yield self.image_size >= 8, "image_size", "at least 8 pixels"
        yield self.epochs > 0, "epochs", "at least 1"
        yield self.batch_size > 0, "batch_size", "a positive batch size"
        yield self.lr > 0, "lr", "a positive learning rate"
        yield 0.0 < self.val_fraction < 1.0, "val_fraction", "in (0, 1)"

    def key(self) -> str:
        """Hash of everything that changes the trained weights (not the device or worker count)."""
        d = dataclasses.asdict(self)
        for name in ("device", "num_workers"):
            d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()

    def loop(self, n_items: int, min_steps: int = 0) -> LoopConfig:
        """This recipe as the shared trainer's loop on ``n_items`` training images: ``epochs``
        passes (more when ``min_steps`` asks for more updates), AdamW, cosine schedule."""
        base = LoopConfig(max_steps=None, epochs=self.epochs, batch_size=self.batch_size, optimizer="adamw",
                          learning_rate=self.lr, weight_decay=self.weight_decay, lr_schedule="cosine",
                          cpu=self.device == "cpu", seed=self.seed, num_workers=self.num_workers)
        return loop_for(base, n_items, min_steps)


# ---------------------------------------------------------------------------------------------
# data

def dataset_labels(dataset, num_labels: int, name: str = "dataset") -> np.ndarray:
    """The (N, L) label matrix of a loader Dataset (reads every item once)."""
    rows = [np.asarray(dataset[i]["labels"], dtype=np.float64) for i in range(len(dataset))]
    out = np.stack(rows) if rows else np.zeros((0, num_labels))
    if out.ndim != 2 or out.shape[1] != num_labels:
        raise ValueError(f"{name}: labels have shape {out.shape[1:]}, expected ({num_labels},)")
    return out


# ---------------------------------------------------------------------------------------------
# training and prediction

def split_indices(n: int, val_fraction: float, seed: int, groups: Sequence[Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split; with ``groups`` (e.g. subject ids) no group spans both."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} images")
    unique = rng.permutation(np.unique(groups))
    n_val = max(1, int(round(len(unique) * val_fraction)))
    val = np.isin(groups, unique[:n_val])
    return np.flatnonzero(~val), np.flatnonzero(val)


class ReferenceEncoder:
    """A trained reference network as a ``FeatureEncoder`` (``embed``) and a classifier (``predict_proba``)."""

    def __init__(self, model: ReferenceNet, config: ReferenceEncoderConfig, info: dict | None = None):
        from support.devices import pick_device

        self.config = config
        self.device = pick_device(config.device)
        self.model = model.to(self.device).eval()
        self.info = dict(info or {})
        self.label_names = tuple(config.label_names)
        self.name = f"reference-encoder:{self.info.get('fingerprint', 'untracked')[:12]}"

    @property
    def val_auroc(self) -> dict[str, float]:
        """Held-out AUROC per finding measured after training (NaN where a class was missing)."""
        return dict(self.info.get("val_auroc", {}))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return resize(x, self.config.image_size).to(self.device)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, D) of float images (N, 1, H, W) in [0, 1]."""
        return self.model.features(self._prepare(images)).float().cpu()

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Per-finding probabilities (N, L), columns in ``label_names`` order."""
        return torch.sigmoid(self.model(self._prepare(images))).float().cpu()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` then ``config.json`` (the latter marks a complete save)."""
        from support.io import save_state_dict, write_json_atomic
        from support.params import to_dict

        directory = Path(directory)
        save_state_dict(self.model.state_dict(), directory / WEIGHTS_FILE,
                        metadata={"format": f"reference-encoder/{FORMAT_VERSION}"})
        write_json_atomic(directory / CONFIG_FILE, {
            "format_version": FORMAT_VERSION, "config": to_dict(self.config),
            "config_key": self.config.key(), "feature_dim": self.model.feature_dim, **self.info,
            # strict JSON has no NaN: an undefined AUROC is stored as null
            "val_auroc": {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in self.val_auroc.items()}})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> "ReferenceEncoder":
        """Load a saved encoder; errors name the directory and what is wrong."""
        from support.io import load_state_dict, read_json
        from support.params import from_mapping

        directory = Path(directory)
        meta = read_json(directory / CONFIG_FILE)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        config = from_mapping(ReferenceEncoderConfig, meta["config"], source=str(directory / CONFIG_FILE))
        if device is not None:
            config = dataclasses.replace(config, device=device)
        model = ReferenceNet(len(config.label_names), config.width, config.blocks)
        model.load_state_dict(load_state_dict(directory / WEIGHTS_FILE), strict=True)
        info = {k: v for k, v in meta.items() if k not in ("format_version", "config", "config_key", "feature_dim")}
        info["val_auroc"] = {k: float("nan") if v is None else float(v) for k, v in info.get("val_auroc", {}).items()}
        return cls(model, config, info)


def train_reference_encoder(dataset, config: ReferenceEncoderConfig | None = None,
                            groups: Sequence[Any] | None = None, val_dataset=None,
                            fingerprint: str | None = None, name: str = "dataset",
                            output_dir: str | os.PathLike | None = None) -> ReferenceEncoder:
    """Train the reference encoder on ``dataset`` and measure held-out AUROC per finding.

    Validation: ``val_dataset`` when given, else ``config.val_fraction`` of ``dataset`` held out
    (whole patients when ``groups`` gives a subject id per item). The final weights are kept.
    Training checkpoints go to ``output_dir`` (resumed from there) or a temporary folder.
    """
    config = (config or ReferenceEncoderConfig()).validate()
    n_labels = len(config.label_names)
    task = MultiLabelClassification(config.label_names, item_labels=config.label_names)
    data = task.pairs(dataset, config.image_size, name)
    labels = data.label_matrix(config.label_names)
    if val_dataset is None:
        train_idx, val_idx = split_indices(len(data), config.val_fraction, config.seed, groups)
        train, val = torch.utils.data.Subset(data, train_idx.tolist()), torch.utils.data.Subset(data, val_idx.tolist())
    else:
        train_idx = np.arange(len(data))
        train, val = data, task.pairs(val_dataset, config.image_size, f"{name} (validation)")
    task.check_train(labels[train_idx], f"{name} (training split, {len(train_idx)} images)")
    model = train_head(task, train, lambda: ReferenceNet(n_labels, config.width, config.blocks),
                       config.loop(len(train)), output_dir,
                       key={"fingerprint": fingerprint or "", "config": config.key()},
                       progress=True, name=f"reference encoder on {name}")
    outputs = task.collect(model, val, config.batch_size)
    aurocs = per_finding_auroc(outputs["labels"], outputs["scores"], config.label_names)
    info = {"fingerprint": fingerprint or "", "dataset": name, "n_train": len(train), "n_val": len(val),
            "val_auroc": aurocs}
    return ReferenceEncoder(model, config, info)


def reference_encoder_for(dataset, cache_root: str | os.PathLike, config: ReferenceEncoderConfig | None = None,
                          fingerprint: str | None = None, groups: Sequence[Any] | None = None,
                          val_dataset=None, name: str = "dataset") -> ReferenceEncoder:
    """The reference encoder of ``dataset``: loaded from ``cache_root`` when this dataset
    fingerprint and training config were trained before, else trained and saved there.

    ``fingerprint`` defaults to :func:`dataset_fingerprint` (pass the run manifest's dataset
    fingerprint to skip reading the data to hash it).
    """
    config = (config or ReferenceEncoderConfig()).validate()
    fingerprint = fingerprint or dataset_fingerprint(dataset, name)
    directory = Path(cache_root) / f"reference-{fingerprint[:16]}-{config.key()[:10]}"
    meta_path = directory / CONFIG_FILE
    if meta_path.is_file():
        from support.io import read_json

        meta = read_json(meta_path)
        if meta.get("fingerprint") == fingerprint and meta.get("config_key") == config.key():
            return ReferenceEncoder.load(directory, device=config.device)
    training = directory.with_name(f"{directory.name}.training")   # checkpoints: an interrupted run resumes
    encoder = train_reference_encoder(dataset, config, groups=groups, val_dataset=val_dataset,
                                      fingerprint=fingerprint, name=name, output_dir=training)
    encoder.save(directory)
    shutil.rmtree(training, ignore_errors=True)
    return encoder
