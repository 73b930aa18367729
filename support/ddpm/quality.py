"""Measured, not assumed: sample quality against held-out real images, per sampler and step count."""

from __future__ import annotations

import time
from typing import Sequence

import pandas as pd
import torch

from support.core.schedules import make_sampler
from support.ddpm.sampling import pixel_frechet, sample_images


def real_images(records: pd.DataFrame, size: int, n: int | None = None, split: str = "test",
                views: Sequence[str] = ("PA", "AP"), seed: int = 0) -> torch.Tensor:
    """Up to ``n`` held-out real images of ``split`` as float (N, 1, size, size) in [0, 1]."""
    from support.data.datasets import ImageDataset

    chosen = records[(records["split"] == split) & records["view"].isin(views)]
    if len(chosen) < 2:
        raise ValueError(f"only {len(chosen)} {split} images with views {list(views)}; need at least 2")
    if n is not None and len(chosen) > n:
        chosen = chosen.sample(n, random_state=seed)
    data = ImageDataset(chosen, size=size, value_range=(0.0, 1.0))
    return torch.stack([data[i]["image"] for i in range(len(data))])


def generate(unet, training_scheduler_config, sampler: str, steps: int, seeds: Sequence[int],
             batch_size: int) -> tuple[torch.Tensor, float]:
    """Images for ``seeds`` in batches, and the seconds it took."""
    scheduler = make_sampler(sampler, training_scheduler_config)
    out, t0 = [], time.perf_counter()
    for i in range(0, len(seeds), batch_size):
        out.append(sample_images(unet, scheduler, list(seeds[i:i + batch_size]), steps))
    return torch.cat(out), time.perf_counter() - t0


def compare_samplers(unet, training_scheduler_config, settings: Sequence[tuple[str, int]], real: torch.Tensor,
                     n: int, batch_size: int, seed: int = 0, fd_size: int = 16) -> tuple[pd.DataFrame, dict]:
    """For each (sampler, steps): ``n`` samples with seeds seed..seed+n-1, their pixel Fréchet
    distance to ``real`` on ``fd_size``-pixel thumbnails, seconds and images/s.

    Returns the table and the images per setting (for grids).
    """
    from tqdm.auto import tqdm

    rows, images = [], {}
    seeds = list(range(seed, seed + n))
    for sampler, steps in tqdm(list(settings), desc="samplers", unit="setting"):
        x, seconds = generate(unet, training_scheduler_config, sampler, steps, seeds, batch_size)
        images[(sampler, steps)] = x
        rows.append({"sampler": sampler, "steps": steps, "n": n, "seconds": round(seconds, 3),
                     "images_per_s": round(n / seconds, 3), "pixel_fd": pixel_frechet(x, real, size=fd_size)})
    return pd.DataFrame(rows), images


def untrained_unet(unet, seed: int = 0):
    """A network of the same configuration with fresh random weights: the floor quality is judged against."""
    torch.manual_seed(seed)
    fresh = type(unet).from_config(unet.config)
    return fresh.to(next(unet.parameters()).device).eval()


def plot_quality_vs_steps(table: pd.DataFrame):
    """Pixel Fréchet distance against denoising steps, one line per sampler (log-scaled steps)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(table, x="steps", y="pixel_fd", hue="sampler", marker="o", ax=ax)
    ax.set_xscale("log")
    ax.set_ylabel("Fréchet distance (16x16 pixels)")
    ax.set_xlabel("denoising steps")
    fig.tight_layout()
    return fig


def quality_by_update(history: dict) -> pd.DataFrame:
    """The validations of a training history: update, online and EMA validation loss, and the
    EMA samples' pixel Fréchet distance where it was measured (``val_fd_samples``)."""
    table = pd.DataFrame({"update": history.get("val_step", []), "val_loss": history.get("val_loss", []),
                          "val_loss_ema": history.get("val_loss_ema", [])})
    fd = history.get("val_pixel_fd_ema", [])
    if len(fd) == len(table):
        table["pixel_fd_ema"] = fd
    return table


def plot_training(history: dict):
    """Training loss; validation loss of the online and EMA weights; and, where measured, the EMA
    samples' pixel Fréchet distance against updates (quality, which a loss does not show)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    val = quality_by_update(history)
    panels = 3 if "pixel_fd_ema" in val else 2
    fig, ax = plt.subplots(1, panels, figsize=(5.5 * panels, 3.5))
    sns.lineplot(x=history["step"], y=history["loss"], ax=ax[0])
    ax[0].set(title="training loss", xlabel="update")
    if len(val):
        losses = val.rename(columns={"val_loss": "online", "val_loss_ema": "EMA"})[["update", "online", "EMA"]]
        sns.lineplot(losses.melt("update", var_name="weights", value_name="loss"), x="update", y="loss",
                     hue="weights", marker="o", ax=ax[1])
    ax[1].set_title("validation loss (held-out images, fixed noise)")
    if panels == 3:
        sns.lineplot(val, x="update", y="pixel_fd_ema", marker="o", ax=ax[2])
        ax[2].set(title="EMA samples vs validation images", ylabel="Fréchet distance (16x16 pixels)")
    fig.tight_layout()
    return fig
