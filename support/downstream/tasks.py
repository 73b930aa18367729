"""The harness's tasks: multi-label and multi-class classification, segmentation, detection.

Each is a :class:`support.core.trainer.Task`, so its head (and, when fine-tuned, the encoder) is
trained by :func:`support.core.trainer.fit` (resume, NaN guard, checkpoints), and says how to

- read its targets from a loader Dataset (:meth:`HeadTask.pairs`, :meth:`HeadTask.targets`);
- stratify label fractions by them (:meth:`HeadTask.strata`);
- refuse a training subset or test set it cannot learn from or be scored on (``check_*``);
- build its model on an encoder, run it over a test set and score it with bootstrap intervals.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from support.core import trainer
from support.core.config import LoopConfig
from support.data.schema import CHEXPERT_LABELS
from . import metrics
from .auroc import known_mask
from .data import BoxedImages, ClassImages, LabelledImages, MaskedImages, Pairs, collate_boxes
from .heads import Classifier, SegmentationModel, detector
from .knn import knn_vote


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the definite (0/1) labels only; 0 when a batch has none."""
    known = (labels == 0) | (labels == 1)
    target = torch.where(known, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


def loop_for(loop: LoopConfig, n_items: int, min_steps: int = 0) -> LoopConfig:
    """``loop`` fitted to a training set of ``n_items``: batches no larger than the set (so tiny
    subsets still train) and, for epoch-based loops, enough epochs for ``min_steps`` updates."""
    batch = min(loop.batch_size, n_items)
    if loop.max_steps is not None:
        return dataclasses.replace(loop, batch_size=batch)
    updates_per_epoch = max(1, n_items // batch // loop.gradient_accumulation_steps)
    epochs = max(loop.epochs, math.ceil(min_steps / updates_per_epoch))
    return dataclasses.replace(loop, batch_size=batch, epochs=epochs)


def train_head(task: "HeadTask", train_set, build: Callable[[], nn.Module], loop: LoopConfig,
               output_dir: str | os.PathLike | None = None, key: dict | None = None,
               progress: bool = False, name: str | None = None) -> nn.Module:
    """Train ``build()``'s model on ``train_set`` (pairs) with ``task``'s loss through the shared
    trainer; return it in eval mode. Checkpoints go to ``output_dir`` (resumed from there, ``key``
    naming what must match) or to a temporary folder removed afterwards. ``name`` names the run
    (progress bar, trackers); by default the task's."""
    run = task.on(train_set, build, key)
    run.name = name or task.name
    if len(train_set) < 2:  # batch norm needs two images in a batch
        raise ValueError(f"{run.name}: at least 2 training items are needed, got {len(train_set)}")
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix=f"{task.name}-") as tmp:
            trainer.fit(run, loop, tmp, progress=progress)
    else:
        trainer.fit(run, loop, output_dir, progress=progress)
    return run.ctx.accelerator.unwrap_model(run.models[0]).eval()


def _loader(pairs, batch_size: int, collate_fn=None):
    return torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class HeadTask(trainer.Task):
    """Base of the harness's tasks; a task object holds what it is asked (labels, classes, head
    size), and :meth:`on` makes the copy that :func:`support.core.trainer.fit` trains."""

    name = "downstream"
    dense = False                 # needs the encoder's feature maps (no kNN, no pooled features)
    num_outputs = 0               # classifier outputs (pooled-feature tasks)
    build: Callable[[], nn.Module] | None = None
    key: dict | None = None

    # ---- what the harness asks of a task
    def pairs(self, dataset, size: int | None, name: str) -> Pairs:
        raise NotImplementedError

    def targets(self, pairs: Pairs) -> np.ndarray:
        """What the task reads of every item: labels, classes or annotation counts."""
        raise NotImplementedError

    def strata(self, targets: np.ndarray) -> np.ndarray:
        """(N, C) 0/1/NaN matrix that label fractions are stratified by."""
        raise NotImplementedError

    def check_train(self, targets: np.ndarray, where: str) -> None:
        """Raise when a training subset gives the head nothing to learn."""

    def check_test(self, targets: np.ndarray, where: str) -> None:
        """Raise when a test set cannot score this task at all."""

    def model(self, encoder: nn.Module, frozen: bool, image_size: int) -> nn.Module:
        raise NotImplementedError

    def collect(self, model: nn.Module, pairs, batch_size: int) -> dict:
        """Run ``model`` over the test pairs; what :meth:`score` needs."""
        raise NotImplementedError

    def score(self, outputs: dict, train_targets: np.ndarray, *, n_boot: int, seed: int, confidence: float,
              min_test: int) -> list[dict]:
        raise NotImplementedError

    # ---- training through the shared trainer
    def on(self, train_set, build: Callable[[], nn.Module], key: dict | None = None) -> "HeadTask":
        """A copy of this task that trains ``build()`` (called in :meth:`setup`, after the trainer
        seeded the RNG) on ``train_set``."""
        run = copy.copy(self)
        run.train_set, run.build, run.key = train_set, build, dict(key or {})
        return run

    def setup(self) -> trainer.Parts:
        return trainer.Parts(models=[self.build()])

    def resume_key(self) -> dict[str, Any]:
        return {"task": self.name, "n_train": len(self.train_set), **(self.key or {})}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.ctx.device, non_blocking=True)


