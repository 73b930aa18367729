"""The protocols an encoder is judged by, at fractions of the training labels drawn by patient.

- ``linear``: the encoder frozen. Classification: a linear layer on its pooled features (computed
  once; a frozen encoder without augmentation gives the same features every epoch).
  Segmentation/detection: the decoder or detection head trained on its frozen maps (MGCA).
- ``finetune``: the encoder trained with the head.
- ``knn``: nothing trained; a cosine kNN vote on pooled features (classification only).

:func:`evaluate` returns one row per fraction x metric with a seeded bootstrap 95 % interval
over the test images. What cannot be right is never reported: a training subset without a label
(or mask, or box) and a test set that cannot score the task raise; a metric that one fraction
cannot support (one class, too few samples, k above the training size) is NaN with its reason.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from support.core.config import LoopConfig
from support.params import Check, Checked

from .data import Pairs, patient_ids
from .encoders import check_encoder
from .subsets import patient_subset
from .tasks import HeadTask, loop_for, train_head

PROTOCOLS: tuple[str, ...] = ("linear", "finetune", "knn")
COLUMNS = ["protocol", "fraction", "metric", "n_train", "n_patients", "n_test", "value", "ci_low", "ci_high", "reason"]


def default_loop() -> LoopConfig:
    """Head training: AdamW with a cosine schedule, epoch-based."""
    return LoopConfig(max_steps=None, epochs=20, batch_size=32, optimizer="adamw", learning_rate=1e-3,
                      weight_decay=1e-4, lr_schedule="cosine", log_every=50)


@dataclasses.dataclass
class DownstreamConfig(Checked):
    """How heads are trained (``train``) and how results are measured."""

    title = "downstream parameters"
    train: LoopConfig = dataclasses.field(default_factory=default_loop)
    image_size: int | None = None   # images resized to this square; None: as the dataset gives them
    min_steps: int = 0              # small subsets get more epochs so every head sees this many updates
    batch_size: int = 64            # embedding and prediction
    n_boot: int = 1000
    confidence: float = 0.95
    min_test: int = 10              # fewer test samples (with a definite label) than this: NaN, not a number
    k: int = 20                     # kNN neighbours
    temperature: float = 0.07       # kNN vote weights exp(similarity / temperature)
    seed: int = 0                   # label fractions and bootstrap resamples

    def checks(self) -> Iterable[Check]:
        yield from super().checks()     # train
        yield self.image_size is None or self.image_size >= 8, "image_size", "at least 8 pixels, or null"
        yield self.min_steps >= 0, "min_steps", "0 or more"
        yield self.batch_size > 0, "batch_size", "positive"
        yield self.n_boot > 0, "n_boot", "a positive number of resamples"
        yield 0.0 < self.confidence < 1.0, "confidence", "in (0, 1)"
        yield self.min_test >= 2, "min_test", "at least 2 (a bootstrap resamples at least two)"
        yield self.k > 0, "k", "at least 1"
        yield self.temperature > 0, "temperature", "positive"


def _embedding_device(config: DownstreamConfig) -> torch.device:
    from support.devices import pick_device

    return torch.device("cpu") if config.train.cpu else pick_device("auto")


@torch.inference_mode()
def pooled_features(encoder: nn.Module, pairs: Pairs, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, targets) of every pair, the encoder in eval mode on its device."""
    device = next(encoder.parameters()).device
    features, targets = [], []
    for x, y in torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=False):
        features.append(encoder.features(x.to(device)).float().cpu().numpy())
        targets.append(np.asarray(y))
    if not features:
        raise ValueError(f"{pairs.name}: the dataset is empty")
    return np.concatenate(features), np.concatenate(targets)


def _digest(*arrays: np.ndarray | torch.Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a).tobytes())
    return h.hexdigest()[:16]


