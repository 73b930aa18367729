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
        from ema_pytorch import EMA
    except ImportError as exc:
        return None, (f"denoising-diffusion-pytorch not importable ({exc}); install the peers with "
                      f"`make bench-deps` (into {DEFAULT_REFERENCE_PATH}) or pass --reference-path")
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
def ours_training_rate(config, batch_size: int, updates: int, warmup: int, device: str) -> float:
    """Images/s of ``train_ddpm`` over ``updates`` updates after ``warmup`` (its own timing)."""
    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.train import train_ddpm

    total = warmup + updates
    train = dataclasses.replace(config.train, max_steps=total, batch_size=batch_size, gradient_accumulation_steps=1,
                                log_every=1, checkpoint_every=total, validate_every=0, sample_every=0,
                                sample_grid_size=1, sample_grid_steps=1, resume=None, cpu=device == "cpu")
    cfg = dataclasses.replace(config, train=train)
    data = SyntheticDiscs(batch_size * total, cfg.unet.sample_size, channels=cfg.unet.in_channels)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_ddpm(cfg, data, tmp)
    rates = history["images_per_s"][warmup:]
    seconds = sum(batch_size / r for r in rates)
    return batch_size * len(rates) / seconds


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
    return batch_size * updates / sum(seconds)


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
