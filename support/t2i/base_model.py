"""The base text-to-image model: Stable Diffusion 2.1-base from a local folder, or a small LDM of
the same classes pretrained here on captioned radiographs of another domain.

Both are ``StableDiffusionPipeline`` folders (safetensors) and are loaded, fine-tuned and
sampled by the same code. The small model has an ``AutoencoderKL`` (grayscale in and out), a
``UNet2DConditionModel`` with cross-attention, a ``CLIPTextModel`` and a ``CLIPTokenizer`` whose
BPE is trained on the report corpus, and SD's noise schedule (scaled-linear betas
0.00085-0.012, epsilon prediction, PNDM for sampling). Its denoiser is pretrained on full
captions (findings included) of the training images rendered in a source domain
(:mod:`support.t2i.domain`: another detector response and contrast curve), so it reads findings
as SD reads text, while the target radiographs' look is new to it: what LoRA then adapts, as it
adapts SD to radiographs.

The SD 2.1-base configurations are written out below (no download) so that its architecture can
be built with random weights for speed and memory measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from support.core import trainer
from support.io import read_json, sha256_file, write_json_atomic
from support.params import to_dict
from support.t2i.config import DEFAULT_TEMPLATE, BaseModelConfig, LDMTrainConfig, VAETrainConfig
from support.t2i.objective import collate_captioned, latent_diffusion_loss

BASE_INFO_JSON = "base_model.json"
PIPELINE_DIR = "pipeline"
FORMAT = "support.t2i.base_model/1"

# ------------------------------------------------------------------ Stable Diffusion 2.1-base
SD21_BASE_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
    "dual_cross_attention": False, "use_linear_projection": True, "num_class_embeds": None,
}
SD21_BASE_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "sample_size": 512, "scaling_factor": 0.18215,
}
SD21_BASE_TEXT_ENCODER: dict[str, Any] = {   # OpenCLIP ViT-H/14 text tower, penultimate layer kept
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 512, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
    "initializer_factor": 1.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD21_BASE_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}


# ------------------------------------------------------------------ building
def build_pipeline(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
                   text_config: Mapping[str, Any], tokenizer, scheduler_config: Mapping[str, Any] = SD21_BASE_SCHEDULER,
                   device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A ``StableDiffusionPipeline`` with freshly initialised weights from component configs.

    Initialisation draws from torch's global RNG. ``device="meta"`` builds the architecture
    without allocating weights (parameter counts of models too large for the machine).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device) if device is not None else torch.device("cpu")
    with device:
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    if dtype is not None and device.type != "meta":
        for model in (unet, vae, text_encoder):
            model.to(dtype)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def small_model_configs(config: BaseModelConfig, tokenizer) -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) configs of the small base model described by ``config``."""
    v, u, t = config.vae, config.unet, config.text
    factor = 2 ** (len(v.block_out_channels) - 1)
    levels = len(u.block_out_channels)
    with_attention = {a % levels for a in u.cross_attention_levels}
    unet = {
        "sample_size": config.resolution // factor, "in_channels": v.latent_channels,
        "out_channels": v.latent_channels, "block_out_channels": list(u.block_out_channels),
        "down_block_types": ["CrossAttnDownBlock2D" if i in with_attention else "DownBlock2D" for i in range(levels)],
        "up_block_types": ["CrossAttnUpBlock2D" if i in with_attention else "UpBlock2D"
                           for i in reversed(range(levels))],
        "layers_per_block": u.layers_per_block, "cross_attention_dim": t.hidden_size,
        # diffusers reads attention_head_dim as the number of heads (as SD 2's [5, 10, 20, 20])
        "attention_head_dim": u.attention_heads, "norm_num_groups": u.norm_num_groups,
        "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0,
    }
    vae = {
        "in_channels": 1, "out_channels": 1, "latent_channels": v.latent_channels,
        "block_out_channels": list(v.block_out_channels), "layers_per_block": v.layers_per_block,
        "down_block_types": ["DownEncoderBlock2D"] * len(v.block_out_channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(v.block_out_channels),
        "norm_num_groups": v.norm_num_groups, "sample_size": config.resolution,
    }
    text = {
        "vocab_size": len(tokenizer), "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.max_length, "hidden_act": "gelu", "projection_dim": t.hidden_size,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return unet, vae, text


def build_small_pipeline(config: BaseModelConfig, tokenizer, seed: int = 0):
    """The small base model with freshly initialised weights (seeded)."""
    torch.manual_seed(int(seed))
    unet, vae, text = small_model_configs(config.validate(), tokenizer)
    return build_pipeline(unet, vae, text, tokenizer)


def build_sd21_base(tokenizer, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Stable Diffusion 2.1-base's architecture with random weights (speed and memory only)."""
    if len(tokenizer) > SD21_BASE_TEXT_ENCODER["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens; SD 2.1's text encoder embeds "
                         f"{SD21_BASE_TEXT_ENCODER['vocab_size']}")
    return build_pipeline(SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_TEXT_ENCODER, tokenizer, device=device, dtype=dtype)


# ------------------------------------------------------------------ files
def save_pipeline(pipe, path: str | os.PathLike) -> Path:
    """Write ``pipe`` (a pipeline, or one of its models such as a fine-tuned UNet) as a diffusers
    folder (safetensors), swapped in whole: never half-written."""
    from support.io import atomic_directory

    path = Path(path)
    with atomic_directory(path) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return path


def check_pipeline_dir(path: str | os.PathLike, what: str = "base_model") -> Path:
    """``path`` as a diffusers Stable Diffusion folder, or an error saying what is missing."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path}: folder not found (expected a diffusers pipeline folder)")
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{what} {path}: not a diffusers pipeline folder (model_index.json missing)")
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in read_json(index)]
    if missing:
        raise ValueError(f"{what} {index}: lacks component(s) {missing}; expected a Stable Diffusion pipeline")
    return path


def load_pipeline(path: str | os.PathLike, device: str = "auto", dtype: str = "auto",
                  unet: str | os.PathLike | None = None):
    """A saved ``StableDiffusionPipeline`` on ``device`` in ``dtype`` (``support.devices`` rule).

    Offline only; no safety checker (it would black out radiographs it cannot judge). Weights are
    read from ``.safetensors`` where the folder has them, else from ``.bin`` files, which diffusers
    opens with ``torch.load(weights_only=True)``: tensors only, no pickled code. ``unet``: a
    fine-tuned UNet folder (:func:`save_pipeline` of a UNet) in place of the pipeline's own.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from support.devices import pick_device, pick_dtype

    path = check_pipeline_dir(path)
    dev = pick_device(device)
    extra = {}
    if unet is not None:
        if not (Path(unet) / "config.json").is_file():
            raise FileNotFoundError(f"unet {unet}: not a diffusers UNet folder (config.json missing)")
        extra["unet"] = UNet2DConditionModel.from_pretrained(unet, local_files_only=True)
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=pick_dtype(dev, dtype), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False, **extra)
    if extra:
        pipe.unet.to(pipe.vae.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def model_sha256(path: str | os.PathLike, subfolder: str | None = "unet") -> str:
    """sha256 over what loading reads from a pipeline folder (its ``subfolder``, or all of it):
    configs, tokenizer files and the weights (not fp16 variants): the safetensors files, or the
    ``.bin`` files of a component folder that has none."""
    root = Path(path) / subfolder if subfolder else Path(path)
    found = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.count(".") == 1]
    safetensors = {p.parent for p in found if p.suffix == ".safetensors"}     # per component folder
    files = sorted(p for p in found if p.suffix in (".json", ".txt", ".safetensors")
                   or (p.suffix == ".bin" and p.parent not in safetensors))
    if not files:
        raise FileNotFoundError(f"{root}: no model files found")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\x1f{sha256_file(f)}\x1e".encode())
    return h.hexdigest()


def pipeline_resolution(pipe) -> int:
    """The image size the pipeline was built for: latent sample size x VAE downsampling."""
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return int(size) * int(pipe.vae_scale_factor)


# ------------------------------------------------------------------ pretraining the small model
class KLAutoencoder(torch.nn.Module):
    """The autoencoder's objective as a module (so a distributed wrapper sees it): L1 reconstruction
    of a latent sample plus ``kl_weight`` x the KL to the unit Gaussian per latent element."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, float(kl_weight)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)
        recon = self.vae.decode(z).sample
        return (recon - x).abs().mean() + self.kl_weight * posterior.kl().mean() / z[0].numel()


class AutoencoderTask(trainer.Task):
    """Stage 1: the grayscale autoencoder learns to reconstruct radiographs."""

    name = "base-vae"

    def __init__(self, pipe, train_set, config: VAETrainConfig, key: dict):
        self.pipe, self.train_set, self.config, self.key = pipe, train_set, config, key

    def setup(self) -> trainer.Parts:
        return trainer.Parts(models=[KLAutoencoder(self.pipe.vae, self.config.kl_weight)])

    def loss(self, batch, step: trainer.Step) -> torch.Tensor:
        return self.models[0](batch["pixel_values"].to(self.ctx.device), step.generator)

    def resume_key(self) -> dict:
        return self.key


class TextToImageTask(trainer.Task):
    """Stage 2: UNet and text encoder learn to denoise latents of the frozen autoencoder from the
    view captions (some dropped, for classifier-free guidance)."""

    name = "base-ldm"
    collate_fn = staticmethod(collate_captioned)

    def __init__(self, pipe, train_set, config: LDMTrainConfig, key: dict):
        self.pipe, self.train_set, self.config, self.key = pipe, train_set, config, key

    def setup(self) -> trainer.Parts:
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.pipe.vae.requires_grad_(False).eval().to(self.ctx.device)
        return trainer.Parts(models=[self.pipe.unet, self.pipe.text_encoder])

    def loss(self, batch, step: trainer.Step) -> torch.Tensor:
        unet, text_encoder = self.models
        return latent_diffusion_loss(batch, step.generator, vae=self.pipe.vae, text_encoder=text_encoder,
                                     tokenizer=self.pipe.tokenizer, unet=unet, noise_scheduler=self.noise_scheduler,
                                     device=self.ctx.device, caption_dropout=self.config.caption_dropout,
                                     train_text_encoder=True)

    def resume_key(self) -> dict:
        return self.key


@torch.no_grad()
def latent_scaling(vae, data, max_images: int = 256, batch_size: int = 64) -> float:
    """1 / std of the latent means of the first ``max_images`` items: latents at unit variance,
    as SD's 0.18215 puts its autoencoder's."""
    device = next(vae.parameters()).device
    n = min(max_images, len(data))
    latents = []
    for start in range(0, n, batch_size):
        x = torch.stack([data[i]["pixel_values"] for i in range(start, min(n, start + batch_size))]).to(device)
        latents.append(vae.encode(x).latent_dist.mean.float().cpu())
    return float(1.0 / torch.cat(latents).std().clamp_min(1e-6))


def _first_last(losses: list[float]) -> list[float] | None:
    if not losses:
        return None
    window = max(1, min(20, len(losses) // 4))
    return [float(np.mean(losses[:window])), float(np.mean(losses[-window:]))]


def pretrain_base_model(records: pd.DataFrame, output_dir: str | os.PathLike, config: BaseModelConfig,
                        progress: bool = True) -> Path:
    """Pretrain the small base model on the training split; return its pipeline folder.

    Two runs of the shared trainer (resumable, checkpointed under ``output_dir/training/<key>/``):
    the autoencoder on the images of both domains, then the UNet and text encoder on the
    source-domain images with their full captions. Writes
    ``output_dir/pipeline/`` (a ``StableDiffusionPipeline``) and then ``output_dir/base_model.json``
    (config, data fingerprint, losses). A folder already holding a model of the same config and
    data is reused as it is. Under ``accelerate launch`` every process takes part.
    """
    from accelerate import PartialState

    from support.data.fingerprint import dataset_fingerprint
    from support.t2i.captions import caption_stats, record_caption, train_caption_tokenizer
    from support.t2i.data import CaptionedImages

    config = config.validate()
    out = Path(output_dir).expanduser().resolve()
    data = CaptionedImages(records, config.resolution, channels=1, template=config.caption_template,
                           text_source=config.text_source, views=config.views, splits=("train",),
                           random_crop=False, domain=config.domain)
    if len(data) < 2:
        raise ValueError(f"base model pretraining: {len(data)} training image(s) of views {list(config.views)}; "
                         f"need at least 2 ({data.summary})")
    fingerprint = dataset_fingerprint(data)
    info_path = out / BASE_INFO_JSON
    if info_path.is_file():
        info = read_json(info_path)
        if info.get("config") == to_dict(config) and info.get("data_fingerprint") == fingerprint \
                and (out / PIPELINE_DIR / "model_index.json").is_file():
            return out / PIPELINE_DIR

    corpus = [record_caption(r, DEFAULT_TEMPLATE) for r in data.records.to_dict("records")]
    tokenizer = train_caption_tokenizer(corpus, config.text.vocab_size, config.text.max_length)
    pipe = build_small_pipeline(config, tokenizer, seed=config.vae_training.seed)
    key = {"base": to_dict(config), "data_fingerprint": fingerprint}
    runs = out / "training" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    # The autoencoder is a general image model (SD's saw billions of images, radiographs among
    # them): it learns both renderings, so LoRA's target images have faithful latents.
    target = CaptionedImages(records, config.resolution, channels=1, views=config.views, splits=("train",),
                             random_crop=False)
    both = torch.utils.data.ConcatDataset([data, target]) if config.domain is not None \
        and not config.domain.is_identity() else data
    vae_history = trainer.fit(AutoencoderTask(pipe, both, config.vae_training, key), config.vae_training,
                              runs / "vae", progress=progress)
    pipe.vae.eval().requires_grad_(False)
    scaling = latent_scaling(pipe.vae, data)
    pipe.vae.register_to_config(scaling_factor=scaling)
    ldm_history = trainer.fit(TextToImageTask(pipe, data, config.ldm_training, key), config.ldm_training,
                              runs / "ldm", progress=progress)
    pipe.unet.eval()
    pipe.text_encoder.eval()

    state = PartialState()
    if state.is_main_process:
        pipe.to("cpu")
        save_pipeline(pipe, out / PIPELINE_DIR)
        write_json_atomic(info_path, {
            "format": FORMAT, "config": to_dict(config), "data_fingerprint": fingerprint,
            "n_images": len(data), "data_summary": data.summary.to_dict(), "scaling_factor": scaling,
            "tokenizer_vocab": len(tokenizer), "report_captions": caption_stats(corpus, tokenizer),
            "vae_loss_first_last": _first_last(vae_history["loss"]),
            "unet_loss_first_last": _first_last(ldm_history["loss"]),
            "vae_loss": vae_history["loss"], "unet_loss": ldm_history["loss"], "training": str(runs),
        })
    state.wait_for_everyone()
    return out / PIPELINE_DIR


def ensure_base_model(base_model: str | os.PathLike | None, records: pd.DataFrame | None,
                      output_dir: str | os.PathLike, config: BaseModelConfig, progress: bool = True) -> Path:
    """The base model folder: ``base_model`` when given (checked), else the small model pretrained
    (or reused) under ``output_dir``."""
    if base_model:
        return check_pipeline_dir(base_model)
    if records is None:
        raise ValueError("no base_model folder given and no records to pretrain the default base model on")
    return pretrain_base_model(records, output_dir, config, progress=progress)
