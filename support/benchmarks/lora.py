"""Speed of the T2I-LoRA stage: LoRA training updates/s and sampling images/s.

``python -m support.benchmarks.lora [--profile quick] [--updates 20] [--out result.json]``

Quick: the profile's small base architecture (random weights; speed does not depend on them) is
fine-tuned by :func:`support.t2i.train.train_lora` itself (its own per-update timing, warm-up
updates dropped) and sampled by :func:`support.t2i.sampling.generate_images` with the profile's
sampler, steps and guidance. With CUDA, the same for Stable Diffusion 2.1-base's architecture
built from its configs with random weights: 512 px, batch 5, fp16, LoRA rank 4, and sampling at
75 PNDM steps with guidance 4, batch 5, with the peak GPU memory of each (the original reports
about 4.5 s per image on its GPU). The peer in the same run is full fine-tuning of the UNet,
what LoRA replaces: updates/s and, on CUDA, peak memory of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _tokenizer(vocab_size: int, max_length: int = 77):
    """A report tokenizer trained on composed reports (no download)."""
    from support.t2i.captions import train_caption_tokenizer
    from support.t2i.config import PromptConfig
    from support.t2i.data import SyntheticCaptioned
    from support.t2i.sampling import plan_for_findings

    plan = plan_for_findings(PromptConfig(source="findings", finding_mix={
        "Pleural Effusion": 20, "Cardiomegaly": 20, "Pneumothorax": 20, "No Finding": 20}))
    return train_caption_tokenizer(list(plan["prompt"]) + SyntheticCaptioned(8, 8).captions, vocab_size, max_length)


def _reset_accelerate() -> None:
    # Each measurement may ask for another mixed precision; accelerate keeps one per process.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def training_rate(pipe, config, batch_size: int, updates: int, warmup: int, resolution: int) -> dict[str, Any]:
    """Updates/s and images/s of ``train_lora`` over ``updates`` updates after ``warmup``."""
    from support.t2i.data import SyntheticCaptioned
    from support.t2i.train import train_lora

    total = warmup + updates
    train = dataclasses.replace(config.train, max_steps=total, batch_size=batch_size, gradient_accumulation_steps=1,
                                log_every=1, checkpoint_every=total, validation_prompts=(),
                                sample_every_epochs=0, resume=None, resolution=resolution)
    cfg = dataclasses.replace(config, train=train)
    data = SyntheticCaptioned(batch_size * total, resolution, channels=int(pipe.vae.config.in_channels))
    _reset_accelerate()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        history = train_lora(cfg, pipe, data, tmp, progress=False)
    rates = history["steps_per_s"][warmup:]
    seconds = sum(1.0 / r for r in rates)
    out = {"updates_per_s": len(rates) / seconds, "images_per_s": batch_size * len(rates) / seconds,
           "batch_size": batch_size, "resolution": resolution, "updates_timed": len(rates),
           "trainable": history["trainable"]}
    if torch.cuda.is_available() and pipe.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def full_finetune_rate(pipe, batch_size: int, updates: int, warmup: int, resolution: int) -> dict[str, Any]:
    """The peer LoRA replaces: every UNet weight trained (AdamW, fp32 master weights, fp16 autocast
    on CUDA), on a copy of the UNet; each update encodes images and captions as ``train_lora`` does."""
    import copy

    from diffusers import DDPMScheduler

    device = pipe.device
    amp = device.type == "cuda"
    unet = copy.deepcopy(pipe.unet).float().train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    channels = int(pipe.vae.config.in_channels)
    scaling = float(pipe.vae.config.scaling_factor)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = pipe.tokenizer(["view_position = PA. modality = CR. Moderate right pleural effusion."] * batch_size,
                         padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)
    if amp:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + updates):
        x = (torch.rand(batch_size, channels, resolution, resolution, generator=g) * 2 - 1).to(device, pipe.vae.dtype)
        if amp:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            latents = pipe.vae.encode(x).latent_dist.sample() * scaling
            hidden = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), device=device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            pred = unet(noise_scheduler.add_noise(latents, noise, t).float(), t, hidden.float()).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if amp:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sum(times[warmup:])
    out = {"updates_per_s": updates / seconds, "images_per_s": batch_size * updates / seconds,
           "batch_size": batch_size, "resolution": resolution, "updates_timed": updates,
           "trainable_parameters": sum(p.numel() for p in unet.parameters())}
    if amp:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del unet, opt
    return out


def diffusers_script_lora(pipe, config, batch_size: int, updates: int, warmup: int, resolution: int,
                          dtype: torch.dtype) -> tuple[int, float]:
    """(images, seconds) of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``
    training step over ``updates`` updates after ``warmup``: frozen VAE, text encoder and UNet in
    ``dtype``, peft LoRA (``unet.add_adapter``, gaussian init) on the same modules and rank, fp32
    adapters, AdamW, a ``DataLoader`` over the same images with captions tokenized in the collate
    (the script tokenizes in its transform), encode, noise, predict, MSE, clip, step. ``pipe`` is
    modified (adapters added): pass a copy."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from support.t2i.data import SyntheticCaptioned

    device = pipe.device
    lcfg, t = config.lora, config.train
    vae, text_encoder, unet, tokenizer = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False).to(device, dtype=dtype)
    unet.add_adapter(LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, init_lora_weights="gaussian",
                                target_modules=list(lcfg.target_modules)))
    if dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=t.learning_rate, betas=tuple(t.adam_betas),
                                  weight_decay=1e-2, eps=t.adam_epsilon)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def collate(items):
        ids = tokenizer([it["caption"] for it in items], max_length=tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "input_ids": ids}

    data = SyntheticCaptioned(batch_size * (warmup + updates), resolution, channels=int(vae.config.in_channels))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate)
    unet.train()
    times = []
    tick = time.perf_counter()
    for batch in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            latents = vae.encode(batch["pixel_values"].to(device, dtype=dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      device=device).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = text_encoder(batch["input_ids"].to(device), return_dict=False)[0]
            target = (noise if noise_scheduler.config.prediction_type == "epsilon"
                      else noise_scheduler.get_velocity(latents, noise, timesteps))
            pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_layers, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - tick)
        tick = now
    return batch_size * updates, sum(times[warmup:])


