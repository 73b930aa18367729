"""Training speed of DINO (multi-crop included) against lightly's own example loop.

``python -m support.benchmarks.dino [--profile quick] [--updates 12] [--out result.json]``

Ours: images/s of :func:`support.ssl.train.train_dino` itself, the shared trainer's per-update
timing (loading and cropping the batch, teacher and student forward, loss, backward, the frozen
last layer, the guarded optimizer step, the momentum teacher), warm-up updates dropped.
Theirs: the plain PyTorch loop of lightly's DINO example (``examples/pytorch/dino.py``): a
``DataLoader`` over the same images through the same ``DINOTransform``, the teacher a deep copy,
``update_momentum`` before each batch, lightly's ``DINOLoss``, ``cancel_last_layer_gradients``,
Adam. Both use the same ViT, head, crops, batch size and data-loader workers. The two alternate,
each measurement repeated and the median kept, so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class GrayImages(torch.utils.data.Dataset):
    """Seeded gray images in [0, 1] with a bright disc each (speed does not depend on content)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        from support.ddpm.data import SyntheticDiscs

        self.images = (SyntheticDiscs(n, size, seed=seed).images + 1) / 2

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def ours_training(config, images, updates: int, warmup: int) -> tuple[int, float]:
    """(images, seconds) of ``train_dino`` over ``updates`` updates after ``warmup`` (its own timing)."""
    from support.ssl.train import train_dino

    total = warmup + updates
    train = dataclasses.replace(config.train, max_steps=total, epochs=None, log_every=1, checkpoint_every=total,
                                checkpoints_total_limit=1, resume=None)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_dino(dataclasses.replace(config, train=train), images, tmp, progress=False)
    rates = history["images_per_s"][warmup:]
    batch = config.train.batch_size
    return batch * len(rates), sum(batch / r for r in rates)


def ours_rate(config, images, updates: int, warmup: int) -> float:
    """Images/s of ``train_dino`` over ``updates`` updates after ``warmup`` (its own timing)."""
    n, seconds = ours_training(config, images, updates, warmup)
    return n / seconds


class _Views(torch.utils.data.Dataset):
    """Their dataset: a picture per item through the transform, as a torchvision dataset gives it."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        pixels = (self.images[i]["image"][0].numpy() * 255).round().astype("uint8")
        return self.transform(Image.fromarray(pixels, mode="L")), 0


def lightly_example_rate(config, images, updates: int, warmup: int, device: torch.device) -> float:
    """Images/s of lightly's example loop over ``updates`` updates after ``warmup``."""
    n, seconds = lightly_example(config, images, updates, warmup, device)
    return n / seconds


def lightly_example(config, images, updates: int, warmup: int, device: torch.device) -> tuple[int, float]:
    """(images, seconds) of lightly's example loop over ``updates`` updates after ``warmup``."""
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from support.ssl.data import dino_transform
    from support.ssl.train import dino_loss, dino_network

    c, t = config, config.train
    student, teacher = dino_network(c), dino_network(c)
    teacher.load_state_dict(student.state_dict())      # their deepcopy; weight norm refuses one
    deactivate_requires_grad(teacher)
    student.to(device)
    teacher.to(device)
    criterion = dino_loss(c).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=t.learning_rate)
    loader = torch.utils.data.DataLoader(_Views(images, dino_transform(c.crops)), batch_size=t.batch_size,
                                         shuffle=True, drop_last=True, num_workers=t.num_workers)
    total, times, epoch = warmup + updates, [], 0
    tick = time.perf_counter()
    while len(times) < total:
        momentum = cosine_schedule(epoch, 100, t.momentum_start, t.momentum_end)
        for views, _ in loader:
            update_momentum(student, teacher, m=momentum)
            views = [v.to(device) for v in views]
            teacher_out = [teacher(v) for v in views[:2]]
            student_out = [student(v) for v in views]
            loss = criterion(teacher_out, student_out, epoch=epoch)
            loss.backward()
            student.head.cancel_last_layer_gradients(current_epoch=epoch)
            optimizer.step()
            optimizer.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - tick)
            tick = now
            if len(times) == total:
                break
        epoch += 1
    return t.batch_size * updates, sum(times[warmup:])


SUITE_SIZES = {"toy": dict(profile="test", updates=2, warmup=1), "default": dict(profile="quick", updates=8, warmup=2),
               "gpu": dict(profile="quick", updates=20, warmup=3)}


def suite_cases(size: str, device) -> list:
    """The suite's DINO row: training with multi-crop, the shared trainer against lightly's example loop."""
    from support.benchmarks.runner import Case, Work
    from support.ssl.config import dino_config

    s = SUITE_SIZES[size]
    dev = torch.device(device)
    config = dino_config(s["profile"], {"train": {"cpu": dev.type == "cpu", "mixed_precision": "no"}})
    data = GrayImages(config.train.batch_size * 4, config.crops.global_size)
    return [Case("DINO", f"train, 2x{config.crops.global_size} + {config.crops.local_views}x{config.crops.local_size} "
                 "px crops", "images/s", lambda: Work(*ours_training(config, data, s["updates"], s["warmup"])),
                 lambda: Work(*lightly_example(config, data, s["updates"], s["warmup"], dev)),
                 "lightly's example loop (examples/pytorch/dino.py)", batch=config.train.batch_size,
                 warm_ours=lambda: None, warm_peer=lambda: None)]     # both drop their own warm-up updates


def run(profile: str = "quick", updates: int = 12, warmup: int = 3, repeats: int = 3, images: int = 0,
        device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Measure both loops alternately; return a JSON-ready result (also printed by ``main``)."""
    from support.devices import pick_device
    from support.ssl.config import dino_config

    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    config = dino_config(profile, {"train": {"cpu": dev.type == "cpu", "mixed_precision": "no"}})
    data = GrayImages(images or config.train.batch_size * 4, config.crops.global_size)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(ours_rate(config, data, updates, warmup))
        theirs.append(lightly_example_rate(config, data, updates, warmup, dev))
    result = {
        "profile": profile, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "batch_size": config.train.batch_size,
        "crops": f"{2} x {config.crops.global_size} px + {config.crops.local_views} x {config.crops.local_size} px",
        "backbone": dataclasses.asdict(config.backbone), "updates_timed": updates, "repeats": repeats,
        "ours_images_per_s": statistics.median(ours), "lightly_example_images_per_s": statistics.median(theirs),
        "ours_runs": ours, "lightly_example_runs": theirs,
    }
    result["ratio_ours_over_lightly_example"] = result["ours_images_per_s"] / result["lightly_example_images_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.dino", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="DINO profile: test, quick, study or full")
    parser.add_argument("--updates", type=int, default=12, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of each loop (median kept)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.profile, args.updates, args.warmup, args.repeats, device=args.device, threads=args.threads)
    print(f"DINO training, {result['crops']}, batch {result['batch_size']} on {result['device']} "
          f"({result['threads']} threads), median of {result['repeats']}:")
    print(f"  ours (shared trainer)     {result['ours_images_per_s']:8.1f} images/s")
    print(f"  lightly's example loop    {result['lightly_example_images_per_s']:8.1f} images/s")
    print(f"  ratio ours / theirs       {result['ratio_ours_over_lightly_example']:8.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
