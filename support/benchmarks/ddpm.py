"""Throughput of the DDPM stage against I-SynMed's implementation (denoising-diffusion-pytorch).

``python -m support.benchmarks.ddpm [--profile quick] [--out result.json]``

Ours: training images/s of :func:`support.ddpm.train.train_ddpm` itself (its own per-update
timing, warm-up updates dropped) and sampling images/s of :func:`sample_images` per sampler.
Theirs: ``Unet`` + ``GaussianDiffusion`` at the same base width, multipliers, resolution,
timesteps, objective (v) and schedule (sigmoid), trained by the inner loop of their ``Trainer``
(forward, backward, clip 1, Adam, EMA every 10) and sampled by ``GaussianDiffusion.sample``
(ancestral at 1,000 steps, DDIM below). Their package is not a project dependency: install it
apart and point ``--reference-path`` (or ``DDPM_REFERENCE_PATH``) at it::

    make bench-deps      # environments/requirements-bench.txt into ~/.cache/synthcxr/bench-packages

Without it, their half is skipped with a message. Both implementations run alternately, each
measurement repeated and the median kept, so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

DEFAULT_REFERENCE_PATH = Path("~/.cache/synthcxr/bench-packages").expanduser()
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpmsolver++": 25}


def import_reference(path: str | Path | None):
    """``(Unet, GaussianDiffusion, EMA)`` of denoising-diffusion-pytorch, or a reason it is absent."""
    import os

    candidates = [p for p in (path, os.environ.get("DDPM_REFERENCE_PATH"), DEFAULT_REFERENCE_PATH) if p]
    for candidate in candidates:
        candidate = str(Path(candidate).expanduser())
        if Path(candidate).is_dir() and candidate not in sys.path:
            sys.path.append(candidate)  # appended: the venv's own packages keep precedence
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from denoising_diffusion_pytorch import denoising_diffusion_pytorch as module
        from ema_pytorch import EMA
    except ImportError as exc:
        return None, (f"denoising-diffusion-pytorch not importable ({exc}); install the peers with "
                      f"`make bench-deps` (into {DEFAULT_REFERENCE_PATH}) or pass --reference-path")
    # its samplers draw a progress bar per call (1,000 lines a walk); ours run without one
    if not isinstance(module.tqdm, functools.partial):      # once, however often this is called
        module.tqdm = functools.partial(module.tqdm, disable=True)
    return (Unet, GaussianDiffusion, EMA), None


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ ours
def ours_training(config, batch_size: int, updates: int, warmup: int, device: str) -> tuple[int, float]:
    """(images, seconds) of ``train_ddpm`` over ``updates`` updates after ``warmup`` (its own
    per-update timing: set-up, validation and export left out)."""
    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.train import train_ddpm

    total = warmup + updates
    train = dataclasses.replace(config.train, max_steps=total, batch_size=batch_size, gradient_accumulation_steps=1,
                                log_every=1, checkpoint_every=total, validate_every=0, sample_every=0,
                                sample_grid_size=1, sample_grid_steps=1, resume=None, cpu=device == "cpu")
    cfg = dataclasses.replace(config, train=train)
    data = SyntheticDiscs(batch_size * total, cfg.unet.sample_size, channels=cfg.unet.in_channels)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_ddpm(cfg, data, tmp, progress=False)
    rates = history["images_per_s"][warmup:]
    return batch_size * len(rates), sum(batch_size / r for r in rates)


def ours_training_rate(config, batch_size: int, updates: int, warmup: int, device: str) -> float:
    """Images/s of ``train_ddpm`` over ``updates`` updates after ``warmup`` (its own timing)."""
    images, seconds = ours_training(config, batch_size, updates, warmup, device)
    return images / seconds


# ------------------------------------------------------------------------------------ theirs
def reference_models(reference, config, device):
    Unet, GaussianDiffusion, _ = reference
    u = config.unet
    net = Unet(dim=u.base_channels, dim_mults=tuple(u.channel_mults), channels=u.in_channels, flash_attn=False)
    common = dict(image_size=u.sample_size, timesteps=config.noise.num_train_timesteps, objective="pred_v",
                  beta_schedule="sigmoid", auto_normalize=False)
    return net.to(device), common


def reference_training_rate(reference, config, batch_size: int, updates: int, warmup: int, device: str,
                            autocast_dtype) -> float:
    """Images/s of their ``Trainer`` inner loop: loss, backward, clip 1, Adam, EMA (every 10)."""
    images, seconds = reference_training(reference, config, batch_size, updates, warmup, device, autocast_dtype)
    return images / seconds


def reference_training(reference, config, batch_size: int, updates: int, warmup: int, device: str,
                       autocast_dtype) -> tuple[int, float]:
    """(images, seconds) of their ``Trainer`` inner loop over ``updates`` updates after ``warmup``."""
    _, GaussianDiffusion, EMA = reference
    from support.ddpm.data import SyntheticDiscs

    net, common = reference_models(reference, config, device)
    diffusion = GaussianDiffusion(net, **common).to(device)
    t = config.train
    opt = torch.optim.Adam(diffusion.parameters(), lr=t.learning_rate, betas=tuple(t.adam_betas))
    ema = EMA(diffusion, beta=t.ema_decay, update_every=t.ema_update_every)
    data = SyntheticDiscs(batch_size, config.unet.sample_size, channels=config.unet.in_channels).images.to(device)

    def update():
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                            enabled=autocast_dtype != torch.float32):
            loss = diffusion(data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()

    for _ in range(warmup):
        update()
    seconds = [_median_time(update, 1) for _ in range(updates)]
    return batch_size * updates, sum(seconds)


def reference_sampler(reference, config, device, sampler: str, steps: int):
    """A callable drawing one batch with their sampler, or None where they have no such sampler."""
    _, GaussianDiffusion, _ = reference
    if sampler == "dpmsolver++":
        return None
    if sampler == "ddpm" and steps != config.noise.num_train_timesteps:
        return None  # their ancestral sampler always walks every training timestep
    net, common = reference_models(reference, config, device)
    diffusion = GaussianDiffusion(net, sampling_timesteps=steps if sampler == "ddim" else None, **common).to(device)
    diffusion.eval()
    return diffusion


# ------------------------------------------------------------------------------------ suite
# The suite's sizes: ``toy`` for the test, ``default`` for the README's CPU figures (small networks:
# the ancestral sampler walks every training timestep), ``gpu`` I-SynMed's 256 px configuration.
SUITE_SIZES: dict[str, dict[str, Any]] = {
    "toy": dict(profile="test", resolution=16, timesteps=20, train_batch=4, updates=2, warmup=1,
                batches=(1, 4), ancestral_batches=(1, 4), ddim_steps=5, dpm_steps=5, quality_updates=20,
                quality_batch=8, quality_n=16, sample_rounds=None),
    "default": dict(profile="test", resolution=16, timesteps=1000, train_batch=16, updates=6, warmup=2,
                    batches=(1, 8, 32), ancestral_batches=(1, 8), ddim_steps=50, dpm_steps=25,
                    quality_updates=400, quality_batch=16, quality_n=32, sample_rounds=2),
    "gpu": dict(profile="full", resolution=256, timesteps=1000, train_batch=8, updates=10, warmup=3,
                batches=(1, 8, 32), ancestral_batches=(1, 8, 32), ddim_steps=50, dpm_steps=25, quality_updates=0,
                quality_batch=8, quality_n=0, sample_rounds=None),
}


def suite_config(size: str):
    """The DDPM config of a suite size (its network at the size's resolution and timesteps)."""
    from support.ddpm.config import ddpm_config

    s = SUITE_SIZES[size]
    return ddpm_config(s["profile"], {"unet": {"sample_size": s["resolution"]},
                                      "noise": {"num_train_timesteps": s["timesteps"]},
                                      "train": {"sample_grid_steps": min(5, s["timesteps"])}})


def _trained_for_quality(config, updates: int, batch: int, device) -> tuple[Any, torch.Tensor]:
    """Our network trained ``updates`` updates on discs (the FD comparison needs a model that has
    learnt something), its EMA weights; and held-out discs in [0, 1] to score samples against."""
    from diffusers import DDPMPipeline

    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.train import train_ddpm

    train = dataclasses.replace(config.train, max_steps=updates, batch_size=batch, gradient_accumulation_steps=1,
                                learning_rate=1e-3, lr_warmup_steps=0, ema_update_every=1,
                                ema_update_after_step=min(20, updates), ema_decay=0.99, log_every=max(updates, 1),
                                checkpoint_every=updates, validate_every=0, resume=None, cpu=device.type == "cpu",
                                mixed_precision="no")
    cfg = dataclasses.replace(config, train=train)
    size = cfg.unet.sample_size
    with tempfile.TemporaryDirectory() as tmp:
        train_ddpm(cfg, SyntheticDiscs(batch * 64, size), tmp, progress=False)
        unet = DDPMPipeline.from_pretrained(Path(tmp) / "pipeline").unet.to(device).eval()
    return unet, (SyntheticDiscs(256, size, seed=1).images + 1) / 2


def suite_cases(size: str, device, reference_path: str | None = None) -> list:
    """The DDPM rows of the suite: training against their trainer loop; sampling per sampler and
    batch size against their sampler (ancestral, DDIM) or, for DPM-Solver++, against our own
    ancestral sampler at every timestep, with both samplers' Fréchet distance to held-out images."""
    from support.benchmarks.gpu import step_flops
    from support.benchmarks.runner import Case, Work
    from support.core.schedules import make_noise_scheduler, make_sampler
    from support.ddpm.model import build_unet
    from support.ddpm.quality import compare_samplers
    from support.ddpm.sampling import sample_images
    from support.devices import pick_dtype

    reference, why_not = import_reference(reference_path)
    if reference is None:
        raise ModuleNotFoundError(why_not)
    s = SUITE_SIZES[size]
    dev = torch.device(device)
    dtype = pick_dtype(dev)
    config = suite_config(size)
    u = config.unet
    T = config.noise.num_train_timesteps
    flops = None
    if dev.type == "cuda":      # FLOPs of one training image: forward and backward of the network
        net = build_unet(u).to(dev)
        x = torch.randn(1, u.in_channels, u.sample_size, u.sample_size, device=dev)
        flops = step_flops(lambda: net(x, torch.zeros(1, dtype=torch.long, device=dev)).sample.square().mean())
        del net

    def ours_train():
        return Work(*ours_training(config, s["train_batch"], s["updates"], s["warmup"], dev.type))

    def peer_train():
        return Work(*reference_training(reference, config, s["train_batch"], s["updates"], s["warmup"], str(dev),
                                        dtype))

    # Both sides drop their own warm-up updates: no round is dropped.
    cases = [Case("DDPM", f"train {u.sample_size} px", "images/s", ours_train, peer_train,
                  "denoising-diffusion-pytorch Trainer loop", batch=s["train_batch"], flops_per_item=flops,
                  warm_ours=lambda: None, warm_peer=lambda: None)]

    quality: dict[str, Any] = {}
    if s["quality_updates"]:
        unet, real = _trained_for_quality(config, s["quality_updates"], s["quality_batch"], dev)
        table, _ = compare_samplers(unet, make_noise_scheduler(config.noise).config,
                                    [("dpmsolver++", s["dpm_steps"]), ("ddpm", T)], real, s["quality_n"],
                                    max(s["batches"]))
        fd = dict(zip(table["sampler"], table["pixel_fd"]))
        quality = {"fd_ours": fd["dpmsolver++"], "fd_peer": fd["ddpm"],
                   "fd_within_10pct": abs(fd["dpmsolver++"] - fd["ddpm"]) <= 0.1 * fd["ddpm"],
                   "fd_samples": s["quality_n"]}
    else:
        torch.manual_seed(0)
        unet = build_unet(u).to(dev).eval()
    unet = unet.to(dev, dtype)
    noise_config = make_noise_scheduler(config.noise).config

    def ours_sampler(name: str, steps: int, batch: int):
        sampler = make_sampler(name, noise_config)
        seeds = list(range(batch))

        def call():
            sample_images(unet, sampler, seeds, steps, device=dev, dtype=dtype)
            return Work(batch)

        return call, lambda: sample_images(unet, sampler, seeds, 2, device=dev, dtype=dtype)

    for batch in s["batches"]:
        for name, steps in (("ddpm", T), ("ddim", s["ddim_steps"]), ("dpmsolver++", s["dpm_steps"])):
            if name != "ddim" and batch not in s["ancestral_batches"]:
                continue    # rows with a T-step walk: on 2 CPU cores batch 32 walks 1,000 steps for minutes a round
            ours, warm_ours = ours_sampler(name, steps, batch)
            if name == "dpmsolver++":
                peer, warm_peer = ours_sampler("ddpm", T, batch)
                peer_name, extra = f"ours, ancestral {T} steps", quality
            else:
                theirs = reference_sampler(reference, config, str(dev), name, steps)

                def peer(theirs=theirs, batch=batch):
                    with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=dtype,
                                                         enabled=dtype != torch.float32):
                        theirs.sample(batch_size=batch)
                    return Work(batch)

                def warm_peer(theirs=theirs, batch=batch):
                    with torch.no_grad():
                        theirs.model(torch.randn(batch, u.in_channels, u.sample_size, u.sample_size, device=dev),
                                     torch.zeros(batch, dtype=torch.long, device=dev))
                peer_name, extra = f"denoising-diffusion-pytorch {name} sampler", {}
            cases.append(Case("DDPM", f"sample {name} {steps} steps", "images/s", ours, peer, peer_name, batch=batch,
                              warm_ours=warm_ours, warm_peer=warm_peer, extra=extra,
                              rounds=None if name == "ddim" else s["sample_rounds"]))   # rows with a T-step walk
    return cases