# ------------------------------------------------------------------------------------ classification
class MultiLabelClassification(HeadTask):
    """Findings as independent binary labels: masked BCE (1/0 count; -1 and NaN are ignored),
    per-finding AUROC and their mean. ``item_labels`` names the items' label vector (CheXpert's
    14 for the loaders); ``label_names`` are the findings learned and scored."""

    name = "multilabel"

    def __init__(self, label_names: Sequence[str], item_labels: Sequence[str] = CHEXPERT_LABELS):
        unknown = [n for n in label_names if n not in item_labels]
        if unknown or not label_names:
            raise ValueError(f"label_names {list(label_names)}: expected one or more of {list(item_labels)}")
        self.label_names, self.item_labels = tuple(label_names), tuple(item_labels)
        self.columns = [self.item_labels.index(n) for n in self.label_names]
        self.num_outputs = len(self.label_names)

    def pairs(self, dataset, size, name):
        return LabelledImages(dataset, size, len(self.item_labels), name, columns=self.columns)

    def targets(self, pairs):
        return pairs.label_matrix(self.item_labels)

    def strata(self, targets):
        return targets

    def check_train(self, targets, where):
        known = known_mask(targets)
        if not known.any():
            raise ValueError(f"{where}: no definite (0/1) label for any of {list(self.label_names)} in its "
                             f"{len(targets)} images; a classifier trained on it learns nothing")
        # all-negative labels are what an unconditional set's defaults look like: the loss falls
        # to 0 by predicting "absent" everywhere and the AUROC sits at chance
        if not (targets[known] == 1).any():
            raise ValueError(f"{where}: no positive label for any of {list(self.label_names)} in its "
                             f"{len(targets)} images; a classifier trained on it learns nothing (an "
                             "unconditional set has no labels: judge it by pretraining, notebook 07)")

    def check_test(self, targets, where):
        known = known_mask(targets)
        both = [n for j, n in enumerate(self.label_names)
                if 0 < (targets[known[:, j], j] == 1).sum() < known[:, j].sum()]
        if not both:
            raise ValueError(f"{where}: no finding of {list(self.label_names)} has both a positive and a negative "
                             f"label among its {len(targets)} images; AUROC is undefined")

    def model(self, encoder, frozen, image_size):
        return Classifier(encoder, self.num_outputs, frozen)

    def loss(self, batch, step):
        x, y = batch
        return masked_bce(self.models[0](self._to_device(x)), self._to_device(y))

    @torch.inference_mode()
    def collect(self, model, pairs, batch_size):
        device, labels, scores = _device(model), [], []
        for x, y in _loader(pairs, batch_size):
            scores.append(torch.sigmoid(model(x.to(device))).float().cpu().numpy())
            labels.append(y.numpy())
        return {"labels": np.concatenate(labels).astype(np.float64),
                "scores": np.concatenate(scores).astype(np.float64), "reasons": {}}

    def knn(self, bank, bank_targets, queries, query_targets, k: int, temperature: float) -> dict:
        """Per finding, a vote of the ``k`` nearest training images that have a definite label for it."""
        known = known_mask(bank_targets)
        scores = np.full((len(queries), self.num_outputs), np.nan)
        reasons = {}
        for j, name in enumerate(self.label_names):
            reasons[name] = metrics.too_few(int(known[:, j].sum()), k,
                                            f"training images with a definite label for k={k}")
            if not reasons[name]:
                scores[:, j] = knn_vote(bank[known[:, j]], bank_targets[known[:, j], j], queries, k, temperature)
        return {"labels": np.asarray(query_targets, np.float64), "scores": scores,
                "reasons": {n: r for n, r in reasons.items() if r}}

    def score(self, outputs, train_targets, *, n_boot, seed, confidence, min_test):
        reasons = dict(outputs["reasons"])
        for j, name in enumerate(self.label_names):
            y = train_targets[:, j]
            if name not in reasons and not (y == 1).any():
                reasons[name] = "no positive training label"
            elif name not in reasons and not (y == 0).any():
                reasons[name] = "no negative training label"
        common = dict(n_boot=n_boot, seed=seed, confidence=confidence, min_test=min_test, reasons=reasons)
        return (metrics.auroc_rows(outputs["labels"], outputs["scores"], self.label_names, **common)
                + metrics.f1_rows(outputs["labels"], outputs["scores"], self.label_names, threshold=0.5, **common))


