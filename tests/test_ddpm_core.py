"""DDPM building blocks: profiles, noise schedules, loss weights, UNet layout, checkpoints, metric."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from support.ddpm.config import SamplingConfig, ddpm_config, sampling_config
from support.core.schedules import (
    diffusion_loss,
    loss_weights,
    make_noise_scheduler,
    sigmoid_betas,
    snr,
    training_target,
)
from support.params import ParameterError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ config
def test_full_profile_is_isynmed_configuration():
    cfg = ddpm_config("full")
    u, n, t = cfg.unet, cfg.noise, cfg.train
    assert (u.sample_size, u.in_channels, u.base_channels, u.channel_mults) == (256, 1, 64, (1, 2, 4, 8))
    assert u.attention_levels == (-1,)
    assert (n.num_train_timesteps, n.prediction_type, n.beta_schedule) == (1000, "v_prediction", "sigmoid")
    assert (t.learning_rate, t.adam_betas, t.batch_size, t.gradient_accumulation_steps) == (5e-5, (0.9, 0.99), 8, 2)
    assert (t.ema_decay, t.ema_update_every, t.max_grad_norm, t.max_steps) == (0.995, 10, 1.0, 300_000)
    assert t.mixed_precision == "fp16" and t.loss_weighting == "snr"      # fp16 with loss scaling, as published
    assert t.ema_update_after_step == 100


def test_full_network_is_isynmeds_layout_size_and_cost():
    from torch.utils.flop_counter import FlopCounterMode

    from support.ddpm.model import build_unet
    from support.ddpm.network.unet import DiffusionUNet, FullAttention, LinearAttention, ResidualBlock

    unet = build_unet(ddpm_config("full").unet)
    assert isinstance(unet, DiffusionUNet)
    assert unet.config.sample_size == 256 and unet.config.in_channels == 1 and unet.config.dim_mults == (1, 2, 4, 8)
    # denoising-diffusion-pytorch 2.3.4 Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=1), measured beside it:
    # 35,705,089 parameters; 234.10 GFLOPs per 256-px step, 14.54 at 64 px (torch's flop counter)
    assert sum(p.numel() for p in unet.parameters()) == 35_705_089
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        unet(torch.zeros(1, 1, 64, 64), torch.tensor([3]))
    assert flops.get_total_flops() == 14_541_291_520
    kinds = lambda cls: [n for n, m in unet.named_modules() if isinstance(m, cls)]
    assert kinds(FullAttention) == ["downs.3.attn", "mid_attn", "ups.0.attn"]     # innermost level only
    assert len(kinds(LinearAttention)) == 6                                          # the outer three, both ways
    assert len(kinds(ResidualBlock)) == 2 * 4 + 2 + 2 * 4 + 1                        # 2 per level, mid, final


def test_the_diffusers_network_has_full_attention_at_the_named_levels_only():
    from diffusers.models.attention_processor import Attention

    from support.ddpm.model import block_types, build_unet

    cfg = dataclasses.replace(ddpm_config("full").unet, architecture="diffusers", sample_size=64)
    assert block_types(cfg) == (("DownBlock2D",) * 3 + ("AttnDownBlock2D",),
                                ("AttnUpBlock2D",) + ("UpBlock2D",) * 3)
    unet = build_unet(cfg)
    assert unet.config.block_out_channels == (64, 128, 256, 512)
    attention = [name for name, m in unet.named_modules() if isinstance(m, Attention)]
    # innermost down level (2 layers), mid block (1), innermost up level (3 layers)
    assert len(attention) == 6
    assert all(n.startswith(("down_blocks.3.", "mid_block.", "up_blocks.0.")) for n in attention)


def test_overrides_are_typed_and_unknown_names_fail():
    cfg = ddpm_config("quick", {"train": {"max_steps": 7}, "noise": {"beta_schedule": "cosine"}})
    assert cfg.train.max_steps == 7 and cfg.noise.beta_schedule == "cosine"
    assert cfg.unet.sample_size == 64
    with pytest.raises(ParameterError, match="max_stepz"):
        ddpm_config("quick", {"train": {"max_stepz": 7}})
    with pytest.raises(ParameterError, match="beta_schedule"):
        ddpm_config("quick", {"noise": {"beta_schedule": "quadratic"}})
    with pytest.raises(ParameterError, match="unet.sample_size"):
        ddpm_config("quick", {"unet": {"sample_size": 60}})  # not divisible by 2**3
    with pytest.raises(ParameterError, match="attention_head_dim"):
        ddpm_config("full", {"unet": {"attention_head_dim": 48}})
    with pytest.raises(ParameterError, match="profile 'huge'"):
        ddpm_config("huge")


def test_sampling_config_bounds_seeds():
    assert sampling_config("full").steps == 1000
    with pytest.raises(ParameterError, match="seeds"):
        SamplingConfig(base_seed=10**7 - 2, num_samples=5).validate()


# ------------------------------------------------------------------------------------ schedules
def test_sigmoid_schedule_is_monotone_and_inside_unit_interval():
    betas = sigmoid_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert (betas > 0).all() and (betas < 1).all()
    assert (np.diff(betas) >= 0).all()
    alpha_bar = np.cumprod(1 - betas)
    assert (np.diff(alpha_bar) < 0).all()
    assert alpha_bar[0] > 0.999 and alpha_bar[-1] < 1e-5   # from almost clean to almost pure noise
    # Jabri et al.'s alpha_bar(t) formula at an interior point, as published (start -3, end 3, tau 1).
    s = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    t = 0.5  # alpha_bar after 500 of 1000 steps
    assert alpha_bar[499] == pytest.approx((s(3) - s(6 * t - 3)) / (s(3) - s(-3)), rel=1e-9)


def test_noise_schedulers_follow_config():
    sig = make_noise_scheduler(ddpm_config("full").noise)
    assert np.allclose(sig.betas.numpy(), sigmoid_betas(1000), atol=1e-7)
    assert sig.config.prediction_type == "v_prediction"
    cos = make_noise_scheduler(ddpm_config("full", {"noise": {"beta_schedule": "cosine"}}).noise)
    assert cos.config.beta_schedule == "squaredcos_cap_v2"
    lin = make_noise_scheduler(ddpm_config("full", {"noise": {"beta_schedule": "linear"}}).noise)
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    assert not np.allclose(sig.alphas_cumprod.numpy(), cos.alphas_cumprod.numpy(), atol=1e-3)


def _consistent_predictions(scheduler, seed=0):
    """An epsilon prediction with an error and the v prediction that implies the same x0."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([1, 10, 200, 500, 800, 999])
    xt = scheduler.add_noise(x0, noise, t)
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    eps_hat = noise + 0.1 * torch.randn(x0.shape, generator=g)
    x0_hat = (xt - s * eps_hat) / a
    v_hat = a * eps_hat - s * x0_hat
    return x0, noise, t, eps_hat, v_hat, x0_hat


