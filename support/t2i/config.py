"""Typed parameters of the text-to-image LoRA stage and its profiles (``test``, ``quick``, ``full``).

``full`` is the published configuration of "This X-Ray Does Not Exist" (reference.md §1): LoRA
rank 4 (scale 1) on every UNet attention projection of Stable Diffusion 2.1-base, 512 px, batch
5, 10 epochs, AdamW lr 1e-4 constant, weight decay 1e-2, grad clip 1, fp16, seed 42, a
checkpoint every 1,000 steps; sampling with PNDM, 75 steps, guidance 4. ``quick`` and ``test``
run the same code on a small latent diffusion model of the same classes (``BaseModelConfig``),
pretrained on the phantom with captions that name only the view.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from support.diffusion.config import merge_overrides, preset
from support.params import ParameterError, from_mapping, to_dict

SamplerName = Literal["pndm", "ddim", "dpmsolver++"]
TextSource = Literal["findings", "impression", "findings+impression", "impression+findings"]

# The caption form of the original prompts; ``{view}`` and ``{text}`` are filled per study.
DEFAULT_TEMPLATE = "view_position = {view}. modality = CR. {text}"
VIEW_TEMPLATE = "view_position = {view}. modality = CR."

DEFAULT_VALIDATION_PROMPTS: tuple[str, ...] = (
    "view_position = PA. modality = CR. The lungs are clear. No pleural effusion or pneumothorax. "
    "The cardiomediastinal silhouette is normal.",
    "view_position = PA. modality = CR. Large right pleural effusion.",
    "view_position = PA. modality = CR. The heart is moderately enlarged.",
    "view_position = AP. modality = CR. Small left pneumothorax.",
)


def check_template(template: str, where: str) -> str:
    """A caption template may use only ``{view}`` and ``{text}``; anything else is an error."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ParameterError(f"{where}: {template!r} is not a valid format string ({exc})") from None
    unknown = sorted(names - {"view", "text"})
    if unknown:
        raise ParameterError(f"{where}: {template!r} uses {unknown}; only {{view}} and {{text}} are filled")
    return template


# ------------------------------------------------------------------------------- default base model
@dataclass
class TextEncoderConfig:
    """The CLIP text model and the BPE tokenizer trained on the report corpus."""

    vocab_size: int = 2048
    max_length: int = 77                    # CLIP's token limit
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256


@dataclass
class VAEConfig:
    """AutoencoderKL of grayscale images; one halving per level after the first."""

    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (8, 16, 32)   # /4: 64 px -> 16 x 16 latents
    layers_per_block: int = 1
    norm_num_groups: int = 8


