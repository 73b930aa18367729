"""Small randomly initialised models of the real architectures, written in the real formats.

They stand in for SAM, SD-2 inpainting and the project's DDPM where no weights are on disk: the
tests run every backend's code path on them, and the benchmark times the pipeline's overhead
(loading once vs per image, batching) with them. Their pixels mean nothing; their shapes, file
layouts and loaders are exactly those of the full-size models.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

TINY_SAM_SPEC: dict[str, Any] = {
    "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": (1,),
    "image_size": 64, "patch_size": 16, "window_size": 2, "prompt_embed_dim": 32, "mask_in_chans": 4,
    "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32,
}


def write_tiny_sam(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny SAM (spec :data:`TINY_SAM_SPEC`, kind ``vit_b`` overridden) as a state-dict checkpoint:
    ``.pth`` as SAM's own releases (read back with ``weights_only=True``) or ``.safetensors``."""
    import torch

    from support.cleanup.sam import build_sam, sam_spec
    from support.io import atomic_write, save_state_dict

    torch.manual_seed(seed)
    model = build_sam(sam_spec("vit_b", TINY_SAM_SPEC))
    path = Path(path)
    if path.suffix == ".safetensors":
        return save_state_dict(model.state_dict(), path)
    with atomic_write(path, "wb") as fh:
        torch.save(model.state_dict(), fh)
    return path


def write_tiny_ddpm(folder: str | os.PathLike, sample_size: int = 32, seed: int = 0) -> Path:
    """A 1-channel ``UNet2DModel`` with the project's noise schedule (v-prediction, sigmoid betas)
    saved as a ``DDPMPipeline`` folder, as the DDPM stage writes it."""
    import torch
    from diffusers import DDPMPipeline, UNet2DModel

    from support.core.schedules import NoiseConfig, make_noise_scheduler

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    DDPMPipeline(unet=unet, scheduler=make_noise_scheduler(NoiseConfig())).save_pretrained(
        folder, safe_serialization=True)
    return Path(folder)


def write_clip_vocab(folder: str | os.PathLike) -> tuple[Path, Path]:
    """A character-level CLIP BPE vocabulary (``vocab.json``, ``merges.txt``) of printable ASCII."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def write_tiny_sd_inpaint(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A ``StableDiffusionInpaintPipeline`` folder built from configs: 9-channel UNet, 8x VAE,
    2-layer CLIP text encoder and a tokenizer from :func:`write_clip_vocab`; no download."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=16)
    # four blocks: latents at 1/8 of the image, as SD's VAE
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 32), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab(tmp)
        tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