# ------------------------------------------------------------------------------------ main
def run(profile: str = "quick", train_batch: int = 8, train_updates: int = 6, warmup: int = 2,
        sample_batch: int = 8, steps: dict[str, int] | None = None, repeats: int = 2,
        reference_path: str | None = None, device: str = "auto", threads: int | None = None) -> dict:
    """Measure both implementations; return a JSON-ready result (also printed by ``main``)."""
    from support.devices import pick_device, pick_dtype
    from support.ddpm.config import ddpm_config
    from support.ddpm.model import build_unet, count_parameters
    from support.core.schedules import make_sampler
    from support.ddpm.sampling import sample_images
    from support.core.schedules import make_noise_scheduler

    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    dtype = pick_dtype(dev)
    config = ddpm_config(profile)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    reference, why_not = import_reference(reference_path)
    result: dict[str, Any] = {
        "profile": profile, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "resolution": config.unet.sample_size, "train_batch": train_batch, "sample_batch": sample_batch,
        "steps": steps, "ours": {}, "reference": {}, "ratio_ours_over_reference": {},
        "reference_skipped": why_not,
    }
    torch.manual_seed(0)
    unet = build_unet(config.unet).to(dev, dtype).eval()
    scheduler = make_noise_scheduler(config.noise)
    result["ours"]["parameters"] = count_parameters(unet)
    if reference is not None:
        net, _ = reference_models(reference, config, "cpu")
        result["reference"]["parameters"] = count_parameters(net)

    # Training: alternate ours and theirs, keep the median of each.
    ours_train, ref_train = [], []
    for _ in range(repeats):
        ours_train.append(ours_training_rate(config, train_batch, train_updates, warmup, dev.type))
        if reference is not None:
            ref_train.append(reference_training_rate(reference, config, train_batch, train_updates, warmup,
                                                     str(dev), dtype))
    result["ours"]["train_images_per_s"] = statistics.median(ours_train)
    if ref_train:
        result["reference"]["train_images_per_s"] = statistics.median(ref_train)

    # Sampling, per sampler.
    seeds = list(range(sample_batch))
    for name, n_steps in steps.items():
        sampler = make_sampler(name, scheduler.config)
        ours = functools.partial(sample_images, unet, sampler, seeds, n_steps, device=dev, dtype=dtype)
        theirs_model = reference_sampler(reference, config, str(dev), name, n_steps) if reference else None
        sample_images(unet, sampler, seeds, 2, device=dev, dtype=dtype)   # warm-up: kernels, caches
        if theirs_model is not None:  # warm-up: one network call at the batch shape
            with torch.no_grad():
                theirs_model.model(torch.randn(sample_batch, config.unet.in_channels, config.unet.sample_size,
                                               config.unet.sample_size, device=dev),
                                   torch.zeros(sample_batch, dtype=torch.long, device=dev))
        ours_t, ref_t = [], []
        for _ in range(repeats):
            ours_t.append(_median_time(ours, 1))
            if theirs_model is not None:
                with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=dtype,
                                                     enabled=dtype != torch.float32):
                    ref_t.append(_median_time(functools.partial(theirs_model.sample, batch_size=sample_batch), 1))
        result["ours"][f"sample_{name}_images_per_s"] = sample_batch / statistics.median(ours_t)
        if ref_t:
            result["reference"][f"sample_{name}_images_per_s"] = sample_batch / statistics.median(ref_t)
    for key, value in result["reference"].items():
        if key != "parameters" and key in result["ours"]:
            result["ratio_ours_over_reference"][key] = result["ours"][key] / value
    return result


