"""Datasets as the harness reads them: (image, target) pairs over a loader Dataset.

A loader Dataset yields dicts (``support.data.datasets``: ``image`` plus ``labels``, ``mask`` or
``boxes``/``box_labels``). A view checks each item, brings its image to (1, S, S) float in [0, 1]
(resized when a size is given) and pairs it with the target of one kind of task; errors name the
dataset, the index and the field.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from support.core.images import resize, to_unit_float


class Pairs(torch.utils.data.Dataset):
    """Base view: ``(image (1, S, S) in [0, 1], target)`` per item; subclasses make the target."""

    needs: tuple[str, ...] = ("image",)

    def __init__(self, dataset, size: int | None, name: str = "dataset"):
        self.dataset, self.size, self.name = dataset, size, name

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, index: int) -> tuple[dict, str]:
        item = self.dataset[index]
        where = f"{self.name}[{index}]"
        if not isinstance(item, dict) or any(key not in item for key in self.needs):
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(f"{where}: expected a dict with {', '.join(repr(k) for k in self.needs)}, got {got}")
        return item, where

    def _image(self, item: dict, where: str) -> torch.Tensor:
        image = to_unit_float(item["image"], f"{where}.image").unsqueeze(0)
        return (resize(image, self.size) if self.size else image).squeeze(0)

    def target(self, item: dict, where: str, image_shape: tuple[int, int]) -> Any:
        raise NotImplementedError

    def _target(self, item: dict, where: str) -> Any:
        return self.target(item, where, tuple(torch.as_tensor(item["image"]).shape[-2:]))

    def target_of(self, index: int) -> Any:
        """The target of one item (its image is not resized)."""
        return self._target(*self._read(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        item, where = self._read(index)
        return self._image(item, where), self._target(item, where)


class LabelledImages(Pairs):
    """(image, labels (L,) float) pairs: the item's ``labels`` (``num_labels`` long), the
    ``columns`` picked when given; NaN (unknown) and -1 (uncertain) are kept as they are."""

    needs = ("image", "labels")

    def __init__(self, dataset, size: int | None, num_labels: int, name: str = "dataset",
                 columns: Sequence[int] | None = None):
        super().__init__(dataset, size, name)
        self.num_labels = num_labels
        self.columns = None if columns is None else list(columns)

    def target(self, item: dict, where: str, image_shape) -> torch.Tensor:
        labels = torch.as_tensor(np.asarray(item["labels"], dtype=np.float32))
        if labels.shape != (self.num_labels,):
            raise ValueError(f"{where}.labels: expected shape ({self.num_labels},), got {tuple(labels.shape)}")
        return labels if self.columns is None else labels[self.columns]

    def label_matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        """The (N, L) labels of every item. ``names`` are the record-table columns behind the
        items' label vector: a dataset with a table holding them is read from it (no image
        read); any other is read item by item."""
        records = getattr(self.dataset, "records", None)
        if names is not None and records is not None and all(n in records.columns for n in names):
            out = records[list(names)].to_numpy(dtype=np.float64)
            return out if self.columns is None else out[:, self.columns]
        rows = [self.target_of(i).numpy() for i in range(len(self))]
        width = self.num_labels if self.columns is None else len(self.columns)
        return np.stack(rows).astype(np.float64) if rows else np.zeros((0, width))


class ClassImages(Pairs):
    """(image, class index) pairs; the item's ``key`` holds a class name of ``classes`` or an index."""

    def __init__(self, dataset, size: int | None, classes: Sequence[str], key: str = "class",
                 name: str = "dataset"):
        super().__init__(dataset, size, name)
        self.classes, self.key = list(classes), key
        self.needs = ("image", key)

    def target(self, item: dict, where: str, image_shape) -> int:
        value = item[self.key]
        if isinstance(value, str):
            if value not in self.classes:
                raise ValueError(f"{where}.{self.key}: class {value!r}, expected one of {self.classes}")
            return self.classes.index(value)
        index = int(value)
        if not 0 <= index < len(self.classes):
            raise ValueError(f"{where}.{self.key}: class index {index}, expected 0..{len(self.classes) - 1}")
        return index


class MaskedImages(Pairs):
    """(image, mask (1, S, S) float {0, 1}) pairs from items with a ``mask``."""

    needs = ("image", "mask")

    def target(self, item: dict, where: str, image_shape) -> torch.Tensor:
        mask = torch.as_tensor(item["mask"]).float()
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.shape != (1, *image_shape):
            raise ValueError(f"{where}.mask: expected shape (1, {image_shape[0]}, {image_shape[1]}) like the image, "
                             f"got {tuple(mask.shape)}")
        if self.size and mask.shape[-2:] != (self.size, self.size):
            mask = F.interpolate(mask[None], size=(self.size, self.size), mode="nearest")[0]
        return (mask > 0.5).float()


class BoxedImages(Pairs):
    """(image, {"boxes" (N, 4) x0 y0 x1 y1 pixels, "labels" (N,) class index}) pairs from items
    with ``boxes`` and ``box_labels``; boxes of labels not in ``classes`` are left out."""

    needs = ("image", "boxes", "box_labels")

    def __init__(self, dataset, size: int | None, classes: Sequence[str], name: str = "dataset"):
        super().__init__(dataset, size, name)
        self.classes = list(classes)

    def target(self, item: dict, where: str, image_shape) -> dict[str, torch.Tensor]:
        boxes = torch.as_tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4)
        names = list(item["box_labels"])
        if len(names) != len(boxes):
            raise ValueError(f"{where}: {len(boxes)} boxes but {len(names)} box_labels")
        keep = [i for i, n in enumerate(names) if n in self.classes]
        boxes = boxes[keep]
        if self.size:
            h, w = image_shape
            boxes = boxes * torch.tensor([self.size / w, self.size / h] * 2)
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # shrinking can flatten a box
        labels = torch.tensor([self.classes.index(names[i]) for i in keep], dtype=torch.long)
        return {"boxes": boxes[positive], "labels": labels[positive]}


def collate_boxes(pairs: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Batch (image, box target) pairs: images stacked, targets kept per image."""
    return torch.stack([image for image, _ in pairs]), [target for _, target in pairs]


def patient_ids(dataset, name: str = "dataset") -> np.ndarray:
    """One patient id per item: the record table's ``subject_id`` when there is one, else each
    item's ``subject_id``."""
    records = getattr(dataset, "records", None)
    if records is not None and "subject_id" in records.columns:
        return records["subject_id"].astype(str).to_numpy()
    ids = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, dict) or "subject_id" not in item:
            raise ValueError(f"{name}[{i}]: no 'subject_id' to draw patients by; pass groups "
                             f"(one patient id per item)")
        ids.append(str(item["subject_id"]))
    return np.asarray(ids)
