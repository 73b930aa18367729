"""Typed parameters of the text-to-image LoRA stage and its profiles (``test``, ``quick``, ``study``,
``full``).

``full`` is the published configuration of "This X-Ray Does Not Exist" (reference.md §1): LoRA
rank 4 (scale 1) on every UNet attention projection of Stable Diffusion 2.1-base, 512 px, batch
5, 10 epochs, AdamW lr 1e-4 constant, weight decay 1e-2, grad clip 1, fp16, seed 42, a
checkpoint every 1,000 steps; sampling with PNDM, 75 steps, guidance 4. ``test``, ``quick`` and
``study`` run the same code on a small latent diffusion model of the same classes
(``BaseModelConfig``), pretrained on full captions of the phantom rendered in another domain.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Iterable, Literal

from support.core.config import LoopConfig, profile_reader
from support.core.sample_writer import SampleConfig
from support.t2i.domain import SourceDomain
from support.params import Check, Checked, ParameterError

SamplerName = Literal["pndm", "ddim", "dpmsolver++"]
TextSource = Literal["findings", "impression", "findings+impression", "impression+findings"]

# The caption form of the original prompts; ``{view}`` and ``{text}`` are filled per study.
DEFAULT_TEMPLATE = "view_position = {view}. modality = CR. {text}"

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


def template_ok(template: str) -> bool:
    """Whether :func:`check_template` accepts ``template``."""
    try:
        check_template(template, "template")
    except ParameterError:
        return False
    return True


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
class VAETrainConfig(LoopConfig):
    """The autoencoder's pretraining: L1 reconstruction + a small KL to the unit Gaussian."""

    max_steps: int | None = 200
    optimizer: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = 1e-3
    kl_weight: float = 1e-4                 # on the KL per latent element, beside the per-pixel L1
    checkpoints_total_limit: int | None = 1

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.kl_weight >= 0, "kl_weight", "non-negative"


@dataclass
class LDMTrainConfig(LoopConfig):
    """The UNet and text encoder's pretraining on view captions, the autoencoder frozen."""

    max_steps: int | None = 300
    optimizer: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    caption_dropout: float = 0.1            # empty captions teach the unconditional branch of CFG
    checkpoints_total_limit: int | None = 1

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield 0.0 <= self.caption_dropout < 1.0, "caption_dropout", "a probability in [0, 1)"


@dataclass
class BaseModelConfig(Checked):
    """The small text-to-image LDM used when no ``base_model`` folder is given: the autoencoder is
    pretrained first (``vae_training``, on the images of both domains, as SD's autoencoder is a
    general one), then the UNet and text encoder (``ldm_training``) on full captions of the
    images rendered in the source ``domain``: it reads findings, and the target's look is new."""

    title = "base model parameters"

    resolution: int = 64
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = DEFAULT_TEMPLATE   # findings included: the base model reads them, as SD reads text
    text_source: TextSource = "findings+impression"
    domain: SourceDomain = field(default_factory=SourceDomain)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: CondUNetConfig = field(default_factory=CondUNetConfig)
    vae_training: VAETrainConfig = field(default_factory=VAETrainConfig)
    ldm_training: LDMTrainConfig = field(default_factory=LDMTrainConfig)

    def checks(self) -> Iterable[Check]:
        v, u, t = self.vae, self.unet, self.text
        factor = 2 ** (len(v.block_out_channels) - 1)
        levels = len(u.block_out_channels)
        yield len(v.block_out_channels) >= 1, "vae.block_out_channels", "at least one level"
        yield self.resolution % (factor * 2 ** (levels - 1)) == 0, "resolution", \
            f"a multiple of {factor * 2 ** (levels - 1)} (VAE downsampling x UNet halvings)"
        yield all(c % v.norm_num_groups == 0 for c in v.block_out_channels), "vae.norm_num_groups", \
            "a divisor of every VAE level's channels"
        yield all(c % u.norm_num_groups == 0 for c in u.block_out_channels), "unet.norm_num_groups", \
            "a divisor of every UNet level's channels"
        yield all(c % u.attention_heads == 0 for c in u.block_out_channels), "unet.attention_heads", \
            "a divisor of every UNet level's channels"
        yield all(-levels <= a < levels for a in u.cross_attention_levels), "unet.cross_attention_levels", \
            f"level indices in [-{levels}, {levels - 1}]"
        yield t.hidden_size % t.num_heads == 0, "text.num_heads", "a divisor of text.hidden_size"
        yield t.max_length >= 8, "text.max_length", "at least 8 tokens"
        yield t.vocab_size >= 600, "text.vocab_size", "at least 600 (2 x 256 byte symbols + merges)"
        yield template_ok(self.caption_template), "caption_template", "a format string using only {view} and {text}"
        yield from super().checks()     # vae_training, ldm_training


