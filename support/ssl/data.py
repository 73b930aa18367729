"""Multi-crop views of radiographs for DINO: lightly's ``DINOTransform`` set for 1-channel images.

Each item's crops are drawn with the global generators seeded by (seed, epoch, item) and put back
afterwards, so the same epoch gives the same views whatever the worker count, and a resumed run
sees the views of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from support.core.images import to_unit_float
from support.ssl.config import CropConfig


def dino_transform(crops: CropConfig):
    """lightly's ``DINOTransform`` with the grayscale choices of :mod:`support.ssl.config`: no flip,
    no saturation/hue jitter, no random grayscale, no normalisation (the encoder scales its input)."""
    from lightly.transforms import DINOTransform

    return DINOTransform(global_crop_size=crops.global_size, global_crop_scale=tuple(crops.global_scale),
                         local_crop_size=crops.local_size, local_crop_scale=tuple(crops.local_scale),
                         n_local_views=crops.local_views, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0,
                         cj_prob=crops.jitter_prob, cj_strength=1.0, cj_bright=crops.brightness,
                         cj_contrast=crops.contrast, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0,
                         gaussian_blur=tuple(crops.blur_probs), solarization_prob=crops.solarization_prob,
                         normalize=None)


class MultiCropImages(torch.utils.data.Dataset):
    """Views ``[global_1, global_2, local_1, ...]`` (each (1, S, S) in [0, 1]) of a dataset's images
    (items with an ``"image"`` in [0, 1], or image tensors)."""

    def __init__(self, dataset, crops: CropConfig, seed: int = 0, name: str = "images"):
        self.dataset, self.crops, self.seed, self.name = dataset, crops, int(seed), name
        self.transform = dino_transform(crops)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Views of epoch ``epoch`` (the trainer calls this before each epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        from PIL import Image

        item: Any = self.dataset[index]
        image = item["image"] if isinstance(item, dict) else item
        pixels = to_unit_float(image, f"{self.name}[{index}].image")[0]
        picture = Image.fromarray(np.rint(pixels.numpy() * 255).astype(np.uint8), mode="L")
        with seeded(np.random.SeedSequence([self.seed, self.epoch, int(index)])):
            return self.transform(picture)


@contextlib.contextmanager
def seeded(sequence: np.random.SeedSequence):
    """Torch's and numpy's global generators (what torchvision's and lightly's transforms draw from)
    seeded from ``sequence`` inside the block, and as they were after it."""
    torch_seed, numpy_seed = sequence.generate_state(2, np.uint32)
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch_seed))
            np.random.seed(int(numpy_seed))
            yield
    finally:
        np.random.set_state(numpy_state)