class MultiClassClassification(HeadTask):
    """One class per image (e.g. COVIDx's normal / pneumonia / COVID-19): cross-entropy, accuracy.
    Items carry the class (a name of ``classes`` or an index) under ``key``."""

    name = "multiclass"

    def __init__(self, classes: Sequence[str], key: str = "class"):
        if len(classes) < 2:
            raise ValueError(f"classes {list(classes)}: expected at least two")
        self.classes, self.item_key = tuple(classes), key
        self.num_outputs = len(self.classes)

    def pairs(self, dataset, size, name):
        return ClassImages(dataset, size, self.classes, self.item_key, name)

    def targets(self, pairs):
        return np.array([pairs.target_of(i) for i in range(len(pairs))], dtype=np.int64)

    def strata(self, targets):
        return np.eye(self.num_outputs)[targets]

    def check_train(self, targets, where):
        present = sorted({self.classes[c] for c in np.unique(targets)})
        if len(present) < 2:
            raise ValueError(f"{where}: its {len(targets)} images hold {present or 'no class'} only; "
                             f"a classifier needs at least two classes of {list(self.classes)}")

    def check_test(self, targets, where):
        if not len(targets):
            raise ValueError(f"{where}: no image to score")

    def model(self, encoder, frozen, image_size):
        return Classifier(encoder, self.num_outputs, frozen)

    def loss(self, batch, step):
        x, y = batch
        return F.cross_entropy(self.models[0](self._to_device(x)), self._to_device(y))

    @torch.inference_mode()
    def collect(self, model, pairs, batch_size):
        device, classes, probabilities = _device(model), [], []
        for x, y in _loader(pairs, batch_size):
            probabilities.append(torch.softmax(model(x.to(device)), dim=1).float().cpu().numpy())
            classes.append(np.asarray(y))
        return {"classes": np.concatenate(classes), "probabilities": np.concatenate(probabilities), "reason": ""}

    def knn(self, bank, bank_targets, queries, query_targets, k, temperature):
        reason = metrics.too_few(len(bank), k, f"training images for k={k}")
        probabilities = (np.full((len(queries), self.num_outputs), np.nan) if reason else
                         knn_vote(bank, np.eye(self.num_outputs)[bank_targets], queries, k, temperature))
        return {"classes": np.asarray(query_targets), "probabilities": probabilities, "reason": reason}

    def score(self, outputs, train_targets, *, n_boot, seed, confidence, min_test):
        predicted = np.nan_to_num(outputs["probabilities"]).argmax(axis=1)
        return [metrics.accuracy_row(outputs["classes"], predicted, n_boot=n_boot, seed=seed, confidence=confidence,
                                     min_test=min_test, reason=outputs["reason"])]