def _target_tensor(targets: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(targets)
    return t.float() if t.is_floating_point() else t.long()


def evaluate(encoder: nn.Module, task: HeadTask, protocol: str, fractions: Sequence[float], train, test,
             config: DownstreamConfig | None = None, groups: Sequence | None = None,
             output_dir: str | os.PathLike | None = None, progress: bool = False) -> pd.DataFrame:
    """Judge ``encoder`` on ``task`` under ``protocol`` at each fraction of the training labels.

    ``train`` and ``test`` are loader Datasets (dict items). Fractions are drawn by patient
    (``groups``: one patient id per training item; default the items' ``subject_id``),
    stratified by the rarest positive finding, seeded. ``output_dir`` keeps each training's
    checkpoints (resumed when run again); by default they go to a temporary folder. Returns a
    DataFrame with :data:`COLUMNS`, one row per fraction x metric.
    """
    config = (config or DownstreamConfig()).validate()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {list(PROTOCOLS)}")
    if protocol == "knn" and task.dense:
        raise ValueError(f"protocol 'knn' votes on pooled features; {task.name} needs a trained head "
                         f"(use 'linear' or 'finetune')")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad or not fractions:
        raise ValueError(f"fractions {list(fractions)}: expected one or more values in (0, 1]")
    check_encoder(encoder, dense=task.dense)
    train_pairs = task.pairs(train, config.image_size, "train")
    test_pairs = task.pairs(test, config.image_size, "test")
    if not len(train_pairs) or not len(test_pairs):
        raise ValueError(f"train has {len(train_pairs)} and test {len(test_pairs)} items; both must be non-empty")
    groups = np.asarray(patient_ids(train, "train") if groups is None else groups).astype(str)
    if len(groups) != len(train_pairs):
        raise ValueError(f"groups: {len(groups)} patient ids for {len(train_pairs)} training items")

    on_features = not task.dense and protocol != "finetune"
    if on_features:
        frozen = copy.deepcopy(encoder).to(_embedding_device(config)).eval()
        train_features, train_targets = pooled_features(frozen, train_pairs, config.batch_size)
        test_features, test_targets = pooled_features(frozen, test_pairs, config.batch_size)
    else:
        train_targets, test_targets = task.targets(train_pairs), task.targets(test_pairs)
    task.check_test(test_targets, f"test ({len(test_pairs)} images)")
    strata = task.strata(train_targets)
    image_size = int(train_pairs[0][0].shape[-1])

    rows = []
    for i, fraction in enumerate(fractions):
        chosen = patient_subset(strata, groups, fraction, seed=config.seed + i)
        subset_targets = train_targets[chosen]
        task.check_train(subset_targets, f"training subset at fraction {fraction:g} ({len(chosen)} images)")
        if protocol == "knn":
            outputs = task.knn(train_features[chosen], subset_targets, test_features, test_targets, config.k,
                               config.temperature)
        else:
            loop = loop_for(config.train, len(chosen), config.min_steps)
            out = None if output_dir is None else Path(output_dir) / f"{task.name}-{protocol}-{fraction:g}"
            key = {"protocol": protocol, "fraction": fraction, "subset": _digest(chosen),
                   "encoder": _digest(*encoder.state_dict().values()) if out is not None else ""}
            if on_features:
                data = torch.utils.data.TensorDataset(torch.as_tensor(train_features[chosen]),
                                                      _target_tensor(subset_targets))
                dim = train_features.shape[1]
                model = train_head(task, data, lambda: nn.Linear(dim, task.num_outputs), loop, out, key, progress)
                test_set = torch.utils.data.TensorDataset(torch.as_tensor(test_features), _target_tensor(test_targets))
                outputs = task.collect(model, test_set, config.batch_size)
            else:
                def build() -> nn.Module:
                    return task.model(copy.deepcopy(encoder), protocol == "linear", image_size)

                model = train_head(task, torch.utils.data.Subset(train_pairs, chosen.tolist()), build, loop, out,
                                   key, progress)
                outputs = task.collect(model, test_pairs, config.batch_size)
        for r in task.score(outputs, subset_targets, n_boot=config.n_boot, seed=config.seed,
                            confidence=config.confidence, min_test=config.min_test):
            rows.append({"protocol": protocol, "fraction": fraction, "n_train": len(chosen),
                         "n_patients": len(np.unique(groups[chosen])), **r})
    return pd.DataFrame(rows, columns=COLUMNS)
