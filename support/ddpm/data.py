"""Training images for the command line: a folder of images or a MIMIC-CXR-JPG-layout root.

Preprocessing as I-SynMed: grayscale, resize the shorter side, centre-crop, scale to [-1, 1];
no flips (a flipped chest X-ray puts the heart on the wrong side).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch

from support.params import Check, Checked

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class ImageDataConfig(Checked):
    """Where the training (and validation) images are."""

    train: Path
    val: Path | None = None                 # another folder/root; None: the MIMIC root's val_split
    train_split: str = "train"              # splits and views apply to MIMIC-CXR-JPG-layout roots
    val_split: str = "validate"
    views: tuple[str, ...] = ("PA", "AP")
    limit: int | None = None                # at most this many training images (sorted order)

    title = "image data parameters"

    def checks(self) -> Iterable[Check]:
        yield len(self.views) > 0, "views", "a non-empty list of views"
        yield self.limit is None or self.limit >= 1, "limit", "at least 1, or null for all"


def load_image(path: str | os.PathLike, size: int, channels: int = 1) -> torch.Tensor:
    """One image file -> float32 (channels, size, size) in [-1, 1]: the data layer's reader
    (every failure an ``ImageReadError`` naming the file), short side resized, centre crop."""
    from support.data.images import fit_square, read_image

    arr = fit_square(read_image(path), size, "crop")
    image = torch.from_numpy(arr * 2.0 - 1.0)[None]
    return image.expand(channels, -1, -1).contiguous() if channels > 1 else image


class ImageFiles(torch.utils.data.Dataset):
    """Items ``{"image": (C, size, size) float in [-1, 1], "path": str}`` of a list of files."""

    def __init__(self, files, size: int, channels: int = 1):
        self.files = [Path(f) for f in files]
        self.size, self.channels = int(size), int(channels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        return {"image": load_image(path, self.size, self.channels), "path": str(path)}


def _mimic_files(root: Path, split: str | None, views) -> list[Path]:
    """Files of a MIMIC-CXR-JPG-layout root through the data layer's adapter (its checks, its
    skipped-record accounting), filtered by split and view."""
    from support.data.adapters import load_dataset

    records, summary = load_dataset("mimic-cxr-jpg", root, reports=False, labels="none",
                                    views=list(views) if views else None)
    if split:
        records = records[records["split"] == split]
    if summary.n_skipped:  # a large dataset keeps going; the summary says what is absent and why
        warnings.warn(str(summary), stacklevel=2)
    return sorted(Path(p) for p in records["path"])


def list_images(root: str | os.PathLike, split: str | None = None, views=None) -> list[Path]:
    """Image files of a MIMIC-CXR-JPG-layout root (by split and view) or, otherwise, of a folder tree."""
    from support.data.writer import METADATA_CSV

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    if (root / METADATA_CSV).is_file():
        files = _mimic_files(root, split, views)
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no images found (split={split!r}, views={views!r})")
    return files


def image_datasets(cfg: ImageDataConfig, size: int, channels: int = 1) -> tuple[ImageFiles, ImageFiles | None]:
    """Training and validation datasets of ``cfg`` (validation None when there is none)."""
    from support.data.writer import METADATA_CSV

    cfg = cfg.validate()
    train_files = list_images(cfg.train, cfg.train_split, cfg.views)
    if cfg.limit is not None:
        train_files = train_files[:cfg.limit]
    val_files = None
    if cfg.val is not None:
        val_files = list_images(cfg.val, cfg.val_split, cfg.views)
    elif (Path(cfg.train) / METADATA_CSV).is_file():
        try:
            val_files = list_images(cfg.train, cfg.val_split, cfg.views)
        except FileNotFoundError:
            val_files = None
    val = ImageFiles(val_files, size, channels) if val_files else None
    return ImageFiles(train_files, size, channels), val


class SyntheticDiscs(torch.utils.data.Dataset):
    """Procedural images for tests and benchmarks: one soft-edged bright disc per image.

    Each image has a random centre and radius drawn from ``seed``, so a model that learns the set
    must learn a shape with a position distribution, not a constant.
    """

    def __init__(self, n: int, size: int, seed: int = 0, channels: int = 1):
        g = torch.Generator().manual_seed(int(seed))
        axis = torch.linspace(-1.0, 1.0, int(size))
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        centre = torch.rand(int(n), 2, generator=g) - 0.5
        radius = torch.rand(int(n), generator=g) * 0.3 + 0.2
        dist = ((xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2).sqrt()
        disc = torch.sigmoid((radius[:, None, None] - dist) * 20.0) * 2.0 - 1.0
        self.images = disc[:, None].expand(-1, int(channels), -1, -1).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}