SUITE_SIZES = {"toy": dict(profile="test", updates=2, warmup=1, batches=(1, 4), steps=5),
               "default": dict(profile="quick", updates=6, warmup=2, batches=(1, 8, 32), steps=25),
               "gpu": dict(profile="full", updates=10, warmup=3, batches=(1, 5, 32), steps=75)}


def suite_cases(size: str, device) -> list:
    """The suite's T2I-LoRA rows: LoRA training (``train_lora``, the shared trainer) against the
    diffusers script's step, on the profile's small base (CPU) or SD 2.1-base's architecture at
    512 px, batch 5 (CUDA); sampling per batch size with the profile's sampler (75 PNDM steps on
    CUDA) through ``generate_images`` against the pipeline called directly, one generator per batch."""
    import copy

    from support.benchmarks.runner import Case, Work
    from support.devices import pick_dtype
    from support.t2i.base_model import build_sd21_base, build_small_pipeline, pipeline_resolution
    from support.t2i.config import t2i_config, t2i_sampling_config
    from support.t2i.data import SyntheticCaptioned
    from support.t2i.sampling import generate_images

    s = SUITE_SIZES[size]
    dev = torch.device(device)
    dtype = pick_dtype(dev)
    if size == "gpu":
        config = t2i_config("full")
        sampling = t2i_sampling_config("full")
        torch.manual_seed(0)
        pipe = build_sd21_base(_tokenizer(8192), device=dev, dtype=dtype)
        resolution = 512
    else:
        config = t2i_config(s["profile"], {"train": {"cpu": dev.type == "cpu", "mixed_precision": "no"}})
        sampling = t2i_sampling_config(s["profile"])
        pipe = build_small_pipeline(config.base, _tokenizer(config.base.text.vocab_size,
                                                            config.base.text.max_length)).to(dev)
        resolution = pipeline_resolution(pipe)
    pipe.set_progress_bar_config(disable=True)
    batch = config.train.batch_size
    train = dataclasses.replace(config.train, max_steps=s["warmup"] + s["updates"], batch_size=batch,
                                gradient_accumulation_steps=1, log_every=1, checkpoint_every=s["warmup"] + s["updates"],
                                validation_prompts=(), sample_every_epochs=0, resume=None, resolution=resolution)
    train_config = dataclasses.replace(config, train=train)
    data = SyntheticCaptioned(batch * (s["warmup"] + s["updates"]), resolution,
                              channels=int(pipe.vae.config.in_channels))

    def ours_train():
        from support.t2i.train import train_lora

        _reset_accelerate()
        with tempfile.TemporaryDirectory() as tmp:
            history = train_lora(train_config, copy.deepcopy(pipe), data, tmp, progress=False)
        rates = history["steps_per_s"][s["warmup"]:]
        return Work(batch * len(rates), sum(1.0 / r for r in rates))

    def peer_train():
        return Work(*diffusers_script_lora(copy.deepcopy(pipe), config, batch, s["updates"], s["warmup"], resolution,
                                           dtype))

    cases = [Case("T2I-LoRA", f"train LoRA r{config.lora.rank}, {resolution} px", "images/s", ours_train, peer_train,
                  "diffusers train_text_to_image_lora.py step", batch=batch,
                  warm_ours=lambda: None, warm_peer=lambda: None)]     # both drop their own warm-up updates
    steps = s["steps"] if size == "toy" else sampling.steps
    prompt = "view_position = PA. modality = CR. Moderate right pleural effusion."
    for n in s["batches"]:
        kwargs = dict(steps=steps, guidance_scale=sampling.guidance_scale, sampler=sampling.sampler, batch_size=n,
                      resolution=resolution)

        def ours(n=n, kwargs=kwargs):
            generate_images(pipe, [prompt] * n, list(range(n)), **kwargs)
            return Work(n)

        def peer(n=n):
            from support.core.schedules import make_sampler

            original = pipe.scheduler
            pipe.scheduler = make_sampler(sampling.sampler, original.config)
            try:
                pipe(prompt=[prompt] * n, num_inference_steps=steps, guidance_scale=sampling.guidance_scale,
                     generator=torch.Generator("cpu").manual_seed(0), height=resolution, width=resolution,
                     output_type="np")
            finally:
                pipe.scheduler = original
            return Work(n)

        cases.append(Case("T2I-LoRA", f"sample {sampling.sampler} {steps} steps, guidance {sampling.guidance_scale:g}",
                          "images/s", ours, peer, "the diffusers pipeline called directly", batch=n,
                          rounds=2 if size == "default" else None,
                          warm_ours=lambda n=n, kwargs=kwargs: generate_images(
                              pipe, [prompt] * n, list(range(n)), **{**kwargs, "steps": 2})))
    return cases


