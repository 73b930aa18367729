"""Typed parameters of DINO pretraining and its profiles (``test``, ``quick``, ``full``).

``full`` is I-SynMed's configuration (reference.md §2): ViT-S/16 (384-d); head 384 -> 512 -> 512 ->
64 (L2) -> 2,048 weight-normalised prototypes, last layer frozen in epoch 0; teacher temperature
0.04 (warm-up 5 epochs), student 0.1, centre momentum 0.9; 2 global crops of 224 px (scale 0.4-1)
and 6 local crops of 96 px (0.05-0.4); Adam, lr 1e-3, batch 32, 500 epochs; teacher momentum
cosine 0.996 -> 1. ``quick`` and ``test`` are a small ViT at 64 and 32 px on the same code path.

The published values assume ImageNet-scale runs: hundreds of thousands of updates on varied
images. Hundreds of updates on a few hundred similar radiographs end in DINO's uniform collapse
with them (the loss climbs to ln K within 30 updates and the encoder stays at its random start,
for real and synthetic images alike). ``quick`` therefore takes DINO's and lightly's own options
for small data, each for a reason:
- batch norm in the head (lightly's ``batch_norm``, as its ResNet recipes): similar images give
  head outputs that differ little from the batch mean, so the centred teacher is flat;
- prototypes of free norm (DINO's ``norm_last_layer=False``) and 64 of them: faster learning, and
  a few hundred images hold few modes;
- teacher momentum from 0.99: at 0.996 the teacher averages 250 updates, most of a short run;
- Adam at 5e-4, half the published rate, for a small ViT trained from scratch;
- crops of 0.5-1 (global) and 0.2-0.5 (local) of the image, no solarization: a 5 % crop of a
  64 px image is a 14 px patch of texture.
Measured on a 500-patient phantom, 1,000 updates: loss 3.73 against ln 64 = 4.16, findings
linear-probe AUROC 0.60 against 0.56 at random init, pneumonia 0.63 against 0.51; the published
values at the same size and budget: loss at ln K, no gain.

Grayscale radiographs take DINO's augmentations deliberately:
- kept: random resized crops, brightness and contrast jitter (exposure and window vary between
  films), Gaussian blur (focus and detector blur), solarization (an intensity inversion, as
  MONOCHROME1 films and inverted displays show);
- dropped: saturation and hue jitter and random grayscale (a gray image has no colour to change)
  and horizontal flips (a mirrored chest puts the heart on the right: a different anatomy, not
  the same one seen again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

from support.core.config import LoopConfig, profile_reader
from support.downstream.backbones import ViTConfig
from support.params import Check, Checked


@dataclass
class HeadConfig(Checked):
    """lightly's ``DINOProjectionHead``: MLP to a bottleneck, L2-normalised, then the prototypes."""

    hidden_dim: int = 512
    bottleneck_dim: int = 64
    prototypes: int = 2048
    freeze_last_layer_epochs: int = 1          # the prototypes stay fixed this many epochs
    batch_norm: bool = False
    norm_last_layer: bool = True               # prototypes of fixed norm (DINO's ViT default); False learns faster

    def checks(self) -> Iterable[Check]:
        yield self.hidden_dim > 0 and self.bottleneck_dim > 0, "hidden_dim", "positive (and bottleneck_dim too)"
        yield self.prototypes > 1, "prototypes", "at least 2"
        yield self.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs", "0 or more"


@dataclass
class CropConfig(Checked):
    """Multi-crop views (lightly's ``DINOTransform``) for 1-channel radiographs."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_views: int = 6
    jitter_prob: float = 0.8
    brightness: float = 0.4                    # jitter strengths (DINO's 0.5 x 0.8)
    contrast: float = 0.4
    blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5)   # first global, second global, locals
    solarization_prob: float = 0.2

    def checks(self) -> Iterable[Check]:
        yield self.global_size >= 8 and self.local_size >= 8, "global_size", "at least 8 pixels (local_size too)"
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            yield 0 < lo <= hi <= 1, name, "(low, high) with 0 < low <= high <= 1"
        yield self.local_views >= 0, "local_views", "0 or more"
        yield 0 <= self.jitter_prob <= 1 and 0 <= self.solarization_prob <= 1, "jitter_prob", \
            "a probability (solarization_prob too)"
        yield all(0 <= p <= 1 for p in self.blur_probs), "blur_probs", "three probabilities"


@dataclass
class LossConfig(Checked):
    """lightly's ``DINOLoss``: teacher sharpening with a warm-up, student temperature, centring."""

    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 5
    student_temp: float = 0.1
    center_momentum: float = 0.9

    def checks(self) -> Iterable[Check]:
        yield self.teacher_temp > 0 and self.warmup_teacher_temp > 0, "teacher_temp", "positive (and its warm-up)"
        yield self.student_temp > 0, "student_temp", "positive"
        yield 0 <= self.center_momentum < 1, "center_momentum", "in [0, 1)"
        yield self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs", "0 or more"


