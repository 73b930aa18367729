"""Feature spaces: the ``FeatureEncoder`` protocol and batched embedding of image sets.

Every distribution metric (FD, KID, precision/recall, the Turing test, the privacy audit) works
on an (N, D) feature matrix; where it comes from is an encoder with ``embed``. The default is the
reference encoder trained on the dataset (``reference_encoder``); Inception-v3 (``inception``), an
encoder folder of the downstream harness (07's DINO backbones: ``PretrainedEncoderFeatures``) and
a torchxrayvision DenseNet loaded from a local file are alternatives.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .images import as_image_set


@runtime_checkable
class FeatureEncoder(Protocol):
    """Anything that maps float images (N, 1, H, W) in [0, 1] to features (N, D)."""

    name: str

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


def embed_set(encoder: FeatureEncoder, images: Any, batch_size: int = 64, size: int | None = None,
              name: str = "images") -> np.ndarray:
    """Embed an image set (any source ``as_image_set`` accepts) -> float64 array (N, D)."""
    image_set = as_image_set(images, name=name)
    out = []
    with torch.inference_mode():
        for batch in image_set.batches(batch_size, size=size, desc=f"embed {name} ({encoder.name})"):
            feats = encoder.embed(batch)
            out.append(torch.as_tensor(feats).detach().double().cpu().numpy().reshape(len(batch), -1))
    if not out:
        raise ValueError(f"{name}: the image set is empty")
    return np.concatenate(out)


class TorchXRayVisionEncoder:
    """A torchxrayvision DenseNet-121 (e.g. "res224-all", 1024-d) from a local state-dict file.

    The published weights are pickled whole models; load them once where that is acceptable and
    save ``model.state_dict()`` as safetensors, then pass that file here (only tensors are read).
    Inputs are resized to 224 and scaled to [-1024, 1024] as the library's ``normalize`` does;
    features are the pooled 1024-d activations (``features2``).
    """

    def __init__(self, weights_path: str | os.PathLike, device: str = "auto", resolution: int = 224):
        try:
            import torchxrayvision as xrv
        except ImportError as exc:  # optional: not a dependency of the project
            raise ImportError("TorchXRayVisionEncoder needs the optional package torchxrayvision; "
                              "install it or use the reference encoder") from exc
        from support.devices import pick_device
        from support.io import load_state_dict

        state = load_state_dict(weights_path)
        state = {k: v for k, v in state.items() if k != "op_threshs"}
        if "classifier.weight" not in state:
            raise ValueError(f"{weights_path}: not a torchxrayvision DenseNet state dict "
                             f"(no classifier.weight among {len(state)} tensors)")
        model = xrv.models.DenseNet(weights=None, num_classes=int(state["classifier.weight"].shape[0]))
        model.load_state_dict(state, strict=True)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.resolution = resolution
        self.name = f"xrv-densenet121:{os.path.basename(os.fspath(weights_path))}"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                          align_corners=False, antialias=True)
        x = (2.0 * x - 1.0) * 1024.0
        with torch.inference_mode():
            return self.model.features2(x).float().cpu()


class PretrainedEncoderFeatures:
    """An encoder folder of :mod:`support.downstream` (e.g. 07's DINO teacher backbone,
    ``models/dino-<source>/encoder``) as a feature space: pooled features of images resized to
    the size it was built for."""

    def __init__(self, folder: str | os.PathLike, device: str = "auto"):
        from support.devices import pick_device
        from support.downstream.encoders import load_encoder_folder

        encoder = load_encoder_folder(folder)
        info = encoder.info
        self.device = pick_device(device)
        self.model = encoder.to(self.device)
        self.resolution = info["config"].get("image_size")
        where = info.get("source") or os.path.basename(os.path.dirname(os.path.abspath(folder)))
        self.name = f"{info.get('method', info['encoder'])}:{where}"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.resolution and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        with torch.inference_mode():
            return self.model.features(x).float().cpu()