@pytest.mark.parametrize("weighting,gamma", [("min_snr", 5.0), ("snr", 5.0)])
def test_loss_weights_agree_between_epsilon_and_v(weighting, gamma):
    sched = make_noise_scheduler(ddpm_config("full").noise)
    x0, noise, t, eps_hat, v_hat, x0_hat = _consistent_predictions(sched)
    w_eps = loss_weights(sched, t, "epsilon", weighting, gamma)
    w_v = loss_weights(sched, t, "v_prediction", weighting, gamma)
    per_eps = (eps_hat - training_target(sched, x0, noise, t, "epsilon")).pow(2).flatten(1).mean(1) * w_eps
    per_v = (v_hat - training_target(sched, x0, noise, t, "v_prediction")).pow(2).flatten(1).mean(1) * w_v
    x0_mse = (x0_hat - x0).pow(2).flatten(1).mean(1)
    ratio = snr(sched, t)
    expected = x0_mse * (ratio.clamp(max=gamma) if weighting == "min_snr" else ratio)
    torch.testing.assert_close(per_eps, expected, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(per_v, expected, rtol=2e-3, atol=1e-6)
    if weighting == "min_snr":  # clipped where the signal dominates
        assert (w_eps[:2] < 1).all() and w_eps[-1] == pytest.approx(1.0)


def test_plain_loss_and_bad_weighting():
    sched = make_noise_scheduler(ddpm_config("test").noise)
    t = torch.tensor([3, 900])
    assert loss_weights(sched, t, "epsilon", "none") is None
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert diffusion_loss(pred, target, None).item() == pytest.approx(1.0)
    assert diffusion_loss(pred, target, torch.tensor([0.0, 2.0])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weighting"):
        loss_weights(sched, t, "epsilon", "p2")


# ------------------------------------------------------------------------------------ EMA
class _Net(torch.nn.Linear):
    config = {"in_features": 3, "out_features": 2}


def _ema_pytorch_reference(weights, beta, every, after):
    """ema_pytorch's ``EMA.update()`` called after each optimizer update, written out in float64.

    Its counter ``c`` (0-based, the updates done before this one) moves the EMA when
    ``c % every == 0``: a copy of the weights while ``c <= after``; then, the first time, a copy
    followed by a move; every move is ``ema += (1 - decay) * (w - ema)`` with
    ``decay = min(1 - (1 + (c - after))^(-2/3), beta)``. Returns the EMA after each update.
    """
    ema, started, out = weights[0].double().clone(), False, []
    for c, w in enumerate(weights):
        w = w.double()
        if c % every == 0:
            if c <= after:
                ema = w.clone()
            else:
                if not started:
                    ema, started = w.clone(), True
                decay = min(1 - (1 + (c - after)) ** (-2 / 3), beta)
                ema = ema + (1 - decay) * (w - ema)
        out.append(ema.clone())
    return out


@pytest.mark.parametrize("every, after", [(1, 0), (1, 5), (2, 0), (2, 4), (3, 7), (4, 4), (5, 3), (10, 100)])
def test_ema_follows_ema_pytorch_after_every_update(every, after):
    from types import SimpleNamespace

    from support.ddpm.train import ema_model, ema_update

    torch.manual_seed(0)
    net = _Net(3, 2)
    beta = 0.99
    ema = ema_model(net, SimpleNamespace(ema_decay=beta, ema_update_after_step=after, ema_update_every=every))
    g = torch.Generator().manual_seed(every * 100 + after)
    seen, shadows, steps = [], [], 160
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1 + 0.02)
        seen.append(torch.cat([p.detach().flatten() for p in net.parameters()]).clone())
        ema_update(ema, net, step, every)
        shadows.append(torch.cat([s.flatten() for s in ema.shadow_params]).clone())
        if (step - 1) % every == 0:      # the optimizer updates counted, not the EMA moves
            assert ema.optimization_step == step
    expected = _ema_pytorch_reference(seen, beta, every, after)
    for step, (got, want) in enumerate(zip(shadows, expected), start=1):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5, msg=f"after update {step}")
    # it moves at updates 1, 1 + every, 1 + 2 every, ... and at no other
    for step in range(2, steps + 1):
        moved = not torch.equal(shadows[step - 1], shadows[step - 2])
        assert moved == ((step - 1) % every == 0), step
    # a copy of the weights until the warm-up starts, an average after it
    for step in range(1, min(after + 1, steps) + 1, every):
        torch.testing.assert_close(shadows[step - 1], seen[step - 1], rtol=0, atol=1e-6)   # s - 1 * (s - w)
    assert (shadows[-1] - seen[-1]).abs().max() > 0.05