@dataclass
class CondUNetConfig:
    """UNet2DConditionModel with cross-attention to the text tokens at ``cross_attention_levels``."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    cross_attention_levels: tuple[int, ...] = (-1,)    # 0 = outermost; negative counts from the innermost
    attention_heads: int = 2
    norm_num_groups: int = 8


@dataclass
class PretrainConfig:
    """How the default base model learns radiographs: VAE first, then UNet + text encoder."""

    vae_steps: int = 200
    vae_batch_size: int = 8
    vae_learning_rate: float = 1e-3
    kl_weight: float = 1e-4                 # on the KL per latent element, beside the per-pixel L1
    unet_steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-3
    caption_dropout: float = 0.1            # empty captions teach the unconditional branch of CFG
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0


@dataclass
class BaseModelConfig:
    """The small text-to-image LDM used when no ``base_model`` folder is given."""

    resolution: int = 64
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = VIEW_TEMPLATE   # names only the view: the base model learns no findings
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: CondUNetConfig = field(default_factory=CondUNetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def validate(self) -> "BaseModelConfig":
        v, u, t, p = self.vae, self.unet, self.text, self.pretrain
        factor = 2 ** (len(v.block_out_channels) - 1)
        levels = len(u.block_out_channels)
        checks = [
            (len(v.block_out_channels) >= 1, "vae.block_out_channels", "at least one level"),
            (self.resolution % (factor * 2 ** (levels - 1)) == 0, "resolution",
             f"a multiple of {factor * 2 ** (levels - 1)} (VAE downsampling x UNet halvings)"),
            (all(c % v.norm_num_groups == 0 for c in v.block_out_channels), "vae.norm_num_groups",
             "a divisor of every VAE level's channels"),
            (all(c % u.norm_num_groups == 0 for c in u.block_out_channels), "unet.norm_num_groups",
             "a divisor of every UNet level's channels"),
            (all(c % u.attention_heads == 0 for c in u.block_out_channels), "unet.attention_heads",
             "a divisor of every UNet level's channels"),
            (all(-levels <= a < levels for a in u.cross_attention_levels), "unet.cross_attention_levels",
             f"level indices in [-{levels}, {levels - 1}]"),
            (t.hidden_size % t.num_heads == 0, "text.num_heads", "a divisor of text.hidden_size"),
            (t.max_length >= 8, "text.max_length", "at least 8 tokens"),
            (t.vocab_size >= 600, "text.vocab_size", "at least 600 (2 x 256 byte symbols + merges)"),
            (p.vae_steps >= 0 and p.unet_steps > 0, "pretrain.vae_steps/unet_steps", "non-negative / positive"),
            (0.0 <= p.caption_dropout < 1.0, "pretrain.caption_dropout", "a probability in [0, 1)"),
            (p.vae_batch_size > 0 and p.batch_size > 0, "pretrain.batch sizes", "positive"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ParameterError(f"base model parameters: {name} must be {expected}")
        check_template(self.caption_template, "base model parameters: caption_template")
        return self


# ------------------------------------------------------------------------------- LoRA fine-tuning
@dataclass
class LoraParams:
    """peft ``LoraConfig`` of the UNet (and optionally the text encoder); scale = alpha / rank."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder: bool = False
    text_encoder_rank: int = 4
    text_encoder_alpha: float = 4.0
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class LoraTrainConfig:
    """Data, optimisation, validation images and checkpoints of the LoRA fine-tuning."""

    resolution: int | None = None           # None: the base model's native size
    random_crop: bool = True                # resize the short side, then a random square crop; never a flip
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = DEFAULT_TEMPLATE
    text_source: TextSource = "findings"    # a report without that section falls back to the other one
    batch_size: int = 5                     # per process and micro-batch
    gradient_accumulation_steps: int = 1
    epochs: int = 10
    max_steps: int | None = None            # optimizer updates; overrides epochs when set
    learning_rate: float = 1e-4
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"   # auto: bf16/fp16 on CUDA, fp32 on CPU
    cpu: bool = False
    snr_gamma: float | None = None          # Min-SNR-gamma weighting (Hang et al. 2023); None: plain MSE
    noise_offset: float = 0.0
    caption_dropout: float = 0.0
    seed: int = 42
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    resume: str | None = "latest"           # "latest", a checkpoint folder, or None to start afresh
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    validation_seed: int = 0                # prompt i uses seed validation_seed + i
    validation_every_epochs: int = 1        # 0: only at the end
    validation_sampler: SamplerName = "pndm"
    validation_steps: int = 75
    validation_guidance_scale: float = 4.0


