"""Typed parameters of the DDPM stage and its profiles (``test``, ``quick``, ``full``).

``full`` is I-SynMed's published configuration (reference.md §2) without its flaws: no horizontal
flip (the data path never flips), samples come from the EMA weights, every random draw is seeded.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from support.params import ParameterError, from_mapping, to_dict

SamplerName = Literal["ddpm", "ddim", "dpmsolver++"]


@dataclass
class UNetConfig:
    """A diffusers ``UNet2DModel`` described by the quantities the papers report."""

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


@dataclass
class NoiseConfig:
    """The forward process and what the network predicts."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "cosine", "sigmoid"] = "sigmoid"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    beta_start: float = 1e-4        # linear schedule only
    beta_end: float = 0.02          # linear schedule only
    sigmoid_start: float = -3.0     # sigmoid schedule (Jabri et al. 2022) only
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    clip_sample: bool = True        # clip the predicted x0 to [-1, 1] while sampling


@dataclass
class TrainConfig:
    """Optimisation, EMA, validation, sample grids and checkpoints."""

    max_steps: int = 1000                   # optimizer updates
    batch_size: int = 8                     # per process and micro-batch
    gradient_accumulation_steps: int = 2
    learning_rate: float = 5e-5
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"   # auto: bf16/fp16 on CUDA, fp32 on CPU
    cpu: bool = False                       # force CPU even where CUDA is present
    ema_decay: float = 0.995
    ema_update_every: int = 10              # optimizer updates between EMA updates
    ema_update_after_step: int = 100        # the EMA copies the weights until this update
    # "none": plain MSE of the target; "min_snr": Min-SNR-gamma; "snr": every objective weighted to
    # the epsilon-MSE (denoising-diffusion-pytorch's default, i.e. what I-SynMed trained with).
    loss_weighting: Literal["none", "min_snr", "snr"] = "none"
    min_snr_gamma: float = 5.0
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    validate_every: int = 0                 # 0: only at the end (when a validation set is given)
    val_batch_size: int = 16
    val_max_batches: int = 8
    val_seed: int = 1234
    sample_every: int = 0                   # 0: only at the end
    sample_grid_size: int = 16
    sample_grid_seed: int = 0
    sample_grid_sampler: SamplerName = "ddim"
    sample_grid_steps: int = 50
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    resume: str | None = "latest"           # "latest", a checkpoint folder, or None to start afresh