def sampling_rate(pipe, images: int, batch_size: int, steps: int, guidance_scale: float, sampler: str,
                  resolution: int) -> dict[str, Any]:
    """Images/s of ``generate_images`` (one warm-up batch first, not timed)."""
    from support.t2i.sampling import generate_images

    prompts = ["view_position = PA. modality = CR. Moderate right pleural effusion."] * images
    kwargs = dict(steps=steps, guidance_scale=guidance_scale, sampler=sampler, batch_size=batch_size,
                  resolution=resolution)
    generate_images(pipe, prompts[:batch_size], list(range(batch_size)), **{**kwargs, "steps": 2})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    generate_images(pipe, prompts, list(range(images)), **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out = {"images_per_s": images / elapsed, "seconds_per_image": elapsed / images, "images": images,
           "batch_size": batch_size, "steps": steps, "guidance_scale": guidance_scale, "sampler": sampler,
           "resolution": resolution}
    if torch.cuda.is_available() and pipe.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def bench_profile(profile: str, updates: int, warmup: int, images: int) -> dict[str, Any]:
    """The profile's small base architecture, on CPU (the demo's setting)."""
    from support.t2i.base_model import build_small_pipeline, pipeline_resolution
    from support.t2i.config import t2i_config, t2i_sampling_config

    config = t2i_config(profile, {"train": {"cpu": True, "mixed_precision": "no"}})
    sampling = t2i_sampling_config(profile)
    pipe = build_small_pipeline(config.base, _tokenizer(config.base.text.vocab_size, config.base.text.max_length))
    resolution = pipeline_resolution(pipe)
    pipe.set_progress_bar_config(disable=True)
    train = training_rate(pipe, config, config.train.batch_size, updates, warmup, resolution)
    full = full_finetune_rate(pipe, config.train.batch_size, updates, warmup, resolution)
    sample = sampling_rate(pipe, images, sampling.batch_size, sampling.steps, sampling.guidance_scale,
                           sampling.sampler, resolution)
    return {"device": "cpu", "training": train, "full_finetune": full, "sampling": sample}


def bench_sd21(updates: int, warmup: int, images: int) -> dict[str, Any]:
    """SD 2.1-base architecture, random weights, CUDA fp16: the published configuration's speed."""
    from support.t2i.base_model import build_sd21_base
    from support.t2i.config import t2i_config, t2i_sampling_config

    config = t2i_config("full")
    sampling = t2i_sampling_config("full")
    torch.manual_seed(0)
    pipe = build_sd21_base(_tokenizer(8192), device="cuda", dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    train = training_rate(pipe, config, config.train.batch_size, updates, warmup, 512)
    full = full_finetune_rate(pipe, config.train.batch_size, updates, warmup, 512)
    sample = sampling_rate(pipe, images, config.train.batch_size, sampling.steps, sampling.guidance_scale,
                           sampling.sampler, 512)
    return {"device": torch.cuda.get_device_name(0), "training": train, "full_finetune": full, "sampling": sample}


def main(argv: list[str] | None = None) -> int:
    import diffusers
    import peft

    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.lora", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", choices=("test", "quick", "study", "full"),
                        help="small base architecture of this profile, timed on CPU")
    parser.add_argument("--updates", type=int, default=20, help="timed LoRA updates (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=16, help="images sampled for the sampling rate")
    parser.add_argument("--sd21-updates", type=int, default=20)
    parser.add_argument("--sd21-images", type=int, default=10)
    parser.add_argument("--no-sd21", action="store_true", help="skip the SD 2.1-base measurement on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                              "diffusers": diffusers.__version__, "peft": peft.__version__,
                              "cpu_threads": torch.get_num_threads()}
    result[args.profile] = bench_profile(args.profile, args.updates, args.warmup, args.images)
    q = result[args.profile]
    print(f"{args.profile} ({q['training']['resolution']} px, CPU, {torch.get_num_threads()} threads): "
          f"LoRA {q['training']['updates_per_s']:.2f} updates/s ({q['training']['images_per_s']:.1f} images/s, "
          f"batch {q['training']['batch_size']}; trainable share of the UNet "
          f"{q['training']['trainable']['unet']['share']:.3%}); sampling {q['sampling']['images_per_s']:.2f} "
          f"images/s ({q['sampling']['sampler']}, {q['sampling']['steps']} steps, guidance "
          f"{q['sampling']['guidance_scale']})")
    f = q["full_finetune"]
    print(f"  peer, full UNet fine-tuning ({f['trainable_parameters']:,} trainable): {f['updates_per_s']:.2f} updates/s; "
          f"LoRA is {q['training']['updates_per_s'] / f['updates_per_s']:.2f}x its speed")
    if args.no_sd21:
        result["sd21_base"] = {"skipped": "--no-sd21"}
    elif not torch.cuda.is_available():
        result["sd21_base"] = {"skipped": "CUDA not available"}
        print("SD 2.1-base: skipped (CUDA not available)")
    else:
        s = bench_sd21(args.sd21_updates, args.warmup, args.sd21_images)
        result["sd21_base"] = s
        print(f"SD 2.1-base on {s['device']} (512 px, fp16): LoRA {s['training']['updates_per_s']:.2f} updates/s "
              f"at batch 5, peak {s['training']['peak_memory_gib']:.1f} GiB, trainable share of the UNet "
              f"{s['training']['trainable']['unet']['share']:.3%}; sampling {s['sampling']['seconds_per_image']:.2f} "
              f"s/image (75 PNDM steps, guidance 4, batch 5), peak {s['sampling']['peak_memory_gib']:.1f} GiB")
        f = s["full_finetune"]
        print(f"  peer, full UNet fine-tuning: {f['updates_per_s']:.2f} updates/s, peak {f['peak_memory_gib']:.1f} GiB; "
              f"LoRA is {s['training']['updates_per_s'] / f['updates_per_s']:.2f}x its speed at "
              f"{s['training']['peak_memory_gib'] / f['peak_memory_gib']:.2f}x its memory")
    if args.out:
        from support.io import write_json_atomic

        write_json_atomic(args.out, result)
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
