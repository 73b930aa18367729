"""The reference encoder: a small chest X-ray classifier whose penultimate layer is the default
feature space of the evaluation (FD, KID, precision/recall, Turing test, privacy audit) and whose
outputs score conditional fidelity.

A ResNet-18-style network (BasicBlocks, four stages, width a parameter, one input channel) is
trained with a masked binary cross-entropy on a Dataset yielding
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
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from support.data.schema import CHEXPERT_LABELS

from .auroc import per_finding_auroc
from .images import resize, to_unit_float

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class ReferenceEncoderConfig:
    """How the reference encoder is built and trained."""

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

    def key(self) -> str:
        """Hash of everything that changes the trained weights (not the device or worker count)."""
        d = dataclasses.asdict(self)
        for name in ("device", "num_workers"):
            d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# network

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ReferenceNet(nn.Module):
    """ResNet-style classifier on 1-channel images in [0, 1]; ``features`` is the pooled penultimate layer."""

    def __init__(self, num_labels: int, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stages += [BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25  # radiographs in [0, 1] to roughly zero mean, unit spread
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the definite (0/1) labels only; 0 when a batch has none."""
    known = (labels == 0) | (labels == 1)
    target = torch.where(known, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------
# data

class LabelledImages(torch.utils.data.Dataset):
    """A loader Dataset as (image (1, S, S) float in [0, 1], labels (L,) float) pairs."""

    def __init__(self, dataset, size: int, num_labels: int, name: str = "dataset"):
        self.dataset, self.size, self.num_labels, self.name = dataset, size, num_labels, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[index]
        where = f"{self.name}[{index}]"
        if not isinstance(item, dict) or "image" not in item or "labels" not in item:
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(f"{where}: expected a dict with 'image' and 'labels', got {got}")
        image = resize(to_unit_float(item["image"], f"{where}.image").unsqueeze(0), self.size).squeeze(0)
        labels = torch.as_tensor(np.asarray(item["labels"], dtype=np.float32))
        if labels.shape != (self.num_labels,):
            raise ValueError(f"{where}.labels: expected shape ({self.num_labels},), got {tuple(labels.shape)}")
        return image, labels


def dataset_labels(dataset, num_labels: int, name: str = "dataset") -> np.ndarray:
    """The (N, L) label matrix of a loader Dataset (reads every item once)."""
    rows = [np.asarray(dataset[i]["labels"], dtype=np.float64) for i in range(len(dataset))]
    out = np.stack(rows) if rows else np.zeros((0, num_labels))
    if out.ndim != 2 or out.shape[1] != num_labels:
        raise ValueError(f"{name}: labels have shape {out.shape[1:]}, expected ({num_labels},)")
    return out


def dataset_fingerprint(dataset, name: str = "dataset") -> str:
    """A dataset's own ``fingerprint`` attribute when it has one, else sha256 of every item's
    image and labels (one full read)."""
    own = getattr(dataset, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
    for i in tqdm(range(len(dataset)), desc=f"fingerprint {name}", leave=False):
        item = dataset[i]
        for key in ("image", "labels"):
            arr = np.ascontiguousarray(np.asarray(item[key]))
            h.update(f"{key}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# training and prediction

def _loader(data, config: ReferenceEncoderConfig, shuffle: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=shuffle,
                                       num_workers=config.num_workers, generator=gen,
                                       drop_last=shuffle and len(data) > config.batch_size)


def fit_classifier(model: ReferenceNet, train: torch.utils.data.Dataset, config: ReferenceEncoderConfig,
                   desc: str = "train classifier") -> ReferenceNet:
    """Train ``model`` on (image, labels) pairs with masked BCE, AdamW and a cosine schedule."""
    from tqdm.auto import tqdm
    from support.devices import pick_device

    if len(train) < 2:  # batch norm needs two images in a batch
        raise ValueError(f"{desc}: at least 2 training images are needed, got {len(train)}")
    device = pick_device(config.device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader = _loader(train, config, shuffle=True, seed=config.seed)
    total = max(1, config.epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    with tqdm(total=total, desc=desc, leave=False) as bar:
        for _ in range(config.epochs):
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                loss = masked_bce(model(images), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()


@torch.inference_mode()
def predict_labelled(model: ReferenceNet, data: torch.utils.data.Dataset,
                     config: ReferenceEncoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sigmoid scores) over a Dataset of (image, labels) pairs, both (N, L)."""
    device = next(model.parameters()).device
    model.eval()
    ys, ps = [], []
    for images, labels in _loader(data, config, shuffle=False):
        ps.append(torch.sigmoid(model(images.to(device))).float().cpu().numpy())
        ys.append(labels.numpy())
    return np.concatenate(ys).astype(np.float64), np.concatenate(ps).astype(np.float64)


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
                            fingerprint: str | None = None, name: str = "dataset") -> ReferenceEncoder:
    """Train the reference encoder on ``dataset`` and measure held-out AUROC per finding.

    Validation: ``val_dataset`` when given, else ``config.val_fraction`` of ``dataset`` held out
    (whole patients when ``groups`` gives a subject id per item). The final weights are kept.
    """
    from support.seeding import seed_everything

    config = config or ReferenceEncoderConfig()
    seed_everything(config.seed)
    n_labels = len(config.label_names)
    data = LabelledImages(dataset, config.image_size, n_labels, name)
    if val_dataset is None:
        train_idx, val_idx = split_indices(len(data), config.val_fraction, config.seed, groups)
        train, val = torch.utils.data.Subset(data, train_idx.tolist()), torch.utils.data.Subset(data, val_idx.tolist())
    else:
        train, val = data, LabelledImages(val_dataset, config.image_size, n_labels, f"{name} (validation)")
    model = ReferenceNet(n_labels, config.width, config.blocks)
    fit_classifier(model, train, config, desc=f"reference encoder on {name}")
    labels, scores = predict_labelled(model, val, config)
    aurocs = per_finding_auroc(labels, scores, config.label_names)
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
    config = config or ReferenceEncoderConfig()
    fingerprint = fingerprint or dataset_fingerprint(dataset, name)
    directory = Path(cache_root) / f"reference-{fingerprint[:16]}-{config.key()[:10]}"
    meta_path = directory / CONFIG_FILE
    if meta_path.is_file():
        from support.io import read_json

        meta = read_json(meta_path)
        if meta.get("fingerprint") == fingerprint and meta.get("config_key") == config.key():
            return ReferenceEncoder.load(directory, device=config.device)
    encoder = train_reference_encoder(dataset, config, groups=groups, val_dataset=val_dataset,
                                      fingerprint=fingerprint, name=name)
    encoder.save(directory)
    return encoder
