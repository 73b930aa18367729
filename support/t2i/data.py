"""Image-caption pairs for text-to-image training, read from a record table.

Each item is ``{"pixel_values": (C, R, R) float in [-1, 1], "caption": str, ...ids}``. The image
is resized so its short side is ``R`` and cropped to a square: at random (the original's
augmentation) or in the centre; never flipped, which would put the heart on the right. A random
crop is a pure function of (seed, epoch, item), so a resumed run sees the crops of an
uninterrupted one. ``domain`` (a :class:`support.t2i.domain.SourceDomain`) renders each image in
the base model's source domain. Unreadable images are skipped and counted as in every record dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from support.data.datasets import ImageDataset, ImageOptions
from support.data.images import apply_fit, square_fit
from support.t2i.captions import record_caption
from support.t2i.config import DEFAULT_TEMPLATE, check_template


class CaptionedImages(ImageDataset):
    """Frontal images (by default) of the chosen splits with their report captions."""

    kind = "captioned images"

    def __init__(self, records: pd.DataFrame, resolution: int, *, channels: int = 1,
                 template: str = DEFAULT_TEMPLATE, text_source: str = "findings+impression",
                 views: Sequence[str] | None = ("PA", "AP"), splits: Sequence[str] | None = ("train",),
                 random_crop: bool = True, seed: int = 0, strict: bool = False, domain=None):
        check_template(template, "CaptionedImages template")
        self.domain = domain if domain is not None and not domain.is_identity() else None
        self.template, self.text_source = template, text_source
        self.splits = tuple(splits) if splits else None
        self.random_crop, self.seed, self.epoch = bool(random_crop), int(seed), 0
        options = ImageOptions(size=int(resolution), channels=int(channels), value_range=(-1.0, 1.0), fit="crop")
        super().__init__(records, options, views=views, strict=strict)
        self.captions = [record_caption(r, template, text_source) for r in self.records.to_dict("records")]

    def _select(self, records: pd.DataFrame) -> pd.DataFrame:
        records = super()._select(records)
        if self.splits is None:
            return records
        if "split" not in records.columns:
            raise ValueError("record table lacks column 'split'; build it with support.data.adapters")
        keep = records["split"].isin(self.splits)
        self.summary.exclude("split not selected", int((~keep).sum()))
        return records[keep].reset_index(drop=True)

    def set_epoch(self, epoch: int) -> None:
        """Random crops of epoch ``epoch`` (call before building that epoch's DataLoader)."""
        self.epoch = int(epoch)

    def _item(self, i: int) -> dict[str, Any]:
        rec = self.records.iloc[i]
        arr = self._read(rec["path"])
        if self.domain is not None:     # the base model's source domain (support.t2i.domain)
            arr = self.domain(arr)
        size = self.options.size
        fit = square_fit(*arr.shape, size, "crop")
        if self.random_crop and (fit.new_w > size or fit.new_h > size):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
            fit = dataclasses.replace(fit, dx=-int(rng.integers(0, fit.new_w - size + 1)),
                                      dy=-int(rng.integers(0, fit.new_h - size + 1)))
        return {"pixel_values": self._to_tensor(apply_fit(arr, fit), None), "caption": self.captions[i],
                **self._ids(rec)}


class SyntheticCaptioned(torch.utils.data.Dataset):
    """Procedural image-caption pairs for benchmarks and tests: a bright disc per image whose
    caption says where it is, so the text matters to a model that learns the set."""

    def __init__(self, n: int, resolution: int, channels: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(int(seed))
        axis = torch.linspace(-1.0, 1.0, int(resolution))
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        side = torch.randint(0, 2, (int(n),), generator=g)
        cx = torch.where(side == 0, -0.45, 0.45) + (torch.rand(int(n), generator=g) - 0.5) * 0.2
        cy = (torch.rand(int(n), generator=g) - 0.5) * 0.6
        radius = torch.rand(int(n), generator=g) * 0.15 + 0.2
        dist = ((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2).sqrt()
        disc = torch.sigmoid((radius[:, None, None] - dist) * 20.0) * 2.0 - 1.0
        self.images = disc[:, None].expand(-1, int(channels), -1, -1).contiguous()
        self.captions = [f"view_position = PA. modality = CR. Opacity in the {'right' if s == 0 else 'left'} "
                         f"hemithorax." for s in side.tolist()]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.images[index], "caption": self.captions[index]}