def test_ema_model_takes_decay_warm_up_and_model_from_the_config():
    from types import SimpleNamespace

    from diffusers.training_utils import EMAModel

    from support.ddpm.train import ema_model

    net = _Net(3, 2)
    t = SimpleNamespace(ema_decay=0.97, ema_update_after_step=12, ema_update_every=3)
    ema = ema_model(net, t)
    assert isinstance(ema, EMAModel)
    assert (ema.decay, ema.update_after_step, ema.use_ema_warmup) == (0.97, 12, True)
    assert ema.model_cls is _Net and ema.model_config == _Net.config
    assert ema_model(net, t, model_cls=torch.nn.Linear).model_cls is torch.nn.Linear
    assert ema_model(torch.nn.Linear(3, 2), t).model_config is None
    # ema_pytorch's warm-up: 0 up to update_after_step + 1, then 1 - (1 + n)^(-2/3) capped at the decay
    for n in (-5, -1, 0):
        assert ema.get_decay(12 + 1 + n) == 0.0
    for n in (1, 2, 5, 30, 100, 200):
        assert ema.get_decay(12 + 1 + n) == pytest.approx(min(1 - (1 + n) ** (-2 / 3), 0.97), rel=1e-12)
    assert ema.get_decay(10_000) == 0.97
    assert torch.equal(ema.shadow_params[0], net.weight.detach()) and ema.shadow_params[0] is not net.weight

    class Recorder(EMAModel):
        def __init__(self, parameters, **kwargs):
            super().__init__(parameters, **kwargs)
            self.kwargs = kwargs

    made = ema_model(net, t, Recorder)
    assert type(made) is Recorder and made.kwargs["inv_gamma"] == 1.0 and made.kwargs["power"] == 2 / 3


