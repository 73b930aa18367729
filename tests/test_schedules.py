"""The forward diffusion process (support.core.schedules) against its written-out definitions:
sigmoid betas (Jabri et al. 2022), the scheduler a config builds, SNR, training targets, loss
weights (min-SNR, Hang et al. 2023), the diffusion loss and the samplers."""

import math

import numpy as np
import pytest
import torch

from support.core.schedules import (
    SAMPLERS,
    NoiseConfig,
    diffusion_loss,
    loss_weights,
    make_noise_scheduler,
    make_sampler,
    sigmoid_betas,
    snr,
    training_target,
)
from support.params import ParameterError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ written-out formulas
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _alpha_bar(t, start, end, tau):
    """Jabri et al.'s alpha_bar(t), t in [0, 1]: 1 at t = 0, 0 at t = 1."""
    v_start, v_end = _sigmoid(start / tau), _sigmoid(end / tau)
    return (v_end - _sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)


def _reference_betas(n, start, end, tau, max_beta=0.999):
    """beta_i = 1 - alpha_bar(i / n) / alpha_bar((i - 1) / n), kept in [1e-8, max_beta]."""
    out = []
    for i in range(1, n + 1):
        beta = 1.0 - _alpha_bar(i / n, start, end, tau) / _alpha_bar((i - 1) / n, start, end, tau)
        out.append(min(max(beta, 1e-8), max_beta))
    return np.array(out)