@dataclass
class T2IConfig:
    lora: LoraParams = field(default_factory=LoraParams)
    train: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)

    def validate(self) -> "T2IConfig":
        """Raise ``ParameterError`` naming the field for values no run could use."""
        lo, t = self.lora, self.train
        checks = [
            (lo.rank > 0 and lo.alpha > 0, "lora.rank/alpha", "positive"),
            (0.0 <= lo.dropout < 1.0, "lora.dropout", "a probability in [0, 1)"),
            (len(lo.target_modules) > 0, "lora.target_modules", "a non-empty list of module names"),
            (lo.text_encoder_rank > 0 and lo.text_encoder_alpha > 0, "lora.text_encoder_rank/alpha", "positive"),
            (t.resolution is None or t.resolution >= 8, "train.resolution", "at least 8 pixels, or null"),
            (len(t.views) > 0, "train.views", "a non-empty list of views"),
            (t.batch_size > 0, "train.batch_size", "a positive batch size"),
            (t.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps", "at least 1"),
            (t.epochs > 0, "train.epochs", "at least 1"),
            (t.max_steps is None or t.max_steps > 0, "train.max_steps", "a positive number of updates, or null"),
            (t.learning_rate > 0, "train.learning_rate", "a positive learning rate"),
            (all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas", "two values in [0, 1)"),
            (t.max_grad_norm > 0, "train.max_grad_norm", "a positive norm"),
            (t.snr_gamma is None or t.snr_gamma > 0, "train.snr_gamma", "a positive gamma, or null"),
            (t.noise_offset >= 0, "train.noise_offset", "non-negative"),
            (0.0 <= t.caption_dropout < 1.0, "train.caption_dropout", "a probability in [0, 1)"),
            (t.log_every > 0, "train.log_every", "at least 1"),
            (t.checkpoint_every > 0, "train.checkpoint_every", "at least 1"),
            (t.checkpoints_total_limit is None or t.checkpoints_total_limit >= 1,
             "train.checkpoints_total_limit", "at least 1, or null to keep all"),
            (t.validation_every_epochs >= 0, "train.validation_every_epochs", "0 or more"),
            (t.validation_steps > 0, "train.validation_steps", "positive"),
            (t.validation_guidance_scale >= 0, "train.validation_guidance_scale", "non-negative"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ParameterError(f"T2I-LoRA parameters: {name} must be {expected}")
        check_template(t.caption_template, "T2I-LoRA parameters: train.caption_template")
        self.base.validate()
        return self


# ------------------------------------------------------------------------------- sampling
@dataclass
class T2ISamplingConfig:
    """How prompts become a synthetic dataset (MIMIC-CXR-JPG layout)."""

    sampler: SamplerName = "pndm"
    steps: int = 75
    guidance_scale: float = 4.0
    negative_prompt: str | None = None
    batch_size: int = 8
    base_seed: int = 0                      # plan row i uses seed base_seed + i
    device: str = "auto"
    dtype: str = "auto"                     # fp32 on CPU; bf16 (or fp16) on CUDA
    split: Literal["train", "validate", "test"] = "train"
    dataset_name: str = "synthetic:t2i-lora"
    generator_name: str = "t2i-lora"
    jpeg_quality: int = 95

    def validate(self) -> "T2ISamplingConfig":
        if self.steps <= 0 or self.batch_size <= 0:
            raise ParameterError("T2I sampling parameters: steps and batch_size must be positive")
        if self.guidance_scale < 0:
            raise ParameterError(f"T2I sampling parameters: guidance_scale {self.guidance_scale} must be >= 0")
        if self.base_seed < 0:
            raise ParameterError(f"T2I sampling parameters: base_seed {self.base_seed} must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ParameterError(f"T2I sampling parameters: jpeg_quality {self.jpeg_quality}, expected 1..100")
        return self


@dataclass
class PromptConfig:
    """Where the prompts come from: held-out reports, or a requested finding mix."""

    source: Literal["reports", "findings"] = "reports"
    num_prompts: int = 1000                 # source "reports": one prompt per held-out study, at most this many
    finding_mix: dict[str, int] = field(default_factory=dict)   # source "findings", e.g. {"Pleural Effusion": 100}
    compose: bool = True                    # findings: write reports from specs; False: pick matching held-out reports
    splits: tuple[str, ...] = ("test",)
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = DEFAULT_TEMPLATE
    text_source: TextSource = "findings"
    seed: int = 0

    def validate(self) -> "PromptConfig":
        from support.data.schema import PHANTOM_FINDINGS

        if self.source == "reports" and self.num_prompts <= 0:
            raise ParameterError("prompt parameters: num_prompts must be positive")
        if self.source == "findings":
            if not self.finding_mix:
                raise ParameterError("prompt parameters: source 'findings' needs a non-empty finding_mix")
            unknown = sorted(set(self.finding_mix) - set(PHANTOM_FINDINGS))
            if unknown:
                raise ParameterError(f"prompt parameters: finding_mix names {unknown}; expected some of "
                                     f"{list(PHANTOM_FINDINGS)}")
            bad = {k: v for k, v in self.finding_mix.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ParameterError(f"prompt parameters: finding_mix counts must be non-negative integers, got {bad}")
        check_template(self.caption_template, "prompt parameters: caption_template")
        return self


# ------------------------------------------------------------------------------- profiles
_FULL = T2IConfig(
    lora=LoraParams(rank=4, alpha=4.0),
    train=LoraTrainConfig(resolution=512, batch_size=5, epochs=10, learning_rate=1e-4, lr_schedule="constant",
                          weight_decay=1e-2, max_grad_norm=1.0, mixed_precision="fp16", seed=42,
                          checkpoint_every=1000, checkpoints_total_limit=3, validation_steps=75,
                          validation_guidance_scale=4.0, validation_sampler="pndm", log_every=50),
    # Used only when no base_model folder (SD 2.1-base) is given.
    base=BaseModelConfig(
        resolution=256,
        text=TextEncoderConfig(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
        vae=VAEConfig(block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32),
        unet=CondUNetConfig(block_out_channels=(128, 256, 512), layers_per_block=2, cross_attention_levels=(0, 1, 2),
                            attention_heads=8, norm_num_groups=32),
        pretrain=PretrainConfig(vae_steps=20_000, vae_batch_size=16, kl_weight=1e-4, unet_steps=50_000,
                                batch_size=32, learning_rate=1e-4)),
)

# Sized for the CPU demo at 64 px; the same code path as ``full``.
_QUICK = T2IConfig(
    lora=LoraParams(rank=4, alpha=4.0),
    train=LoraTrainConfig(resolution=None, batch_size=8, epochs=2, learning_rate=1e-3, weight_decay=1e-2,
                          mixed_precision="auto", seed=42, log_every=10, checkpoint_every=100,
                          checkpoints_total_limit=2, validation_steps=25, validation_every_epochs=1),
    base=BaseModelConfig(resolution=64),
)

_TEST = T2IConfig(
    lora=LoraParams(rank=4, alpha=8.0),
    train=LoraTrainConfig(resolution=None, batch_size=2, max_steps=4, learning_rate=1e-2, weight_decay=1e-2,
                          mixed_precision="no", cpu=True, seed=42, log_every=1, checkpoint_every=2,
                          checkpoints_total_limit=2, validation_prompts=DEFAULT_VALIDATION_PROMPTS[:2],
                          validation_steps=3, validation_every_epochs=0),
    base=BaseModelConfig(
        resolution=32,
        text=TextEncoderConfig(vocab_size=640, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        vae=VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8),
        unet=CondUNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attention_levels=(0, 1),
                            attention_heads=2, norm_num_groups=8),
        pretrain=PretrainConfig(vae_steps=6, vae_batch_size=4, unet_steps=6, batch_size=4, device="cpu")),
)

PROFILES: dict[str, T2IConfig] = {"test": _TEST, "quick": _QUICK, "full": _FULL}

SAMPLING_PROFILES: dict[str, T2ISamplingConfig] = {
    "test": T2ISamplingConfig(sampler="ddim", steps=3, batch_size=2, device="cpu", dtype="fp32"),
    "quick": T2ISamplingConfig(sampler="pndm", steps=25, batch_size=16),
    "full": T2ISamplingConfig(sampler="pndm", steps=75, guidance_scale=4.0, batch_size=8),
}

PROMPT_PROFILES: dict[str, PromptConfig] = {
    "test": PromptConfig(source="reports", num_prompts=4),
    "quick": PromptConfig(source="findings", finding_mix={"Pleural Effusion": 32, "No Finding": 32}),
    "full": PromptConfig(source="reports", num_prompts=1000),
}


def t2i_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None,
               source: str = "T2I-LoRA parameters") -> T2IConfig:
    """The named profile with ``overrides`` (nested mapping: lora/train/base) applied and checked."""
    merged = merge_overrides(to_dict(preset(PROFILES, profile, "T2I-LoRA")), overrides or {}, "t2i", opaque=("finding_mix",))
    return from_mapping(T2IConfig, merged, source=source).validate()


def t2i_sampling_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                        source: str = "T2I sampling parameters") -> T2ISamplingConfig:
    """The named sampling profile with flat ``overrides`` applied and checked."""
    merged = {**to_dict(preset(SAMPLING_PROFILES, profile, "T2I sampling")), **dict(overrides or {})}
    return from_mapping(T2ISamplingConfig, merged, source=source).validate()


def prompt_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                  source: str = "prompt parameters") -> PromptConfig:
    """The named prompt profile with flat ``overrides`` applied and checked."""
    merged = {**to_dict(preset(PROMPT_PROFILES, profile, "prompt")), **dict(overrides or {})}
    return from_mapping(PromptConfig, merged, source=source).validate()


def config_dict(config: Any) -> dict:
    """JSON-ready form of any of these configs (manifests, checkpoints)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return to_dict(config)
