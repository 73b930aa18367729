"""The latent diffusion objective of captioned images, shared by the base model's pretraining
and the LoRA fine-tuning (diffusers' ``train_text_to_image``): encode the image with the frozen
autoencoder, noise the latent, predict the noise (or v) from the noisy latent and the caption's
token features.

Every random draw comes from the micro-batch's generator, in a fixed order (caption dropout,
latent sample, noise, offset noise, timesteps), so a resumed run repeats them exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from support.core.schedules import diffusion_loss, loss_weights, training_target


def caption_ids(tokenizer, captions: Sequence[str], generator: torch.Generator, dropout: float, device) -> torch.Tensor:
    """Token ids of the captions, each replaced by the empty caption with probability ``dropout``
    (what teaches the unconditional branch of classifier-free guidance)."""
    captions = list(captions)
    if dropout > 0:
        drop = torch.rand(len(captions), generator=generator, device=device) < dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    return tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids.to(device)


def collate_captioned(items: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "caption": [it["caption"] for it in items]}


def latent_diffusion_loss(batch: Mapping[str, Any], generator: torch.Generator, *, vae, text_encoder, tokenizer,
                          unet, noise_scheduler, device, dtype=torch.float32, caption_dropout: float = 0.0,
                          noise_offset: float = 0.0, snr_gamma: float | None = None,
                          train_text_encoder: bool = False) -> torch.Tensor:
    """The denoising loss of one batch ``{"pixel_values": (B, C, R, R) in [-1, 1], "caption": [str]}``.

    ``unet`` and ``text_encoder`` are called through their forward (so a distributed wrapper sees
    them); the autoencoder is frozen. Min-SNR-gamma weighting when ``snr_gamma`` is set.
    """
    g = generator
    pixels = batch["pixel_values"].to(device, dtype=dtype, non_blocking=True)
    ids = caption_ids(tokenizer, batch["caption"], g, caption_dropout, device)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g, device=device, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=g,
                                                   device=device, dtype=latents.dtype)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g, device=device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    prediction_type = noise_scheduler.config.prediction_type
    target = training_target(noise_scheduler, latents, noise, t, prediction_type)
    weights = loss_weights(noise_scheduler, t, prediction_type, "min_snr" if snr_gamma else "none", snr_gamma or 5.0)
    with torch.set_grad_enabled(train_text_encoder):  # a frozen encoder keeps no graph
        context = text_encoder(ids, return_dict=False)[0]
    prediction = unet(noisy, t, context, return_dict=False)[0]
    return diffusion_loss(prediction, target, weights)