def _alphas_cumprod(betas):
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), float64."""
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


# ------------------------------------------------------------------------------ sigmoid betas
@pytest.mark.parametrize("n, start, end, tau", [
    (1000, -3.0, 3.0, 1.0),      # the published defaults
    (10, -3.0, 3.0, 1.0),
    (7, -2.0, 4.0, 0.7),
    (50, -5.0, 1.5, 2.5),
    (2, 0.0, 1.0, 1.0),          # the fewest steps there can be
    (300, -1.0, 3.0, 0.3),
])
def test_sigmoid_betas_follow_the_written_formula(n, start, end, tau):
    betas = sigmoid_betas(n, start, end, tau)
    assert betas.dtype == np.float64 and betas.shape == (n,)
    np.testing.assert_allclose(betas, _reference_betas(n, start, end, tau), rtol=1e-10, atol=1e-15)
    # the product of the kept signal is alpha_bar at each step; the last step is capped at 0.999
    expected_bar = [_alpha_bar(i / n, start, end, tau) for i in range(1, n)]
    np.testing.assert_allclose(_alphas_cumprod(betas)[:-1], expected_bar, rtol=1e-9, atol=1e-15)
    assert betas[-1] == 0.999


@pytest.mark.parametrize("changed", [{"start": -2.0}, {"end": 2.0}, {"tau": 0.5}, {"tau": 2.0}])
def test_every_sigmoid_parameter_changes_the_schedule(changed):
    base = {"start": -3.0, "end": 3.0, "tau": 1.0}
    other = {**base, **changed}
    betas = sigmoid_betas(20, **other)
    np.testing.assert_allclose(betas, _reference_betas(20, **other), rtol=1e-10)
    assert np.abs(betas[:-1] - sigmoid_betas(20, **base)[:-1]).max() > 1e-4


def test_sigmoid_betas_are_capped_at_both_ends():
    # tau 0.1 makes the first steps remove almost nothing: beta is held at 1e-8
    betas = sigmoid_betas(100, -3.0, 3.0, 0.1)
    assert betas[0] == 1e-8 and betas.min() == 1e-8
    np.testing.assert_allclose(betas, _reference_betas(100, -3.0, 3.0, 0.1), rtol=1e-10, atol=1e-15)
    # max_beta caps every step above it, not only the last
    capped = sigmoid_betas(10, max_beta=0.3)
    free = _reference_betas(10, -3.0, 3.0, 1.0, max_beta=1.0)
    assert (free > 0.3).sum() >= 2
    np.testing.assert_allclose(capped, np.minimum(free, 0.3), rtol=1e-10)
    assert capped.max() == 0.3
    # the last step ends in alpha_bar = 0 exactly: beta 1, which the default cap keeps below 1
    assert _reference_betas(10, -3.0, 3.0, 1.0, max_beta=2.0)[-1] == pytest.approx(1.0)
    assert sigmoid_betas(10)[-1] == 0.999


def test_sigmoid_betas_refuse_bad_arguments():
    assert sigmoid_betas(2).shape == (2,)
    for bad in (1, 0):
        with pytest.raises(ValueError, match="num_timesteps"):
            sigmoid_betas(bad)
    for start, end, tau in ((3.0, 3.0, 1.0), (3.0, -3.0, 1.0), (-3.0, 3.0, 0.0), (-3.0, 3.0, -1.0),
                            (3.0, -3.0, -1.0)):
        with pytest.raises(ValueError, match="start < end and tau > 0"):
            sigmoid_betas(10, start, end, tau)
    assert np.isfinite(sigmoid_betas(10, -3.0, -2.99, 0.01)).all()     # close to both bounds


# ------------------------------------------------------------------------------ the noise config
def test_noise_config_bounds_name_the_field():
    NoiseConfig(num_train_timesteps=2, beta_start=1e-9, beta_end=0.999999, sigmoid_start=0.0,
                sigmoid_end=1e-6, sigmoid_tau=1e-9).validate()
    bad = [
        ({"num_train_timesteps": 1}, "num_train_timesteps must be at least 2"),
        ({"beta_start": 0.0}, r"beta_start must be in \(0, beta_end\), with beta_end < 1"),
        ({"beta_start": 0.02, "beta_end": 0.02}, "beta_start must be in"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "beta_start must be in"),
        ({"beta_end": 1.0}, "beta_start must be in"),
        ({"sigmoid_start": 3.0, "sigmoid_end": 3.0}, "sigmoid_start must be below sigmoid_end"),
        ({"sigmoid_start": 4.0}, "sigmoid_start must be below sigmoid_end"),
        ({"sigmoid_tau": 0.0}, "sigmoid_tau must be positive"),
    ]
    for fields, message in bad:
        with pytest.raises(ParameterError, match=message):
            NoiseConfig(**fields).validate()


# ------------------------------------------------------------------------------ the training scheduler
@pytest.mark.parametrize("n, start, end, tau", [(1000, -3.0, 3.0, 1.0), (40, -2.0, 4.0, 0.7), (25, -5.0, 1.0, 2.0)])
def test_sigmoid_scheduler_carries_every_config_value(n, start, end, tau):
    cfg = NoiseConfig(num_train_timesteps=n, beta_schedule="sigmoid", sigmoid_start=start, sigmoid_end=end,
                      sigmoid_tau=tau)
    sched = make_noise_scheduler(cfg)
    assert sched.config.num_train_timesteps == n and len(sched.betas) == n
    np.testing.assert_allclose(sched.betas.numpy(), _reference_betas(n, start, end, tau), rtol=1e-6, atol=1e-12)
    assert sched.config.variance_type == "fixed_small"
    assert sched.config.prediction_type == "v_prediction" and sched.config.clip_sample is True


@pytest.mark.parametrize("prediction_type, clip", [("epsilon", False), ("v_prediction", True),
                                                   ("epsilon", True), ("v_prediction", False)])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_every_schedule_passes_prediction_type_clipping_and_variance(schedule, prediction_type, clip):
    sched = make_noise_scheduler(NoiseConfig(num_train_timesteps=30, beta_schedule=schedule,
                                             prediction_type=prediction_type, clip_sample=clip))
    assert (sched.config.prediction_type, sched.config.clip_sample) == (prediction_type, clip)
    assert sched.config.variance_type == "fixed_small" and sched.config.num_train_timesteps == 30
    assert len(sched.betas) == 30 and len(sched.alphas_cumprod) == 30


@pytest.mark.parametrize("n, beta_start, beta_end", [(1000, 1e-4, 0.02), (50, 2e-4, 0.05), (11, 0.001, 0.3)])
def test_linear_scheduler_spans_beta_start_to_beta_end(n, beta_start, beta_end):
    sched = make_noise_scheduler(NoiseConfig(num_train_timesteps=n, beta_schedule="linear",
                                             beta_start=beta_start, beta_end=beta_end))
    np.testing.assert_allclose(sched.betas.numpy(), np.linspace(beta_start, beta_end, n), rtol=1e-5)


@pytest.mark.parametrize("n, beta_start, beta_end", [(1000, 0.00085, 0.012), (40, 1e-3, 0.2)])
def test_scaled_linear_scheduler_is_linear_in_the_square_root_of_beta(n, beta_start, beta_end):
    sched = make_noise_scheduler(NoiseConfig(num_train_timesteps=n, beta_schedule="scaled_linear",
                                             beta_start=beta_start, beta_end=beta_end))
    expected = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n) ** 2     # SD's (and XGeM's) schedule
    np.testing.assert_allclose(sched.betas.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("n", [1000, 20])
def test_cosine_scheduler_is_the_capped_squared_cosine(n):
    sched = make_noise_scheduler(NoiseConfig(num_train_timesteps=n, beta_schedule="cosine"))
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (Nichol & Dhariwal 2021)
    expected = [min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)]
    np.testing.assert_allclose(sched.betas.numpy(), expected, rtol=1e-5, atol=1e-9)
    assert sched.config.beta_schedule == "squaredcos_cap_v2"


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="beta_schedule 'quadratic'"):
        make_noise_scheduler(NoiseConfig(beta_schedule="quadratic"))


# ------------------------------------------------------------------------------ SNR and targets
def _scheduler(n=200, prediction_type="v_prediction", **kw):
    return make_noise_scheduler(NoiseConfig(num_train_timesteps=n, prediction_type=prediction_type, **kw))


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "cosine"])
def test_snr_is_alpha_bar_over_one_minus_alpha_bar(schedule):
    sched = _scheduler(200, beta_schedule=schedule)
    t = torch.tensor([0, 1, 17, 99, 150, 198, 199, 42])
    a = sched.alphas_cumprod.double()[t]               # what the scheduler holds, in full precision
    expected = (a / (1 - a)).float()
    got = snr(sched, t)
    assert got.dtype == torch.float32 and got.shape == t.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # the same SNR from the betas directly
    bar = _alphas_cumprod(sched.betas.double().numpy())[t.numpy()]
    np.testing.assert_allclose(got.numpy(), bar / (1 - bar), rtol=2e-4)   # diffusers keeps alpha_bar in float32
    every = torch.arange(200)
    a = sched.alphas_cumprod.double()
    torch.testing.assert_close(snr(sched, every), (a / (1 - a)).float(), rtol=0, atol=0)
    assert (snr(sched, every).diff() < 0).all()        # the signal only decreases
    # computed where the timesteps are ("meta" stands in for an accelerator here)
    on_meta = snr(sched, t.to("meta"))
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.float32 and on_meta.shape == t.shape


@pytest.mark.parametrize("t", [[0], [5, 5], [0, 50, 120, 199], [199, 3]])
def test_training_targets_are_their_definitions(t):
    sched = _scheduler(200)
    t = torch.tensor(t)
    g = torch.Generator().manual_seed(len(t))
    x0 = torch.rand(len(t), 2, 3, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(training_target(sched, x0, noise, t, "epsilon"), noise)
    bar = torch.from_numpy(_alphas_cumprod(sched.betas.double().numpy())).float()[t].view(-1, 1, 1, 1)
    v = bar.sqrt() * noise - (1 - bar).sqrt() * x0
    torch.testing.assert_close(training_target(sched, x0, noise, t, "v_prediction"), v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        training_target(sched, x0, noise, t, "sample")       # not a target this code trains


# ------------------------------------------------------------------------------ loss weights
T = torch.tensor([0, 10, 40, 80, 120, 160, 199])


@pytest.mark.parametrize("gamma", [0.5, 1.0, 5.0, 20.0])
def test_min_snr_weights_are_min_snr_gamma_over_the_targets_snr(gamma):
    sched = _scheduler(200)
    s = sched.alphas_cumprod.double()[T]
    s = s / (1 - s)
    assert (s > gamma).any() and (s < gamma).any()     # the clip matters for some steps, not all
    clipped = torch.minimum(s, torch.tensor(gamma, dtype=torch.float64))
    torch.testing.assert_close(loss_weights(sched, T, "epsilon", "min_snr", gamma), (clipped / s).float(),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_weights(sched, T, "v_prediction", "min_snr", gamma),
                               (clipped / (s + 1)).float(), rtol=1e-6, atol=0)


def test_min_snr_default_gamma_is_5():
    sched = _scheduler(200)
    for pred in ("epsilon", "v_prediction"):
        torch.testing.assert_close(loss_weights(sched, T, pred, "min_snr"),
                                   loss_weights(sched, T, pred, "min_snr", 5.0), rtol=0, atol=0)
        assert not torch.equal(loss_weights(sched, T, pred, "min_snr"), loss_weights(sched, T, pred, "min_snr", 6.0))


@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_snr_weighting_makes_every_objective_the_epsilon_mse(gamma):
    sched = _scheduler(200)
    s = sched.alphas_cumprod.double()[T]
    s = s / (1 - s)
    torch.testing.assert_close(loss_weights(sched, T, "epsilon", "snr", gamma), torch.ones(len(T)),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_weights(sched, T, "v_prediction", "snr", gamma), (s / (s + 1)).float(),
                               rtol=1e-6, atol=0)


def test_weightings_and_prediction_types_are_checked():
    sched = _scheduler(50)
    t = torch.tensor([1, 30])
    assert loss_weights(sched, t, "epsilon", "none") is None
    assert loss_weights(sched, t, "v_prediction", "none", 1.0) is None
    for weighting in ("p2", "min-snr", "SNR"):
        with pytest.raises(ValueError, match=f"loss weighting '{weighting}'"):
            loss_weights(sched, t, "epsilon", weighting)
    for weighting in ("min_snr", "snr"):
        with pytest.raises(ValueError, match="prediction_type 'sample'"):
            loss_weights(sched, t, "sample", weighting)


# ------------------------------------------------------------------------------ the loss
def test_diffusion_loss_is_the_batch_mean_of_weighted_per_sample_mse():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(3, 2, 2, 5, generator=g)
    target = torch.randn(3, 2, 2, 5, generator=g)
    per_sample = [((pred[i] - target[i]) ** 2).mean().item() for i in range(3)]
    assert diffusion_loss(pred, target, None).item() == pytest.approx(sum(per_sample) / 3, rel=1e-6)
    w = torch.tensor([0.5, 2.0, 0.0])
    assert diffusion_loss(pred, target, w).item() == pytest.approx(
        (0.5 * per_sample[0] + 2.0 * per_sample[1]) / 3, rel=1e-6)
    # a sample of error 2 everywhere and one of error 0: MSE 4 and 0
    zeros, twos = torch.zeros(2, 1, 3, 3), torch.cat([torch.full((1, 1, 3, 3), 2.0), torch.zeros(1, 1, 3, 3)])
    assert diffusion_loss(twos, zeros, None).item() == 2.0
    assert diffusion_loss(zeros, twos, torch.tensor([3.0, 100.0])).item() == 6.0


def test_diffusion_loss_is_computed_in_float32():
    pred = torch.full((2, 1, 2, 2), 300.0, dtype=torch.float16)   # 300^2 overflows float16
    target = torch.zeros(2, 1, 2, 2, dtype=torch.float16)
    loss = diffusion_loss(pred, target, torch.tensor([1.0, 1.0], dtype=torch.float16))
    assert loss.dtype == torch.float32 and loss.item() == 90000.0
    assert diffusion_loss(pred, target, None).item() == 90000.0
    assert diffusion_loss(pred, target, torch.tensor([1.0, 3.0], dtype=torch.float64)).dtype == torch.float32


# ------------------------------------------------------------------------------ samplers
def test_samplers_are_built_from_the_training_scheduler():
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    train = make_noise_scheduler(NoiseConfig(num_train_timesteps=60, prediction_type="epsilon", clip_sample=False,
                                             sigmoid_tau=0.7))
    kinds = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler,
             "pndm": PNDMScheduler}
    assert set(SAMPLERS) == set(kinds)
    for name in SAMPLERS:
        sampler = make_sampler(name, train.config)
        assert type(sampler) is kinds[name] and sampler is not train
        assert sampler.config.num_train_timesteps == 60 and sampler.config.prediction_type == "epsilon"
        torch.testing.assert_close(sampler.alphas_cumprod, train.alphas_cumprod, rtol=0, atol=0)
    dpm = make_sampler("dpmsolver++", train.config)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    with pytest.raises(ValueError, match="sampler 'euler'"):
        make_sampler("euler", train.config)