@dataclass
class DDPMConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "DDPMConfig":
        """Raise ``ParameterError`` naming the field for values no run could use."""
        u, n, t = self.unet, self.noise, self.train
        checks = [
            (u.sample_size > 0, "unet.sample_size", "a positive size"),
            (u.in_channels > 0, "unet.in_channels", "a positive channel count"),
            (len(u.channel_mults) > 0 and all(m > 0 for m in u.channel_mults), "unet.channel_mults",
             "a non-empty list of positive multipliers"),
            (u.sample_size % 2 ** (len(u.channel_mults) - 1) == 0, "unet.sample_size",
             f"a multiple of {2 ** (len(u.channel_mults) - 1)} (one halving per level after the first)"),
            (all(u.base_channels * m % u.norm_num_groups == 0 for m in u.channel_mults),
             "unet.norm_num_groups", "a divisor of every level's channel count"),
            (all(-len(u.channel_mults) <= a < len(u.channel_mults) for a in u.attention_levels),
             "unet.attention_levels", f"level indices in [-{len(u.channel_mults)}, {len(u.channel_mults) - 1}]"),
            (all(u.base_channels * u.channel_mults[a] % u.attention_head_dim == 0
                 for a in (*u.attention_levels, -1) if -len(u.channel_mults) <= a < len(u.channel_mults)),
             "unet.attention_head_dim", "a divisor of the channel count at every attention level"),
            (n.num_train_timesteps >= 2, "noise.num_train_timesteps", "at least 2"),
            (0 < n.beta_start < n.beta_end < 1, "noise.beta_start/beta_end", "0 < start < end < 1"),
            (n.sigmoid_start < n.sigmoid_end and n.sigmoid_tau > 0, "noise.sigmoid_*", "start < end and tau > 0"),
            (t.max_steps > 0, "train.max_steps", "a positive number of updates"),
            (t.batch_size > 0, "train.batch_size", "a positive batch size"),
            (t.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps", "at least 1"),
            (t.learning_rate > 0, "train.learning_rate", "a positive learning rate"),
            (all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas", "two values in [0, 1)"),
            (0 < t.ema_decay < 1, "train.ema_decay", "a value in (0, 1)"),
            (t.ema_update_every > 0, "train.ema_update_every", "at least 1"),
            (t.min_snr_gamma > 0, "train.min_snr_gamma", "a positive gamma"),
            (t.max_grad_norm > 0, "train.max_grad_norm", "a positive norm"),
            (t.checkpoint_every > 0, "train.checkpoint_every", "at least 1"),
            (t.checkpoints_total_limit is None or t.checkpoints_total_limit >= 1,
             "train.checkpoints_total_limit", "at least 1, or null to keep all"),
            (t.log_every > 0, "train.log_every", "at least 1"),
            (t.sample_grid_size > 0 and t.sample_grid_steps > 0, "train.sample_grid_*", "positive size and steps"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ParameterError(f"DDPM parameters: {name} must be {expected}")
        return self


@dataclass
class SamplingConfig:
    """How a trained pipeline is sampled into a synthetic dataset (MIMIC-CXR-JPG layout)."""

    sampler: SamplerName = "ddpm"
    steps: int = 1000
    num_samples: int = 16
    batch_size: int = 8
    base_seed: int = 0                      # sample i uses seed base_seed + i
    device: str = "auto"
    dtype: str = "auto"                     # fp32 on CPU; bf16 (or fp16) on CUDA
    view: Literal["PA", "AP"] = "PA"        # the training images were frontal
    split: Literal["train", "validate", "test"] = "train"
    dataset_name: str = "synthetic:ddpm"
    generator_name: str = "ddpm"
    jpeg_quality: int = 95

    def validate(self) -> "SamplingConfig":
        if self.steps <= 0 or self.num_samples <= 0 or self.batch_size <= 0:
            raise ParameterError("sampling parameters: steps, num_samples and batch_size must be positive")
        if self.base_seed < 0 or self.base_seed + self.num_samples > 10**7:
            raise ParameterError("sampling parameters: seeds base_seed .. base_seed + num_samples - 1 must lie "
                                 "in 0 .. 9,999,999 (they name the synthetic subjects and studies)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ParameterError(f"sampling parameters: jpeg_quality {self.jpeg_quality}, expected 1..100")
        return self


# ------------------------------------------------------------------------------------- profiles
_FULL = DDPMConfig(
    unet=UNetConfig(sample_size=256, in_channels=1, base_channels=64, channel_mults=(1, 2, 4, 8),
                    layers_per_block=2, attention_levels=(-1,), attention_head_dim=32, norm_num_groups=32),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=TrainConfig(max_steps=300_000, batch_size=8, gradient_accumulation_steps=2, learning_rate=5e-5,
                      adam_betas=(0.9, 0.99), ema_decay=0.995, ema_update_every=10, ema_update_after_step=100,
                      max_grad_norm=1.0, mixed_precision="auto", loss_weighting="snr",
                      validate_every=5000, sample_every=5000, checkpoint_every=5000, checkpoints_total_limit=3,
                      sample_grid_sampler="ddpm", sample_grid_steps=1000),
)

# Sized for the CPU demo (about 1.1 M parameters at 64 px); the same code path as ``full``.
_QUICK = DDPMConfig(
    unet=UNetConfig(sample_size=64, in_channels=1, base_channels=16, channel_mults=(1, 2, 4, 4),
                    layers_per_block=1, attention_levels=(-1,), attention_head_dim=32, norm_num_groups=8),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=TrainConfig(max_steps=300, batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-4,
                      lr_warmup_steps=20, ema_decay=0.995, ema_update_every=1, ema_update_after_step=20,
                      loss_weighting="snr", validate_every=100, val_max_batches=2, sample_every=0,
                      sample_grid_size=16, sample_grid_sampler="ddim", sample_grid_steps=50,
                      checkpoint_every=100, checkpoints_total_limit=2),
)

_TEST = DDPMConfig(
    unet=UNetConfig(sample_size=16, in_channels=1, base_channels=8, channel_mults=(1, 2), layers_per_block=1,
                    attention_levels=(-1,), attention_head_dim=8, norm_num_groups=4),
    noise=NoiseConfig(num_train_timesteps=1000, beta_schedule="sigmoid", prediction_type="v_prediction"),
    train=TrainConfig(max_steps=8, batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                      ema_decay=0.995, ema_update_every=2, ema_update_after_step=0, mixed_precision="no",
                      cpu=True, log_every=2, validate_every=4, val_batch_size=4, val_max_batches=2,
                      sample_every=0, sample_grid_size=4, sample_grid_sampler="ddim", sample_grid_steps=5,
                      checkpoint_every=4, checkpoints_total_limit=2),
)

PROFILES: dict[str, DDPMConfig] = {"test": _TEST, "quick": _QUICK, "full": _FULL}

SAMPLING_PROFILES: dict[str, SamplingConfig] = {
    "test": SamplingConfig(sampler="ddim", steps=5, num_samples=4, batch_size=2, device="cpu", dtype="fp32"),
    "quick": SamplingConfig(sampler="ddim", steps=50, num_samples=64, batch_size=16),
    "full": SamplingConfig(sampler="ddpm", steps=1000, num_samples=120_000, batch_size=64),
}


def merge_overrides(base: dict, overrides: Mapping[str, Any], where: str = "", opaque: tuple[str, ...] = ()) -> dict:
    """``base`` with nested ``overrides`` applied; keys in ``opaque`` are replaced whole, not merged."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in opaque:
            out[key] = merge_overrides(out[key], value, f"{where}.{key}", opaque)
        else:
            out[key] = value
    return out


def preset(table: dict, profile: str, what: str):
    """The named profile of ``table``; an unknown name is an error listing the known ones."""
    if profile not in table:
        raise ParameterError(f"{what} profile {profile!r}: expected one of {sorted(table)}")
    return table[profile]


def ddpm_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                source: str = "DDPM parameters") -> DDPMConfig:
    """The named profile with ``overrides`` (nested mapping: unet/noise/train) applied and checked."""
    base = to_dict(preset(PROFILES, profile, "DDPM"))
    merged = merge_overrides(base, overrides or {}, "ddpm")
    return from_mapping(DDPMConfig, merged, source=source).validate()


def sampling_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                    source: str = "sampling parameters") -> SamplingConfig:
    """The named sampling profile with flat ``overrides`` applied and checked."""
    base = to_dict(preset(SAMPLING_PROFILES, profile, "sampling"))
    return from_mapping(SamplingConfig, {**base, **dict(overrides or {})}, source=source).validate()


def config_dict(config: Any) -> dict:
    """JSON-ready form of any of these configs (for manifests and checkpoints)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return to_dict(config)
