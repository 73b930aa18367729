"""Typed parameters of XGeM and its profiles (``test``, ``quick``, ``full``).

XGeM (reference.md §3) trains in stages, each a task of the shared trainer with its own loop and
folder, resumable:

1. ``image_vae``: the image autoencoder shared by the frontal (F) and lateral (L) views;
2. ``report_vae``: the report autoencoder (Optimus: BERT encoder -> latent -> GPT-2 decoder);
3. ``contrastive``: the shared latent space (CLIP-style image and text towers);
4. ``frontal``, ``lateral``, ``report``: one latent diffusion model per modality, each conditioned
   on one context token of the shared space, trained with Multi-Prompt training;
5. ``joint``: environment encoders and joint cross-attention, with the backbones frozen.

``full`` is the published configuration: SD's kl-f8 VAE, BERT and GPT-2, and a CLIP ViT-L/14 from
local folders; UNets of 320 channels, multipliers (1, 2, 4, 4), attention at the first three levels;
the published batch sizes and lengths. ``quick`` and ``test`` build small models of the same
classes from these fields and train them in the pipeline: the same code path, smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from support.core.config import LoopConfig, profile_reader
from support.params import Check, Checked

MODALITIES = ("frontal", "lateral", "report")


def _folder(path: str, name: str, what: str) -> Check:
    return (not path or Path(path).is_dir(), name, f"an existing local {what} folder, or empty (got {path!r})")


# ------------------------------------------------------------------------------ 1. image VAE
@dataclass
class ImageVAEConfig(Checked):
    """diffusers ``AutoencoderKL``: SD's kl-f8 from ``vae_path`` (3 channels: the gray image is
    copied to each, channel 0 of the output kept), else one built from these fields (1 channel)."""

    vae_path: str = ""
    size: int = 256                                   # image side, pixels
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)   # one halving per level after the first
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215                   # latents are scaled to about unit variance
    kl_weight: float = 1e-6                           # KL against N(0, I) beside the L1 reconstruction

    def checks(self) -> Iterable[Check]:
        yield _folder(self.vae_path, "vae_path", "diffusers AutoencoderKL")
        levels = len(self.block_out_channels)
        yield levels >= 1, "block_out_channels", "at least one level"
        yield self.size % 2 ** (levels - 1) == 0, "size", f"a multiple of {2 ** (levels - 1)}"
        yield all(c % self.norm_num_groups == 0 for c in self.block_out_channels), "norm_num_groups", \
            "a divisor of every level's channels"
        yield self.latent_channels >= 1, "latent_channels", "at least 1"
        yield self.scaling_factor > 0, "scaling_factor", "positive"
        yield self.kl_weight >= 0, "kl_weight", "0 or more"

    @property
    def latent_size(self) -> int:
        """Side of the latent of a ``size`` image (SD's kl-f8: ``size // 8``)."""
        return self.size // (8 if self.vae_path else 2 ** (len(self.block_out_channels) - 1))


# ------------------------------------------------------------------------------ 2. report VAE
@dataclass
class ReportVAEConfig(Checked):
    """Optimus: a BERT encoder -> latent mean and log-variance -> a GPT-2 decoder fed the latent (as an
    added embedding and as per-layer memory). Local BERT and GPT-2 folders in ``full``; otherwise both
    are built from the sizes below, with one tokenizer trained on the reports."""

    bert_path: str = ""
    gpt2_path: str = ""
    latent_dim: int = 768
    max_tokens: int = 128
    vocab_size: int = 2000                            # the trained tokenizer (no local folders)
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 1024
    kl_zero_share: float = 0.5                        # KL weight 0 for this share of the updates,
    kl_ramp_share: float = 0.25                       # then a linear ramp to 1 over this share
    free_bits: float = 3.0                            # per latent dimension (nats)

    def checks(self) -> Iterable[Check]:
        yield _folder(self.bert_path, "bert_path", "BERT")
        yield _folder(self.gpt2_path, "gpt2_path", "GPT-2")
        yield bool(self.bert_path) == bool(self.gpt2_path), "gpt2_path", "given together with bert_path, or both empty"
        yield self.latent_dim >= 2, "latent_dim", "at least 2"
        yield self.max_tokens >= 8, "max_tokens", "at least 8"
        yield self.vocab_size >= 100, "vocab_size", "at least 100"
        yield self.hidden_size % self.heads == 0, "hidden_size", f"a multiple of heads ({self.heads})"
        yield self.layers >= 1, "layers", "at least 1"
        yield 0 <= self.kl_zero_share and 0 <= self.kl_ramp_share and self.kl_zero_share + self.kl_ramp_share <= 1, \
            "kl_ramp_share", "shares in [0, 1] whose sum with kl_zero_share is at most 1"
        yield self.free_bits >= 0, "free_bits", "0 or more"


# ------------------------------------------------------------------------------ 3. contrastive space
@dataclass
class ContrastiveConfig(Checked):
    """CLIP towers: one vision tower for both views, one text tower, each pooled, projected and
    L2-normalised to ``embed_dim``. A local CLIP folder (``clip_path``, ViT-L/14 in ``full``), else
    transformers' CLIP classes built from these sizes with the reports' tokenizer."""

    clip_path: str = ""
    embed_dim: int = 768
    image_size: int = 224                             # the vision tower's input side
    patch_size: int = 14
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    max_tokens: int = 77
    logit_scale_init: float = 2.6592                  # log(1 / 0.07)
    logit_scale_max: float = 100.0                    # the learnable scale is clamped here

    def checks(self) -> Iterable[Check]:
        yield _folder(self.clip_path, "clip_path", "CLIP")
        yield self.embed_dim >= 8, "embed_dim", "at least 8"
        yield self.image_size % self.patch_size == 0, "image_size", f"a multiple of patch_size ({self.patch_size})"
        yield self.vision_hidden % self.vision_heads == 0, "vision_hidden", "a multiple of vision_heads"
        yield self.text_hidden % self.text_heads == 0, "text_hidden", "a multiple of text_heads"
        yield self.max_tokens >= 8, "max_tokens", "at least 8"
        yield self.logit_scale_max > 0, "logit_scale_max", "positive"


# ------------------------------------------------------------------------------ 4. latent diffusion
@dataclass
class ImageUNetConfig(Checked):
    """diffusers ``UNet2DConditionModel`` over image latents, cross-attending to the context token."""

    base_channels: int = 320
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    heads: int = 8
    norm_num_groups: int = 32

    def checks(self) -> Iterable[Check]:
        yield len(self.attention_levels) == len(self.channel_mults), "attention_levels", \
            "one flag per level of channel_mults"
        yield all(self.base_channels * m % self.norm_num_groups == 0 for m in self.channel_mults), \
            "norm_num_groups", "a divisor of every level's channels"
        yield self.heads >= 1 and self.layers_per_block >= 1, "heads", "at least 1"


@dataclass
class ReportDenoiserConfig(Checked):
    """The report latent's denoiser: residual MLP blocks with the timestep added and cross-attention
    to the context token."""

    width: int = 1280
    blocks: int = 8
    heads: int = 8

    def checks(self) -> Iterable[Check]:
        yield self.width % self.heads == 0, "width", f"a multiple of heads ({self.heads})"
        yield self.blocks >= 1, "blocks", "at least 1"


@dataclass
class DiffusionConfig(Checked):
    """What the three latent diffusion models share: the noise schedule and Multi-Prompt training."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear"] = "scaled_linear"
    prediction_type: Literal["epsilon"] = "epsilon"
    multi_prompt: bool = True                         # False: the condition is always the report (images)
    condition_dropout: float = 0.1                    # to the empty embedding of the matching type

    def checks(self) -> Iterable[Check]:
        yield self.num_train_timesteps >= 2, "num_train_timesteps", "at least 2"
        yield 0 < self.beta_start < self.beta_end < 1, "beta_end", "above beta_start, below 1"
        yield 0 <= self.condition_dropout < 1, "condition_dropout", "in [0, 1)"


@dataclass
class JointConfig(Checked):
    """Joint generation: environment encoders (noisy latent + timestep -> pooled, L2-normalised token)
    and joint cross-attention to the other modalities' tokens; InfoNCE between the tokens."""

    temperature: float = 0.07
    contrastive_weight: float = 1.0
    env_width: int = 256                              # the environment encoders' width

    def checks(self) -> Iterable[Check]:
        yield self.temperature > 0, "temperature", "positive"
        yield self.env_width >= 8 and self.env_width % 8 == 0, "env_width", "a multiple of 8 (group norm)"
        yield self.contrastive_weight >= 0, "contrastive_weight", "0 or more"


@dataclass
class GenerateConfig(Checked):
    """Sampling: DDIM with classifier-free guidance; several conditions are averaged with weights."""

    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    report_max_tokens: int = 128                      # greedy decoding length of generated reports

    def checks(self) -> Iterable[Check]:
        yield self.steps >= 1, "steps", "at least 1"
        yield self.guidance_scale >= 1, "guidance_scale", "1 (no guidance) or more"
        yield 0 <= self.eta <= 1, "eta", "in [0, 1]"
        yield self.report_max_tokens >= 4, "report_max_tokens", "at least 4"


# ------------------------------------------------------------------------------ stages
@dataclass
class XGeMLoops(Checked):
    """One training loop per stage (each resumable in its own folder)."""

    image_vae: LoopConfig = field(default_factory=lambda: _loop(64, 100))
    report_vae: LoopConfig = field(default_factory=lambda: _loop(64, 100))
    contrastive: LoopConfig = field(default_factory=lambda: _loop(128, 30))
    frontal: LoopConfig = field(default_factory=lambda: _loop(128, 100))
    lateral: LoopConfig = field(default_factory=lambda: _loop(128, 100))
    report: LoopConfig = field(default_factory=lambda: _loop(256, 100))
    joint: LoopConfig = field(default_factory=lambda: _loop(32, 50))


def _loop(batch_size: int, epochs: int | None, max_steps: int | None = None, **kw) -> LoopConfig:
    """The published optimiser of every stage: AdamW at 5e-5, weight decay 1e-4, eps 1e-8, norm 1."""
    base = dict(max_steps=max_steps, epochs=epochs if max_steps is None else None, batch_size=batch_size,
                optimizer="adamw", learning_rate=5e-5, weight_decay=1e-4, adam_epsilon=1e-8, max_grad_norm=1.0)
    return LoopConfig(**{**base, **kw})


@dataclass
class XGeMConfig(Checked):
    """Every part of XGeM; a stage's task gets the parts it needs and its loop."""

    title = "XGeM parameters"

    image_vae: ImageVAEConfig = field(default_factory=ImageVAEConfig)
    report_vae: ReportVAEConfig = field(default_factory=ReportVAEConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    unet: ImageUNetConfig = field(default_factory=ImageUNetConfig)
    report_denoiser: ReportDenoiserConfig = field(default_factory=ReportDenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    loops: XGeMLoops = field(default_factory=XGeMLoops)


def _small_loop(steps: int, batch_size: int, lr: float, test: bool = False) -> LoopConfig:
    extra = dict(cpu=True, mixed_precision="no", checkpoint_every=2, log_every=1) if test else \
        dict(checkpoint_every=max(steps, 1), log_every=max(steps // 5, 1))
    return _loop(batch_size, None, max_steps=steps, learning_rate=lr, checkpoints_total_limit=1, **extra)


PROFILES: dict[str, XGeMConfig] = {
    "full": XGeMConfig(),
    "quick": XGeMConfig(
        # the full-resolution level is most of an autoencoder's cost on a CPU: kept narrow here
        image_vae=ImageVAEConfig(size=64, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8),
        report_vae=ReportVAEConfig(latent_dim=64, max_tokens=96, vocab_size=1000, hidden_size=128, layers=2,
                                   heads=2, intermediate_size=256),
        contrastive=ContrastiveConfig(embed_dim=64, image_size=64, patch_size=8, vision_hidden=128, vision_layers=2,
                                      vision_heads=4, text_hidden=128, text_layers=2, text_heads=4, max_tokens=96),
        unet=ImageUNetConfig(base_channels=32, channel_mults=(1, 2), attention_levels=(False, True),
                             layers_per_block=1, heads=4, norm_num_groups=16),
        report_denoiser=ReportDenoiserConfig(width=256, blocks=3, heads=4),
        joint=JointConfig(env_width=64),
        generate=GenerateConfig(steps=8, report_max_tokens=96),
        # the demo's budget (about 90 s for 03 on 2 cores): it shows the code path, not XGeM's effects;
        # a study run sets 03_xgem.stage_steps (e.g. 600-1,500 updates a stage: 35 minutes)
        loops=XGeMLoops(image_vae=_small_loop(25, 8, 1e-3), report_vae=_small_loop(30, 16, 1e-3),
                        contrastive=_small_loop(25, 16, 5e-4), frontal=_small_loop(30, 16, 5e-4),
                        lateral=_small_loop(30, 16, 5e-4), report=_small_loop(30, 32, 5e-4),
                        joint=_small_loop(12, 8, 5e-4))),
    "test": XGeMConfig(
        image_vae=ImageVAEConfig(size=32, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8),
        report_vae=ReportVAEConfig(latent_dim=16, max_tokens=48, vocab_size=200, hidden_size=32, layers=1, heads=2,
                                   intermediate_size=64),
        contrastive=ContrastiveConfig(embed_dim=16, image_size=32, patch_size=8, vision_hidden=32, vision_layers=1,
                                      vision_heads=2, text_hidden=32, text_layers=1, text_heads=2, max_tokens=48),
        unet=ImageUNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(False, True),
                             layers_per_block=1, heads=2, norm_num_groups=8),
        report_denoiser=ReportDenoiserConfig(width=32, blocks=2, heads=2),
        joint=JointConfig(env_width=16),
        generate=GenerateConfig(steps=3, report_max_tokens=16),
        loops=XGeMLoops(**{stage: _small_loop(3, 4, 1e-3, test=True)
                           for stage in ("image_vae", "report_vae", "contrastive", "frontal", "lateral", "report",
                                         "joint")})),
}

# The study profile runs the quick sizes for longer: notebooks/params/study.yaml sets its update counts.
PROFILES["study"] = PROFILES["quick"]

xgem_config = profile_reader(PROFILES, "XGeM")