# ------------------------------------------------------------------------------------ dense tasks
class Segmentation(HeadTask):
    """Binary masks: smp's U-Net decoder on the encoder's maps, BCE + soft Dice, pooled Dice at
    ``threshold``."""

    name = "segmentation"
    dense = True

    def __init__(self, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), threshold: float = 0.5):
        self.decoder_channels, self.threshold = tuple(decoder_channels), threshold

    def pairs(self, dataset, size, name):
        return MaskedImages(dataset, size, name)

    def targets(self, pairs):
        """Mask pixels per image."""
        return np.array([float(pairs.target_of(i).sum()) for i in range(len(pairs))])

    def strata(self, targets):
        return (targets > 0).astype(np.float64)[:, None]

    def check_train(self, targets, where):
        if not (targets > 0).any():
            raise ValueError(f"{where}: none of its {len(targets)} masks has a foreground pixel; "
                             f"a decoder trained on it learns nothing")

    def check_test(self, targets, where):
        if not (targets > 0).any():
            raise ValueError(f"{where}: none of its {len(targets)} masks has a foreground pixel; Dice is undefined")

    def model(self, encoder, frozen, image_size):
        return SegmentationModel(encoder, frozen, self.decoder_channels)

    def loss(self, batch, step):
        from segmentation_models_pytorch.losses import DiceLoss

        x, mask = batch
        logits, mask = self.models[0](self._to_device(x)), self._to_device(mask)
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        dice = DiceLoss("binary", from_logits=True)(logits, mask)
        return bce + dice, {"bce": bce.detach(), "dice": dice.detach()}

    @torch.inference_mode()
    def collect(self, model, pairs, batch_size):
        device, counts = _device(model), []
        for x, mask in _loader(pairs, batch_size):
            predicted = (torch.sigmoid(model(x.to(device))).float().cpu() > self.threshold).float()
            counts.append(torch.stack([(predicted * mask).flatten(1).sum(1), predicted.flatten(1).sum(1),
                                       mask.flatten(1).sum(1)], dim=1).numpy())
        return {"overlap": np.concatenate(counts)}

    def score(self, outputs, train_targets, *, n_boot, seed, confidence, min_test):
        return [metrics.dice_row(outputs["overlap"], n_boot=n_boot, seed=seed, confidence=confidence,
                                 min_test=min_test)]


class Detection(HeadTask):
    """Boxes of ``classes``: an FCOS head over a feature pyramid on the encoder's coarsest
    ``levels`` maps; mAP over IoU 0.40-0.75 (the MGCA protocol)."""

    name = "detection"
    dense = True
    collate_fn = staticmethod(collate_boxes)

    def __init__(self, classes: Sequence[str], levels: int = 3, channels: int = 64, head_convs: int = 2,
                 score_threshold: float = 0.05, detections_per_image: int = 100):
        if not classes:
            raise ValueError("classes: expected one or more box labels")
        if channels % 32:
            raise ValueError(f"channels {channels}: expected a multiple of 32 (the FCOS head's group norm)")
        self.classes, self.levels, self.channels = tuple(classes), levels, channels
        self.head_convs, self.score_threshold = head_convs, score_threshold
        self.detections_per_image = detections_per_image

    def pairs(self, dataset, size, name):
        return BoxedImages(dataset, size, self.classes, name)

    def targets(self, pairs):
        """Boxes per image and class (N, K)."""
        counts = np.zeros((len(pairs), len(self.classes)))
        for i in range(len(pairs)):
            np.add.at(counts[i], pairs.target_of(i)["labels"].numpy(), 1)
        return counts

    def strata(self, targets):
        return (targets > 0).astype(np.float64)

    def check_train(self, targets, where):
        if not targets.any():
            raise ValueError(f"{where}: none of its {len(targets)} images has a box of {list(self.classes)}; "
                             f"a detector trained on it learns nothing")

    def check_test(self, targets, where):
        if not targets.any():
            raise ValueError(f"{where}: none of its {len(targets)} images has a box of {list(self.classes)}; "
                             f"mAP is undefined")

    def model(self, encoder, frozen, image_size):
        return detector(encoder, len(self.classes), image_size, frozen, self.levels, self.channels,
                        self.head_convs, self.score_threshold, self.detections_per_image)

    def loss(self, batch, step):
        images, targets = batch
        targets = [{k: self._to_device(v) for k, v in t.items()} for t in targets]
        parts = self.models[0](list(self._to_device(images)), targets)
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    @torch.inference_mode()
    def collect(self, model, pairs, batch_size):
        device, predictions, targets = _device(model), [], []
        for images, truth in _loader(pairs, batch_size, collate_boxes):
            for found in model(list(images.to(device))):
                predictions.append({k: v.cpu() for k, v in found.items()})
            targets += truth
        return {"predictions": predictions, "targets": targets}

    def score(self, outputs, train_targets, *, n_boot, seed, confidence, min_test):
        return [metrics.map_row(outputs["predictions"], outputs["targets"], n_boot=n_boot, seed=seed,
                                confidence=confidence, min_test=min_test)]