@dataclass
class DINOTrainConfig(LoopConfig):
    """The loop (I-SynMed's values) plus the teacher's momentum schedule."""

    max_steps: int | None = None
    epochs: int | None = 500
    batch_size: int = 32
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = 1e-3
    max_grad_norm: float = 3.0
    momentum_start: float = 0.996              # teacher EMA momentum, cosine to momentum_end
    momentum_end: float = 1.0

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield 0 <= self.momentum_start <= self.momentum_end <= 1, "momentum_start", \
            "in [0, momentum_end], with momentum_end <= 1"


@dataclass
class DINOConfig(Checked):
    """DINO pretraining: the backbone, the projection head, the crops, the loss and the loop."""

    title = "DINO parameters"

    backbone: ViTConfig = field(default_factory=ViTConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: DINOTrainConfig = field(default_factory=DINOTrainConfig)
    init_weights: str = ""          # a local timm ViT checkpoint (e.g. ImageNet ViT-S/16) to start from; "": random

    def checks(self) -> Iterable[Check]:
        from pathlib import Path

        yield from super().checks()
        yield not self.init_weights or Path(self.init_weights).is_file(), "init_weights", \
            f"an existing local weights file, or empty (got {self.init_weights!r})"
        yield self.crops.global_size % self.backbone.patch_size == 0, "crops.global_size", \
            f"a multiple of backbone.patch_size ({self.backbone.patch_size})"
        yield self.crops.local_size % self.backbone.patch_size == 0, "crops.local_size", \
            f"a multiple of backbone.patch_size ({self.backbone.patch_size})"


# ------------------------------------------------------------------------------------- profiles
PROFILES: dict[str, DINOConfig] = {
    "full": DINOConfig(),
    # A small ViT at 64 px for the CPU demo; the same code path as ``full``.
    "quick": DINOConfig(
        backbone=ViTConfig(image_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3),
        head=HeadConfig(hidden_dim=256, bottleneck_dim=64, prototypes=64, batch_norm=True, norm_last_layer=False),
        crops=CropConfig(global_size=64, global_scale=(0.5, 1.0), local_size=32, local_scale=(0.2, 0.5),
                         local_views=2, solarization_prob=0.0),
        loss=LossConfig(warmup_teacher_temp_epochs=2),
        train=DINOTrainConfig(epochs=6, batch_size=32, learning_rate=5e-4, momentum_start=0.99,
                              checkpoint_every=200, checkpoints_total_limit=1, log_every=5)),
    "test": DINOConfig(
        backbone=ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2),
        head=HeadConfig(hidden_dim=32, bottleneck_dim=16, prototypes=64),
        crops=CropConfig(global_size=32, local_size=16, local_views=2),
        loss=LossConfig(warmup_teacher_temp_epochs=1),
        train=DINOTrainConfig(epochs=2, batch_size=4, cpu=True, mixed_precision="no", checkpoint_every=2,
                              checkpoints_total_limit=2, log_every=1)),
}

# The study profile runs the quick sizes for longer: notebooks/params/study.yaml sets its update counts.
PROFILES["study"] = PROFILES["quick"]

dino_config = profile_reader(PROFILES, "DINO")


def notebook_config(profile: str, seed: int = 0, pretrain_steps: int = 0, init_weights: str = "",
                    overrides: dict | None = None) -> DINOConfig:
    """07's DINO: the profile, then ``overrides`` (nested, e.g. ``{"head": {"prototypes": 128}}``),
    then the notebook's own seed, update budget (``pretrain_steps`` > 0 replaces the epochs) and
    start weights, which every source shares."""
    overrides = dict(overrides or {})
    train = {**overrides.pop("train", {}), "seed": seed}
    if pretrain_steps:
        train.update(max_steps=pretrain_steps, epochs=None)
    if init_weights:
        overrides["init_weights"] = init_weights
    return dino_config(profile, {**overrides, "train": train}, source="07_ssl_dino.dino_overrides")

