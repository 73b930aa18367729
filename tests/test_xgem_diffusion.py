"""XGeM's latent diffusion stage on studies already in the frozen spaces: which studies train which
model, the networks' shapes and published layout, save/load, a conditional report model that
learns to use its condition, and a resume that repeats an uninterrupted run bit for bit."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sabotage import Sabotaged
from support.core import trainer
from support.xgem.config import xgem_config
from support.xgem.diffusion import (DenoiserStage, LatentDiffusionTask, build_denoiser, load_denoiser, predict_noise,
                                    save_denoiser, train_denoiser, unet_blocks)
from support.xgem.encoded import EncodedStudies, ModalityRows

torch.set_num_threads(1)
CONFIG = xgem_config("test")
E, D, C, S = CONFIG.contrastive.embed_dim, 16, CONFIG.image_vae.latent_channels, CONFIG.image_vae.latent_size


def encoded(n=12, seed=0, has_lateral=None, has_report=None) -> EncodedStudies:
    g = torch.Generator().manual_seed(seed)
    has_lateral = torch.tensor(has_lateral if has_lateral is not None else [i % 3 != 0 for i in range(n)])
    has_report = torch.tensor(has_report if has_report is not None else [i % 4 != 1 for i in range(n)])
    t = {"has_lateral": has_lateral, "has_report": has_report}
    for m, present in (("frontal", torch.ones(n, dtype=torch.bool)), ("lateral", has_lateral), ("report", has_report)):
        shape = (n, D) if m == "report" else (n, C, S, S)
        mask = present.view(-1, *([1] * (len(shape) - 1))).float()
        t[f"{m}_mean"] = torch.randn(shape, generator=g) * mask
        t[f"{m}_std"] = 0.1 * torch.ones(shape) * mask
        t[f"{m}_context"] = F.normalize(torch.randn(n, E, generator=g), dim=-1) * present[:, None].float()
    empty = {"image": F.normalize(torch.randn(E, generator=g), dim=0), "text": F.normalize(torch.randn(E, generator=g), dim=0)}
    return EncodedStudies(t, [f"s{i}" for i in range(n)], empty, {"spaces": "test"})


def test_each_model_trains_on_the_studies_multi_prompt_allows():
    has_lateral = [True, False, True, False, True]
    has_report = [True, True, False, False, True]
    enc = encoded(5, has_lateral=has_lateral, has_report=has_report)
    frontal = ModalityRows(enc, "frontal")               # lateral or report: study 3 has neither
    assert frontal.rows == [0, 1, 2, 4] and frontal.left_out == {"no frontal": 0, "no condition source": 1}
    assert frontal.with_both == 2
    lateral = ModalityRows(enc, "lateral")               # the frontal is always there
    assert lateral.rows == [0, 2, 4] and lateral.left_out["no lateral"] == 2
    report = ModalityRows(enc, "report")
    assert report.rows == [0, 1, 4] and report.left_out["no report"] == 2 and report.with_both == 2
    single = ModalityRows(enc, "frontal", multi_prompt=False)   # always the report
    assert single.rows == [0, 1, 4] and single.left_out["no single-prompt source"] == 2
    item = lateral[1]                                    # study 2: sources frontal (a) and report (b, absent)
    assert bool(item["has_a"]) and not bool(item["has_b"])
    assert torch.equal(item["mean"], enc.tensors["lateral_mean"][2])
    assert torch.equal(item["context_a"], enc.tensors["frontal_context"][2])


def test_networks_map_a_noisy_latent_and_one_context_token_to_noise():
    x, t, ctx = torch.randn(3, C, S, S), torch.tensor([0, 500, 999]), F.normalize(torch.randn(3, E), dim=-1)
    unet = build_denoiser(CONFIG, "frontal", D)
    assert predict_noise(unet, x, t, ctx).shape == (3, C, S, S)
    report = build_denoiser(CONFIG, "report", D)
    z = torch.randn(3, D)
    assert torch.equal(predict_noise(report, z, t, ctx), torch.zeros(3, D))   # zero-initialised output
    torch.nn.init.normal_(report.proj_out[1].weight)
    out = predict_noise(report, z, t, ctx)
    assert out.shape == (3, D)
    assert not torch.allclose(out, predict_noise(report, z, t, ctx.flip(0)))    # the context matters
    assert not torch.allclose(out, predict_noise(report, z, t.flip(0), ctx))     # so does the timestep


def test_full_unets_have_the_published_layout():
    full = xgem_config("full")
    assert full.unet.base_channels == 320 and tuple(full.unet.channel_mults) == (1, 2, 4, 4)
    down, up = unet_blocks(full.unet)
    assert down == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert up == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert full.image_vae.latent_size == 32 and full.contrastive.embed_dim == 768
    d = full.diffusion
    assert (d.num_train_timesteps, d.beta_start, d.beta_end, d.beta_schedule, d.prediction_type) == \
        (1000, 0.00085, 0.012, "scaled_linear", "epsilon")
    assert d.condition_dropout == 0.1 and d.multi_prompt


def test_save_and_load_give_the_same_network(tmp_path):
    for target in ("lateral", "report"):
        model = build_denoiser(CONFIG, target, D).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        loaded = load_denoiser(save_denoiser(model, tmp_path / target)).eval()
        x = torch.randn(2, D) if target == "report" else torch.randn(2, C, S, S)
        ctx = F.normalize(torch.randn(2, E), dim=-1)
        t = torch.tensor([3, 700])
        torch.testing.assert_close(predict_noise(loaded, x, t, ctx), predict_noise(model, x, t, ctx))
    with pytest.raises(FileNotFoundError, match="not a saved XGeM denoiser"):
        load_denoiser(tmp_path)


def _stage(config, target, **loop):
    return DenoiserStage(config.unet, config.report_denoiser, config.diffusion,
                         dataclasses.replace(getattr(config.loops, target), **loop))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontal")
    history = train_denoiser(CONFIG, "frontal", encoded(), out, progress=False)
    return out, history


def test_the_stage_writes_its_model_and_history(uninterrupted):
    out, history = uninterrupted
    # study 9 has neither a lateral nor a report: nothing to condition on
    assert history["step"][-1] == CONFIG.loops.frontal.max_steps and all(torch.isfinite(torch.tensor(history["loss"])))
    assert history["target"] == "frontal" and history["n_studies"] == 11 and history["with_both_sources"] > 0
    assert (out / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_after_a_crash_ends_in_the_same_weights(uninterrupted, tmp_path):
    out_a, history_a = uninterrupted
    task = LatentDiffusionTask(CONFIG, "frontal", encoded(), tmp_path / "denoiser")
    # 4 items a step; the crash comes inside update 3, after checkpoint 2
    task.train_set = Sabotaged(task.train_set, after=4 * 2 + 2, mode="crash", key="mean")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(task, _stage(CONFIG, "frontal"), tmp_path, progress=False)
    history_b = train_denoiser(CONFIG, "frontal", encoded(), tmp_path, progress=False)
    assert history_b["loss"] == history_a["loss"]
    a = load_denoiser(out_a / "denoiser").state_dict()
    b = load_denoiser(tmp_path / "denoiser").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # other spaces (another fingerprint) are not resumed into
    other = encoded()
    other.fingerprint = {"spaces": "other"}
    with pytest.raises(Exception, match="spaces"):
        train_denoiser(dataclasses.replace(CONFIG, loops=dataclasses.replace(
            CONFIG.loops, frontal=dataclasses.replace(CONFIG.loops.frontal, max_steps=5))), "frontal", other,
            tmp_path, progress=False)


def test_the_report_model_learns_to_use_its_condition(tmp_path):
    """Report latents that are a fixed function of the frontal's context vector: after training, the
    noise is predicted better with the study's own condition than with another study's."""
    n, g = 64, torch.Generator().manual_seed(1)
    enc = encoded(n, has_lateral=[False] * n, has_report=[True] * n)      # condition: always the frontal
    w = torch.randn(E, D, generator=g)
    enc.tensors["report_mean"] = 2 * enc.tensors["frontal_context"] @ w
    enc.tensors["report_std"] = torch.zeros(n, D)
    config = dataclasses.replace(CONFIG, diffusion=dataclasses.replace(CONFIG.diffusion, condition_dropout=0.0))
    config = dataclasses.replace(config, report_denoiser=dataclasses.replace(config.report_denoiser, width=64),
                                 loops=dataclasses.replace(config.loops, report=dataclasses.replace(
                                     config.loops.report, max_steps=300, batch_size=32, learning_rate=3e-3,
                                     checkpoint_every=300, log_every=50)))
    train_denoiser(config, "report", enc, tmp_path, progress=False)
    model = load_denoiser(tmp_path / "denoiser").eval()
    from support.core.schedules import make_noise_scheduler
    from support.xgem.diffusion import noise_config

    sched = make_noise_scheduler(noise_config(config.diffusion))
    x0, ctx = enc.tensors["report_mean"], enc.tensors["frontal_context"]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.full((n,), 400)
    noisy = sched.add_noise(x0, noise, t)
    with torch.no_grad():
        own = (predict_noise(model, noisy, t, ctx) - noise).pow(2).mean()
        other = (predict_noise(model, noisy, t, ctx.roll(1, 0)) - noise).pow(2).mean()
    assert own < 0.7 * other, (float(own), float(other))
