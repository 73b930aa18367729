"""The forward diffusion process shared by every diffusion model here (DDPM, T2I-LoRA, RePaint,
XGeM): noise schedules, the training scheduler, training targets, loss weights and the samplers
built from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

import numpy as np
import torch

from support.params import Check, Checked

SAMPLERS = ("ddpm", "ddim", "dpmsolver++", "pndm")


@dataclass
class NoiseConfig(Checked):
    """The forward process and what the network predicts."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "cosine", "sigmoid"] = "sigmoid"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    beta_start: float = 1e-4        # linear schedules only
    beta_end: float = 0.02          # linear schedules only (scaled_linear: linear in sqrt(beta), as SD)
    sigmoid_start: float = -3.0     # sigmoid schedule (Jabri et al. 2022) only
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    clip_sample: bool = True        # clip the predicted x0 to [-1, 1] while sampling

    def checks(self) -> Iterable[Check]:
        yield self.num_train_timesteps >= 2, "num_train_timesteps", "at least 2"
        yield 0 < self.beta_start < self.beta_end < 1, "beta_start", "in (0, beta_end), with beta_end < 1"
        yield self.sigmoid_start < self.sigmoid_end, "sigmoid_start", "below sigmoid_end"
        yield self.sigmoid_tau > 0, "sigmoid_tau", "positive"


def sigmoid_betas(num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                  max_beta: float = 0.999) -> np.ndarray:
    """Betas of the sigmoid schedule of Jabri et al. (2022), float64, increasing, in (0, 1).

    ``alpha_bar(t)`` follows a sigmoid over ``t in [0, 1]`` stretched to ``[start, end] / tau``
    and normalised to 1 at ``t = 0``; betas are ``1 - alpha_bar(t_i) / alpha_bar(t_{i-1})``,
    capped at ``max_beta`` because the last step would otherwise destroy the signal exactly
    (beta = 1). diffusers' own ``beta_schedule="sigmoid"`` is GeoDiff's different schedule, so
    this one is handed to the schedulers as ``trained_betas``.
    """
    if num_timesteps < 2:
        raise ValueError(f"sigmoid schedule: num_timesteps {num_timesteps}, expected at least 2")
    if not (start < end and tau > 0):
        raise ValueError(f"sigmoid schedule: need start < end and tau > 0, got {start}, {end}, {tau}")
    t = np.linspace(0.0, 1.0, num_timesteps + 1, dtype=np.float64)

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    alpha_bar = (v_end - sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 1e-8, max_beta)


def make_noise_scheduler(cfg: NoiseConfig):
    """The training scheduler (diffusers ``DDPMScheduler``); samplers are built ``from_config`` of it."""
    from diffusers import DDPMScheduler

    common = dict(num_train_timesteps=cfg.num_train_timesteps, prediction_type=cfg.prediction_type,
                  clip_sample=cfg.clip_sample, variance_type="fixed_small")
    if cfg.beta_schedule == "linear":
        return DDPMScheduler(beta_schedule="linear", beta_start=cfg.beta_start, beta_end=cfg.beta_end, **common)
    if cfg.beta_schedule == "scaled_linear":
        return DDPMScheduler(beta_schedule="scaled_linear", beta_start=cfg.beta_start, beta_end=cfg.beta_end, **common)
    if cfg.beta_schedule == "cosine":
        return DDPMScheduler(beta_schedule="squaredcos_cap_v2", **common)
    if cfg.beta_schedule == "sigmoid":
        betas = sigmoid_betas(cfg.num_train_timesteps, cfg.sigmoid_start, cfg.sigmoid_end, cfg.sigmoid_tau)
        return DDPMScheduler(trained_betas=betas.tolist(), **common)
    raise ValueError(f"noise.beta_schedule {cfg.beta_schedule!r}: expected linear, scaled_linear, cosine or sigmoid")


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` at integer ``timesteps`` (float32)."""
    alpha_bar = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps]
    return (alpha_bar / (1.0 - alpha_bar)).float()


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the network learns to predict: the noise (epsilon) or the velocity v."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"prediction_type {prediction_type!r}: expected epsilon or v_prediction")


def loss_weights(scheduler, timesteps: torch.Tensor, prediction_type: str, weighting: str,
                 gamma: float = 5.0) -> torch.Tensor | None:
    """Per-sample weights of the target MSE, or None for the plain MSE.

    Both weightings are defined on the x0-MSE and converted to the target actually predicted:
    ``||eps err||^2 = snr * ||x0 err||^2`` and ``||v err||^2 = (snr + 1) * ||x0 err||^2``.
    ``min_snr`` (Hang et al. 2023) gives the x0-MSE the weight ``min(snr, gamma)``, i.e.
    ``min(snr, gamma) / snr`` on epsilon and ``min(snr, gamma) / (snr + 1)`` on v. ``snr`` (no clip)
    makes every objective equal to the epsilon-MSE, denoising-diffusion-pytorch's default.
    """
    if weighting == "none":
        return None
    if weighting not in ("min_snr", "snr"):
        raise ValueError(f"loss weighting {weighting!r}: expected none, min_snr or snr")
    s = snr(scheduler, timesteps)
    x0_weight = torch.clamp(s, max=gamma) if weighting == "min_snr" else s
    if prediction_type == "epsilon":
        return x0_weight / s
    if prediction_type == "v_prediction":
        return x0_weight / (s + 1.0)
    raise ValueError(f"prediction_type {prediction_type!r}: expected epsilon or v_prediction")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch of the (weighted) per-sample MSE, computed in float32."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


def make_sampler(name: str, training_scheduler_config: Mapping[str, Any]):
    """A fresh diffusers scheduler ``name`` built ``from_config`` of the training scheduler."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    if name == "ddpm":
        return DDPMScheduler.from_config(training_scheduler_config)
    if name == "ddim":
        return DDIMScheduler.from_config(training_scheduler_config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(training_scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    if name == "pndm":
        return PNDMScheduler.from_config(training_scheduler_config)
    raise ValueError(f"sampler {name!r}: expected one of {list(SAMPLERS)}")
