"""Inception-v3 FID exactly as the field computes it, from a local weights file, never downloading.

The computation is torchmetrics' ``FrechetInceptionDistance`` over torch-fidelity's
``FeatureExtractorInceptionV3`` (the TF "pt_inception-2015-12-05" graph ported to PyTorch):

- inputs are uint8 images; a grayscale radiograph is repeated to 3 channels (R = G = B);
  float images in [0, 1] are converted by ``round(x * 255)``;
- each image is resized to 299 x 299 *inside* the extractor with bilinear interpolation; with the
  default ``antialias=False`` this is torch-fidelity's TF1-compatible bilinear resize, i.e. the
  resize of the original TensorFlow FID; ``antialias=True`` is torchmetrics' own default and gives
  different numbers (compare only FIDs computed with the same setting, same size, same format);
- pixels are scaled as ``(x - 128) / 128`` and the 2048-d pool3 features are accumulated in float64;
- FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

The weights file may be the torch-fidelity ``.pth`` state dict or a safetensors conversion of it.
It is read with ``weights_only=True`` (or safetensors) here; torch-fidelity's own loader unpickles
without that guard, so it is only ever handed a temporary copy holding the verified tensors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from support.data.images import to_uint8

from .images import as_image_set

FID_FEATURES = 2048                      # pool3: the standard FID feature layer
FEATURE_LAYERS = (64, 192, 768, 2048)    # the layers torch-fidelity exposes (others are non-standard)
STANDARD_WEIGHTS = "pt_inception-2015-12-05"


def _require_torch_fidelity():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise ImportError("Inception FID needs the torch-fidelity package (pinned in environments/); "
                          "it provides torchmetrics' Inception-v3 feature extractor") from exc


@contextlib.contextmanager
def _verified_weights_file(weights_path: str | os.PathLike) -> Iterator[str]:
    """Load the weights safely and yield a temporary tensors-only copy for torch-fidelity to read."""
    from support.io import load_state_dict

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception-v3 weights file not found (expected the FID weights "
                                f"{STANDARD_WEIGHTS} as a .pth state dict or .safetensors)")
    try:
        state = load_state_dict(path)
    except Exception as exc:
        raise ValueError(f"{path}: could not read Inception-v3 weights as a tensors-only state dict "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    if "fc.weight" not in state or tuple(state["fc.weight"].shape) != (1008, FID_FEATURES):
        raise ValueError(f"{path}: not the FID Inception-v3 ({STANDARD_WEIGHTS}): "
                         f"expected fc.weight of shape (1008, 2048)")
    with tempfile.TemporaryDirectory(prefix="fid-weights-") as tmp:
        copy = os.path.join(tmp, "inception.pth")
        torch.save(state, copy)
        yield copy


class InceptionFID:
    """Accumulates real and synthetic Inception statistics; real statistics survive ``reset_fake``.

    Build one per evaluation, ``update(real_images, real=True)`` once, then for each synthetic set
    ``update(..., real=False)``, ``compute()`` and ``reset_fake()``.
    """

    def __init__(self, weights_path: str | os.PathLike, antialias: bool = False,
                 device: str = "auto", batch_size: int = 32, feature_dim: int = FID_FEATURES):
        _require_torch_fidelity()
        if feature_dim not in FEATURE_LAYERS:
            raise ValueError(f"feature_dim must be one of {FEATURE_LAYERS} (Inception layers), got {feature_dim}")
        from torchmetrics.image.fid import FrechetInceptionDistance
        from support.devices import pick_device

        self.device = pick_device(device)
        self.batch_size = batch_size
        self.antialias = antialias
        self.feature_dim = feature_dim
        self.weights_path = Path(weights_path)
        with _verified_weights_file(weights_path) as copy:
            try:
                self.metric = FrechetInceptionDistance(
                    feature=feature_dim, reset_real_features=False, normalize=False,
                    feature_extractor_weights_path=copy, antialias=antialias)
            except RuntimeError as exc:  # load_state_dict key/shape mismatch
                raise ValueError(f"{weights_path}: weights do not fit torch-fidelity's "
                                 f"FeatureExtractorInceptionV3 ({exc})") from None
        self.metric = self.metric.to(self.device)

    def update(self, images: Any, real: bool, name: str | None = None) -> int:
        """Add an image set (any source ``as_image_set`` accepts); returns the number of images.
        Images of different sizes (a real dataset's files) are batched by size, so each reaches
        the extractor's 299-px resize as saved."""
        from tqdm.auto import tqdm

        image_set = as_image_set(images, name=name or ("real" if real else "synthetic"))
        pending: dict[tuple, list[torch.Tensor]] = {}
        n = 0
        for i in tqdm(range(len(image_set)), desc=f"FID {image_set.name}", leave=False):
            image = image_set[i]
            same = pending.setdefault(tuple(image.shape), [])
            same.append(image)
            if len(same) == self.batch_size:
                n += self._add(pending.pop(tuple(image.shape)), real)
        for same in pending.values():
            n += self._add(same, real)
        return n

    def _add(self, images: list[torch.Tensor], real: bool) -> int:
        self.metric.update(fid_input(torch.stack(images)).to(self.device), real=real)
        return len(images)

    @property
    def has_real(self) -> bool:
        return int(self.metric.real_features_num_samples) > 0

    def compute(self) -> float:
        return float(self.metric.compute())

    def reset_fake(self) -> None:
        self.metric.reset()  # reset_real_features=False keeps the real statistics

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features (``feature_dim``, 2048-d pool3 by default) of float images (N, 1, H, W) in [0, 1]."""
        with torch.inference_mode():
            return self.metric.inception(fid_input(images).to(self.device)).float().cpu()


def fid_input(images: torch.Tensor) -> torch.Tensor:
    """Float (N, 1|3, H, W) in [0, 1] or uint8 -> uint8 (N, 3, H, W), grayscale repeated to RGB."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"FID input: expected (N, 1, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def inception_fid(real: Any, synthetic: Any, weights_path: str | os.PathLike, antialias: bool = False,
                  device: str = "auto", batch_size: int = 32, feature_dim: int = FID_FEATURES) -> float:
    """FID between two image sets on the standard Inception-v3 (see the module docstring)."""
    fid = InceptionFID(weights_path, antialias=antialias, device=device, batch_size=batch_size,
                       feature_dim=feature_dim)
    fid.update(real, real=True)
    fid.update(synthetic, real=False)
    return fid.compute()


class InceptionEncoder:
    """Inception-v3 pool3 features as a ``FeatureEncoder`` (for KID or precision/recall on Inception)."""

    def __init__(self, weights_path: str | os.PathLike, antialias: bool = False, device: str = "auto"):
        self._fid = InceptionFID(weights_path, antialias=antialias, device=device)
        self.name = f"inception-v3:{self._fid.weights_path.name}"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._fid.features(images)
