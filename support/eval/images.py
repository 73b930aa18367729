"""Image sets as the metrics see them: float tensors (N, 1, H, W) in [0, 1], read in batches.

A set can be a numpy array or tensor ((N, H, W), (N, 1, H, W); uint8 or float in [0, 1]), a torch
Dataset whose items are tensors or dicts with an ``"image"`` entry (the loaders' convention), or a
list of image file paths (read by the data layer's reader, as the loaders read them). Every metric reads its input through :func:`as_image_set`, so a set on
disk and a set in memory take the same code path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from support.core.images import resize, to_unit_float
from support.data.images import read_image

class ImageSet(torch.utils.data.Dataset):
    """Random access to a set of images, each returned as float (1, H, W) in [0, 1]."""

    def __init__(self, source: Any, name: str = "images"):
        self.name = name
        self._array: torch.Tensor | None = None
        self._dataset = None
        self._paths: list[Path] | None = None
        if isinstance(source, ImageSet):
            self._array, self._dataset, self._paths = source._array, source._dataset, source._paths
        elif isinstance(source, (np.ndarray, torch.Tensor)):
            arr = torch.as_tensor(source) if isinstance(source, np.ndarray) else source
            if arr.ndim == 3:
                arr = arr.unsqueeze(1)
            if arr.ndim != 4 or arr.shape[1] not in (1, 3):
                raise ValueError(f"{name}: expected images (N, H, W) or (N, C, H, W) with C in (1, 3), "
                                 f"got shape {tuple(arr.shape)}")
            self._array = arr
        elif isinstance(source, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in source):
            self._paths = [Path(p) for p in source]
        elif isinstance(source, torch.utils.data.Dataset) or (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            self._dataset = source
        else:
            raise TypeError(f"{name}: expected an image array, a torch Dataset or a list of paths, "
                            f"got {type(source).__name__}")

    def __len__(self) -> int:
        if self._array is not None:
            return int(self._array.shape[0])
        if self._paths is not None:
            return len(self._paths)
        return len(self._dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        where = f"{self.name}[{index}]"
        if self._array is not None:
            return to_unit_float(self._array[index], where)
        if self._paths is not None:
            return to_unit_float(read_image(self._paths[index]), f"{where} ({self._paths[index]})")
        item = self._dataset[index]
        if isinstance(item, dict):
            if "image" not in item:
                raise KeyError(f"{where}: dataset item has no 'image' entry (keys: {sorted(item)})")
            item = item["image"]
        return to_unit_float(item, where)

    def batches(self, batch_size: int = 64, indices: Sequence[int] | None = None,
                size: int | None = None, num_workers: int = 0,
                desc: str | bool | None = None) -> Iterator[torch.Tensor]:
        """Yield float batches (B, 1, H, W); ``size`` resizes each image to a square first.
        ``desc`` labels the progress bar (default: the set's name); ``False`` hides it."""
        from tqdm.auto import tqdm

        subset = self if indices is None else torch.utils.data.Subset(self, list(indices))
        loader = torch.utils.data.DataLoader(
            subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=functools.partial(_stack, size=size, name=self.name))
        for batch in tqdm(loader, desc=desc or self.name, leave=False, disable=desc is False):
            yield batch

    def load(self, indices: Sequence[int] | None = None, size: int | None = None,
             batch_size: int = 64) -> torch.Tensor:
        """All (or the chosen) images in memory as one float tensor (N, 1, H, W)."""
        parts = list(self.batches(batch_size, indices, size=size, desc=False))
        if not parts:
            return torch.zeros((0, 1, size or 1, size or 1))
        return torch.cat(parts)


def _stack(items: list[torch.Tensor], size: int | None, name: str) -> torch.Tensor:
    if size is not None:
        items = [resize(t.unsqueeze(0), size).squeeze(0) for t in items]
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise ValueError(f"{name}: images of different sizes {sorted(shapes)} in one batch; "
                         f"pass a common size to resize them")
    return torch.stack(items)


def as_image_set(source: Any, name: str = "images") -> ImageSet:
    """Wrap any supported image source (see module docstring) as an :class:`ImageSet`."""
    return source if isinstance(source, ImageSet) else ImageSet(source, name=name)


def saved_files(images: Any, name: str | None = None) -> ImageSet:
    """The same images read from their files at the resolution they were saved in: a set backed by
    a loader Dataset (its ``records`` hold each ``path``), possibly a subset of one, becomes a set of
    those paths. Other sets (arrays, plain datasets) are returned as they are."""
    image_set = as_image_set(images, name=name or "images")
    source, indices = image_set._dataset, None
    while isinstance(source, (torch.utils.data.Subset, ImageSet)):
        if isinstance(source, ImageSet):
            if source._paths is not None:
                paths = [source._paths[i] for i in indices] if indices is not None else source._paths
                return ImageSet(paths, name=image_set.name)
            source = source._dataset
            continue
        indices = [source.indices[i] for i in indices] if indices is not None else list(source.indices)
        source = source.dataset
    records = getattr(source, "records", None)
    if records is None or "path" not in getattr(records, "columns", ()):
        return image_set
    paths = records["path"].tolist()
    return ImageSet([paths[i] for i in indices] if indices is not None else paths, name=image_set.name)