# ------------------------------------------------------------------------------- LoRA fine-tuning
@dataclass
class LoraParams(Checked):
    """peft ``LoraConfig`` of the UNet (and optionally the text encoder); scale = alpha / rank."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder: bool = False
    text_encoder_rank: int = 4
    text_encoder_alpha: float = 4.0
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")

    def checks(self) -> Iterable[Check]:
        yield self.rank > 0, "rank", "positive"
        yield self.alpha > 0, "alpha", "positive"
        yield 0.0 <= self.dropout < 1.0, "dropout", "a probability in [0, 1)"
        yield len(self.target_modules) > 0, "target_modules", "a non-empty list of module names"
        yield self.text_encoder_rank > 0, "text_encoder_rank", "positive"
        yield self.text_encoder_alpha > 0, "text_encoder_alpha", "positive"


@dataclass
class LoraTrainConfig(LoopConfig):
    """The loop (:class:`LoopConfig`, the original's values) plus the data, the objective's options
    and the validation images of the LoRA fine-tuning."""

    max_steps: int | None = None            # optimizer updates; None: ``epochs`` passes
    epochs: int | None = 10
    batch_size: int = 5
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 1e-2
    seed: int = 42
    sample_every_epochs: int = 1            # validation images at the end of every n-th epoch; 0: at the end
    resolution: int | None = None           # None: the base model's native size
    random_crop: bool = True                # resize the short side, then a random square crop; never a flip
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = DEFAULT_TEMPLATE
    text_source: TextSource = "findings+impression"   # the report's sections; one missing: the other alone
    snr_gamma: float | None = None          # Min-SNR-gamma weighting (Hang et al. 2023); None: plain MSE
    noise_offset: float = 0.0
    caption_dropout: float = 0.0
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    validation_seed: int = 0                # prompt i uses seed validation_seed + i
    validation_sampler: SamplerName = "pndm"
    validation_steps: int = 75
    validation_guidance_scale: float = 4.0

    # Fields of the method that change what a resumed run computes.
    METHOD_FIELDS = ("resolution", "random_crop", "views", "caption_template", "text_source", "snr_gamma",
                     "noise_offset", "caption_dropout")

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.resolution is None or self.resolution >= 8, "resolution", "at least 8 pixels, or null"
        yield len(self.views) > 0, "views", "a non-empty list of views"
        yield self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", "a positive gamma, or null"
        yield self.noise_offset >= 0, "noise_offset", "non-negative"
        yield 0.0 <= self.caption_dropout < 1.0, "caption_dropout", "a probability in [0, 1)"
        yield template_ok(self.caption_template), "caption_template", "a format string using only {view} and {text}"
        yield self.validation_steps > 0, "validation_steps", "positive"
        yield self.validation_guidance_scale >= 0, "validation_guidance_scale", "non-negative"


@dataclass
class T2IConfig(Checked):
    """T2I-LoRA: the adapters (``lora``), their training (``train``), and the small base model that
    stands in for Stable Diffusion when no base model folder is given (``base``)."""

    title = "T2I-LoRA parameters"

    lora: LoraParams = field(default_factory=LoraParams)
    train: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)


# ------------------------------------------------------------------------------- sampling
@dataclass
class T2ISamplingConfig(SampleConfig):
    """How prompts become a synthetic dataset (MIMIC-CXR-JPG layout)."""

    title = "T2I sampling parameters"

    sampler: SamplerName = "pndm"
    steps: int = 75
    guidance_scale: float = 4.0
    negative_prompt: str | None = None
    dataset_name: str = "synthetic:t2i-lora"
    generator_name: str = "t2i-lora"

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.guidance_scale >= 0, "guidance_scale", "non-negative"


@dataclass
class PromptConfig(Checked):
    """Where the prompts come from: held-out reports, or a requested finding mix."""

    source: Literal["reports", "findings"] = "reports"
    num_prompts: int = 1000                 # source "reports": one prompt per held-out study, at most this many
    finding_mix: dict[str, int] = field(default_factory=dict)   # source "findings", e.g. {"Pleural Effusion": 100}
    compose: bool = True                    # findings: write reports from specs; False: pick matching held-out reports
    splits: tuple[str, ...] = ("test",)
    views: tuple[str, ...] = ("PA", "AP")
    caption_template: str = DEFAULT_TEMPLATE
    text_source: TextSource = "findings+impression"
    seed: int = 0

    title = "prompt parameters"

    def checks(self) -> Iterable[Check]:
        from support.data.schema import PHANTOM_FINDINGS

        yield self.source != "reports" or self.num_prompts > 0, "num_prompts", "positive"
        yield self.source != "findings" or bool(self.finding_mix), "finding_mix", \
            "a non-empty mapping of finding to count when source is 'findings'"
        yield set(self.finding_mix) <= set(PHANTOM_FINDINGS), "finding_mix", f"keyed by {list(PHANTOM_FINDINGS)}"
        yield all(isinstance(v, int) and v >= 0 for v in self.finding_mix.values()), "finding_mix", \
            "counts that are non-negative integers"
        yield template_ok(self.caption_template), "caption_template", "a format string using only {view} and {text}"


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
        vae_training=VAETrainConfig(max_steps=20_000, batch_size=16, kl_weight=1e-4, checkpoint_every=2000),
        ldm_training=LDMTrainConfig(max_steps=50_000, batch_size=32, learning_rate=1e-4, checkpoint_every=2000)),
)

# Sized for the CPU demo at 64 px; the same code path as ``full``.
_QUICK = T2IConfig(
    lora=LoraParams(rank=4, alpha=4.0),
    train=LoraTrainConfig(resolution=None, batch_size=8, epochs=2, learning_rate=1e-3, weight_decay=1e-2,
                          mixed_precision="auto", seed=42, log_every=10, checkpoint_every=100,
                          checkpoints_total_limit=2, validation_steps=25, sample_every_epochs=1),
    base=BaseModelConfig(resolution=64),
)

# The study profile: the quick sizes, cross-attention at every UNet level (the innermost alone did
# not learn findings in 1,500 updates) and a base pretrained with an annealed rate (1,400 updates of
# 16: about 9 minutes on 2 cores, so that the whole study fits in an hour), so that what LoRA does can show.
_STUDY = T2IConfig(
    lora=LoraParams(rank=4, alpha=4.0),
    train=LoraTrainConfig(resolution=None, batch_size=8, max_steps=None, epochs=8, learning_rate=1e-3,
                          weight_decay=1e-2, mixed_precision="auto", seed=42, log_every=10, checkpoint_every=100,
                          checkpoints_total_limit=2, validation_steps=25, sample_every_epochs=4),
    base=BaseModelConfig(
        resolution=64, unet=CondUNetConfig(cross_attention_levels=(0, 1)),
        vae_training=VAETrainConfig(max_steps=300, batch_size=16, checkpoint_every=150),
        # annealed to 0: the last weights are a settled model, not one step of a noisy walk (the
        # constant rate left the LoRA no domain gap to cut: FD 71 -> 74; annealed 85 -> 41)
        ldm_training=LDMTrainConfig(max_steps=1400, batch_size=16, lr_schedule="cosine", lr_warmup_steps=100,
                                    checkpoint_every=350)),
)

_TEST = T2IConfig(
    lora=LoraParams(rank=4, alpha=8.0),
    train=LoraTrainConfig(resolution=None, batch_size=2, max_steps=4, learning_rate=1e-2, weight_decay=1e-2,
                          mixed_precision="no", cpu=True, seed=42, log_every=1, checkpoint_every=2,
                          checkpoints_total_limit=2, validation_prompts=DEFAULT_VALIDATION_PROMPTS[:2],
                          validation_steps=3, sample_every_epochs=0),
    base=BaseModelConfig(
        resolution=32,
        text=TextEncoderConfig(vocab_size=640, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        vae=VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8),
        unet=CondUNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attention_levels=(0, 1),
                            attention_heads=2, norm_num_groups=8),
        vae_training=VAETrainConfig(max_steps=6, batch_size=4, mixed_precision="no", cpu=True),
        ldm_training=LDMTrainConfig(max_steps=6, batch_size=4, mixed_precision="no", cpu=True)),
)

PROFILES: dict[str, T2IConfig] = {"test": _TEST, "quick": _QUICK, "study": _STUDY, "full": _FULL}

SAMPLING_PROFILES: dict[str, T2ISamplingConfig] = {
    "test": T2ISamplingConfig(sampler="ddim", steps=3, batch_size=2, device="cpu", dtype="fp32"),
    "quick": T2ISamplingConfig(sampler="pndm", steps=25, batch_size=16),
    "study": T2ISamplingConfig(sampler="pndm", steps=25, batch_size=16),
    "full": T2ISamplingConfig(sampler="pndm", steps=75, guidance_scale=4.0, batch_size=8),
}

PROMPT_PROFILES: dict[str, PromptConfig] = {
    "test": PromptConfig(source="reports", num_prompts=4),
    "quick": PromptConfig(source="findings", finding_mix={"Pleural Effusion": 32, "No Finding": 32}),
    "study": PromptConfig(source="findings", finding_mix={"Pleural Effusion": 32, "Cardiomegaly": 32,
                                                          "No Finding": 32}),
    "full": PromptConfig(source="reports", num_prompts=1000),
}


t2i_config = profile_reader(PROFILES, "T2I-LoRA")
t2i_sampling_config = profile_reader(SAMPLING_PROFILES, "T2I sampling")
prompt_config = profile_reader(PROMPT_PROFILES, "prompt", opaque=("finding_mix",))   # a finding mix is replaced whole