# ------------------------------------------------------------------------------------ checkpoints
def test_a_checkpoint_of_another_unet_is_refused_naming_the_field(tmp_path):
    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.train import train_ddpm

    cfg = ddpm_config("test", {"train": {"max_steps": 2, "checkpoint_every": 2, "validate_every": 0,
                                         "sample_grid_steps": 1}})
    train_ddpm(cfg, SyntheticDiscs(8, 16), tmp_path)
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-00000002" / "state.json").read_text())
    assert set(state["files"]) >= {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    assert state["task_state"]["ema"]["optimization_step"] == 1          # EMA every 2nd update, 2 updates
    other = ddpm_config("test", {"unet": {"base_channels": 16}, "train": {"max_steps": 4, "validate_every": 0}})
    with pytest.raises(ParameterError, match=r"other \['unet.base_channels'\]"):
        train_ddpm(other, SyntheticDiscs(8, 16), tmp_path)


# ------------------------------------------------------------------------------------ metric
def test_pixel_frechet_separates_distributions():
    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.sampling import pixel_frechet

    a = SyntheticDiscs(300, 32, seed=0).images
    b = SyntheticDiscs(300, 32, seed=1).images
    same = pixel_frechet(a, b)
    inverted = pixel_frechet(a, -b)
    noise = pixel_frechet(a, torch.rand_like(b) * 2 - 1)
    assert same < 0.1 * inverted and same < 0.1 * noise
    assert pixel_frechet(a, a) == pytest.approx(0.0, abs=1e-6)
    assert pixel_frechet(a, -b) == pytest.approx(pixel_frechet(-b, a), rel=1e-6)
    u8 = ((a[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    assert pixel_frechet(u8, (a + 1) / 2) == pytest.approx(0.0, abs=1e-3)   # uint8 scaled to [0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        pixel_frechet(a[:1], b)


# ------------------------------------------------------------------------------------ benchmark
def test_benchmark_measures_ours_and_reports_the_reference_half():
    from support.benchmarks.ddpm import run

    result = run(profile="test", train_batch=4, train_updates=1, warmup=1, sample_batch=2,
                 steps={"ddpm": 3, "ddim": 3, "dpmsolver++": 3}, repeats=1, device="cpu")
    ours = result["ours"]
    assert ours["parameters"] > 0 and ours["train_images_per_s"] > 0
    assert all(ours[f"sample_{s}_images_per_s"] > 0 for s in ("ddpm", "ddim", "dpmsolver++"))
    if result["reference_skipped"] is None:   # denoising-diffusion-pytorch installed apart
        ref = result["reference"]
        assert ref["train_images_per_s"] > 0 and ref["sample_ddim_images_per_s"] > 0
        assert "sample_ddpm_images_per_s" not in ref      # their ancestral sampler has no 3-step variant
        assert result["ratio_ours_over_reference"]["train_images_per_s"] == pytest.approx(
            ours["train_images_per_s"] / ref["train_images_per_s"])
    else:
        assert "make bench-deps" in result["reference_skipped"] and result["reference"] == {}
