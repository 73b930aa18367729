"""Typed parameters of the DDPM stage and its profiles (``test``, ``quick``, ``full``).

``full`` is I-SynMed's published configuration (reference.md §2) without its flaws: no horizontal
flip (the data path never flips), samples come from the EMA weights, every random draw is seeded.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Iterable, Literal

from support.core.config import LoopConfig, profile_reader
from support.core.sample_writer import SampleConfig
from support.core.schedules import NoiseConfig
from support.params import Check, Checked

__all__ = ["UNetConfig", "NoiseConfig", "DDPMTrainConfig", "DDPMConfig", "SamplingConfig", "PROFILES",
           "SAMPLING_PROFILES", "ddpm_config", "sampling_config"]

SamplerName = Literal["ddpm", "ddim", "dpmsolver++"]


@dataclass
class UNetConfig(Checked):
    """The denoising network, described by the quantities the papers report. ``architecture``:
    ``isynmed`` is I-SynMed's network (denoising-diffusion-pytorch's ``Unet``, written as a
    diffusers model in :mod:`support.ddpm.network.unet`: ``layers_per_block`` 2, linear attention at the
    outer levels, 4 heads of ``attention_head_dim``; no group norm); ``diffusers`` is diffusers'
    ``UNet2DModel`` (full attention at ``attention_levels`` only)."""

    architecture: Literal["isynmed", "diffusers"] = "diffusers"
    sample_size: int = 64
    in_channels: int = 1
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)
    layers_per_block: int = 2
    # Resolution levels (0 = outermost) with full self-attention; negative counts from the innermost.
    attention_levels: tuple[int, ...] = (-1,)
    mid_attention: bool = True
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    dropout: float = 0.0
    # "scale_shift" conditions each ResNet block on time by FiLM, as denoising-diffusion-pytorch does.
    time_scale_shift: Literal["default", "scale_shift"] = "scale_shift"

    def checks(self) -> Iterable[Check]:
        levels = len(self.channel_mults)
        yield self.architecture in ("isynmed", "diffusers"), "architecture", "isynmed or diffusers"
        yield self.architecture != "isynmed" or self.layers_per_block == 2, "layers_per_block", \
            "2 for the isynmed network (two residual blocks per level)"
        yield self.sample_size > 0, "sample_size", "a positive size"
        yield self.in_channels > 0, "in_channels", "a positive channel count"
        yield levels > 0 and all(m > 0 for m in self.channel_mults), "channel_mults", \
            "a non-empty list of positive multipliers"
        yield self.sample_size % 2 ** (levels - 1) == 0, "sample_size", \
            f"a multiple of {2 ** (levels - 1)} (one halving per level after the first)"
        yield all(self.base_channels * m % self.norm_num_groups == 0 for m in self.channel_mults), \
            "norm_num_groups", "a divisor of every level's channel count"
        yield all(-levels <= a < levels for a in self.attention_levels), "attention_levels", \
            f"level indices in [-{levels}, {levels - 1}]"
        yield all(self.base_channels * self.channel_mults[a] % self.attention_head_dim == 0
                  for a in (*self.attention_levels, -1) if -levels <= a < levels), \
            "attention_head_dim", "a divisor of the channel count at every attention level"


@dataclass
class DDPMTrainConfig(LoopConfig):
    """The loop (:class:`LoopConfig`, I-SynMed's values) plus EMA, loss weighting, validation
    losses and preview grids."""

    gradient_accumulation_steps: int = 2
    learning_rate: float = 5e-5
    adam_betas: tuple[float, float] = (0.9, 0.99)
    ema_decay: float = 0.995
    ema_update_every: int = 10              # optimizer updates between EMA updates
    ema_update_after_step: int = 100        # the EMA copies the weights until this update
    # "none": plain MSE of the target; "min_snr": Min-SNR-gamma; "snr": every objective weighted to
    # the epsilon-MSE (denoising-diffusion-pytorch's default, i.e. what I-SynMed trained with).
    loss_weighting: Literal["none", "min_snr", "snr"] = "none"
    min_snr_gamma: float = 5.0
    val_batch_size: int = 16                # validation: target MSE of held-out images, fixed draws
    val_max_batches: int = 8
    val_seed: int = 1234
    sample_grid_sampler: SamplerName = "ddim"   # previews: a grid of fixed-seed EMA samples
    sample_grid_size: int = 16
    sample_grid_seed: int = 0
    sample_grid_steps: int = 50
    # Quality against updates: at each validation, this many EMA samples (the preview's sampler and
    # steps) are scored by pixel Fréchet distance to as many validation images; 0: off.
    val_fd_samples: int = 0

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield 0 < self.ema_decay < 1, "ema_decay", "a value in (0, 1)"
        yield self.ema_update_every > 0, "ema_update_every", "at least 1"
        yield self.min_snr_gamma > 0, "min_snr_gamma", "a positive gamma"
        yield self.val_batch_size > 0 and self.val_max_batches > 0, "val_batch_size", \
            "positive (and val_max_batches too)"
        yield self.sample_grid_size > 0, "sample_grid_size", "a positive number of images"
        yield self.sample_grid_steps > 0, "sample_grid_steps", "a positive number of steps"
        yield self.val_fd_samples == 0 or self.val_fd_samples >= 2, "val_fd_samples", \
            "0 (off) or at least 2 samples (a Fréchet distance needs a covariance)"


@dataclass
class DDPMConfig(Checked):
    """I-SynMed's DDPM: the network, the forward process, the training loop."""

    title = "DDPM parameters"

    unet: UNetConfig = field(default_factory=UNetConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: DDPMTrainConfig = field(default_factory=DDPMTrainConfig)

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.train.sample_grid_steps <= self.noise.num_train_timesteps, "train.sample_grid_steps", \
            f"at most noise.num_train_timesteps ({self.noise.num_train_timesteps}): a sampler has no more steps"


@dataclass
class SamplingConfig(SampleConfig):
    """How a trained pipeline is sampled into a synthetic dataset (MIMIC-CXR-JPG layout)."""

    sampler: SamplerName = "ddpm"
    steps: int = 1000
    num_samples: int = 16
    view: Literal["PA", "AP"] = "PA"        # the training images were frontal
    dataset_name: str = "synthetic:ddpm"
    generator_name: str = "ddpm"

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.num_samples > 0, "num_samples", "a positive number of samples"
        yield self.base_seed + self.num_samples <= 10**7, "base_seed", \
            "such that the seeds base_seed .. base_seed + num_samples - 1 lie in 0 .. 9,999,999 " \
            "(they name the synthetic subjects and studies)"


# ------------------------------------------------------------------------------------- profiles
_FULL = DDPMConfig(
    unet=UNetConfig(architecture="isynmed", sample_size=256, in_channels=1, base_channels=64,
                    channel_mults=(1, 2, 4, 8), layers_per_block=2, attention_levels=(-1,), attention_head_dim=32,
                    norm_num_groups=32),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=DDPMTrainConfig(max_steps=300_000, batch_size=8, gradient_accumulation_steps=2, learning_rate=5e-5,
                          adam_betas=(0.9, 0.99), ema_decay=0.995, ema_update_every=10, ema_update_after_step=100,
                          max_grad_norm=1.0, mixed_precision="fp16", loss_weighting="snr",   # fp16 + loss scaling, as published
                          validate_every=5000, sample_every=5000, checkpoint_every=5000, checkpoints_total_limit=3,
                          sample_grid_sampler="ddpm", sample_grid_steps=1000),
)

# Sized for the CPU demo (about 1.1 M parameters at 64 px); the same code path as ``full``. 240 updates
# of 16 draw a rough thorax (mediastinum, two lung fields, diaphragm); 150 of 8 or 16 drew blobs.
_QUICK = DDPMConfig(
    unet=UNetConfig(sample_size=64, in_channels=1, base_channels=16, channel_mults=(1, 2, 4, 4),
                    layers_per_block=1, attention_levels=(-1,), attention_head_dim=32, norm_num_groups=8),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=DDPMTrainConfig(max_steps=240, batch_size=16, gradient_accumulation_steps=1, learning_rate=5e-4,
                          lr_warmup_steps=20, ema_decay=0.995, ema_update_every=1, ema_update_after_step=20,
                          loss_weighting="snr", validate_every=100, val_max_batches=2, sample_every=0,
                          sample_grid_size=16, sample_grid_sampler="ddim", sample_grid_steps=50,
                          checkpoint_every=100, checkpoints_total_limit=2),
)

# The study profile: the quick network on batches of 16 for 360 updates (1.5 times quick's images;
# by 300 updates the samples show lungs, ribs, heart and spine, and a 750-update run's sample FD was
# flat from there: 4.28, 2.60, 2.43, 2.55, 2.66 at 150...750), a slower EMA, and the samples'
# Fréchet distance measured at every validation (quality against updates); the same code path as ``full``.
_STUDY = dataclasses.replace(_QUICK, train=dataclasses.replace(
    _QUICK.train, max_steps=360, batch_size=16, lr_warmup_steps=50, ema_decay=0.999, ema_update_after_step=100,
    validate_every=120, val_fd_samples=48, sample_grid_steps=25, checkpoint_every=120))

_TEST = DDPMConfig(
    unet=UNetConfig(sample_size=16, in_channels=1, base_channels=8, channel_mults=(1, 2), layers_per_block=1,
                    attention_levels=(-1,), attention_head_dim=8, norm_num_groups=4),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=DDPMTrainConfig(max_steps=8, batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                          ema_decay=0.995, ema_update_every=2, ema_update_after_step=0, mixed_precision="no",
                          cpu=True, log_every=2, validate_every=4, val_batch_size=4, val_max_batches=2,
                          sample_every=0, sample_grid_size=4, sample_grid_sampler="ddim", sample_grid_steps=5,
                          checkpoint_every=4, checkpoints_total_limit=2),
)

PROFILES: dict[str, DDPMConfig] = {"test": _TEST, "quick": _QUICK, "study": _STUDY, "full": _FULL}

SAMPLING_PROFILES: dict[str, SamplingConfig] = {
    "test": SamplingConfig(sampler="ddim", steps=5, num_samples=4, batch_size=2, device="cpu", dtype="fp32"),
    "quick": SamplingConfig(sampler="ddim", steps=50, num_samples=64, batch_size=16),
    "study": SamplingConfig(sampler="ddim", steps=50, num_samples=128, batch_size=32),
    "full": SamplingConfig(sampler="ddpm", steps=1000, num_samples=120_000, batch_size=64),
}


ddpm_config = profile_reader(PROFILES, "DDPM")
sampling_config = profile_reader(SAMPLING_PROFILES, "sampling")