def _steps_arg(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in DEFAULT_STEPS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--steps {text!r}: expected e.g. ddpm=1000,ddim=50,dpmsolver++=25")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    from support.io import write_json_atomic

    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.ddpm", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", choices=("test", "quick", "study", "full"))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-updates", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--steps", type=_steps_arg, default=None,
                        help="sampler steps, e.g. ddpm=1000,ddim=50,dpmsolver++=25 (the defaults)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reference-path", default=None, help="folder holding denoising_diffusion_pytorch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.profile, args.train_batch, args.train_updates, args.warmup, args.sample_batch, args.steps,
                 args.repeats, args.reference_path, args.device, args.threads)
    if result["reference_skipped"]:
        print(f"reference half skipped: {result['reference_skipped']}")
    print(f"{'metric':34s} {'ours':>10s} {'reference':>10s} {'ours/ref':>9s}")
    for key, ours in result["ours"].items():
        ref = result["reference"].get(key)
        ratio = result["ratio_ours_over_reference"].get(key)
        fmt = (lambda v: f"{v:10.0f}") if key == "parameters" else (lambda v: f"{v:10.3f}")
        print(f"{key:34s} {fmt(ours)} {fmt(ref) if ref is not None else '         -'} "
              f"{f'{ratio:9.2f}' if ratio is not None else '        -'}")
    if args.out:
        write_json_atomic(args.out, result)
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
