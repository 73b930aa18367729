"""DDPM training on CPU: crash + resume equals an uninterrupted run, NaN handling, saved pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from support.ddpm.config import ddpm_config
from support.ddpm.data import SyntheticDiscs
from support.ddpm.train import NonFiniteLossError, train_ddpm
from sabotage import Sabotaged
from support.io import load_state_dict

torch.set_num_threads(1)

# 24 images, batch 4, accumulation 2: 6 micro-batches per epoch, so 6 updates cross an epoch boundary.
CONFIG = ddpm_config("test", {"train": {"max_steps": 6, "checkpoint_every": 2, "checkpoints_total_limit": 2,
                                        "validate_every": 3, "sample_grid_steps": 3}})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm_full_run")
    history = train_ddpm(CONFIG, SyntheticDiscs(24, 16), out, SyntheticDiscs(8, 16, seed=1))
    return out, history


def _final(out):
    return _final_at(out, 6)


def _final_at(out, step):
    ckpt = out / "checkpoints" / f"checkpoint-{step:08d}"
    return load_state_dict(ckpt / "model.safetensors"), load_state_dict(ckpt / "ema.safetensors")


def test_run_writes_history_checkpoints_grid_and_pipeline(uninterrupted):
    out, history = uninterrupted
    assert history["step"] == [2, 4, 6] and len(history["loss"]) == 3
    assert all(v > 0 for v in history["images_per_s"])
    assert history["val_step"] == [3, 6] and all(v > 0 for v in history["val_loss"] + history["val_loss_ema"])
    assert history["loss"][-1] < history["loss"][0]          # it learns
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-00000004", "checkpoint-00000006"]
    assert (out / "samples" / "grid-00000006.png").is_file()
    assert json.loads((out / "history.json").read_text()) == history
    assert (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_after_crash_ends_in_the_same_weights(uninterrupted, tmp_path):
    out_a, history_a = uninterrupted
    data = SyntheticDiscs(24, 16)
    # Crash inside update 5 (each update reads 8 images): checkpoint-4 is the last one on disk.
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ddpm(CONFIG, Sabotaged(data, after=8 * 4 + 3, mode="crash", key="image"), tmp_path, SyntheticDiscs(8, 16, seed=1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000002",
                                                                              "checkpoint-00000004"]
    history_b = train_ddpm(CONFIG, data, tmp_path, SyntheticDiscs(8, 16, seed=1))   # resumes from update 4
    model_a, ema_a = _final(out_a)
    model_b, ema_b = _final(tmp_path)
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
    for name in ema_a:
        assert torch.equal(ema_a[name], ema_b[name]), name
    assert history_b["loss"] == history_a["loss"] and history_b["val_loss"] == history_a["val_loss"]
    # and a run that was never resumed from the same start does differ when the seed differs
    other = train_ddpm(ddpm_config("test", {"train": {"max_steps": 2, "seed": 1, "checkpoint_every": 2}}),
                       data, tmp_path / "seed1")
    assert other["loss"][0] != history_a["loss"][0]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = SyntheticDiscs(24, 16)
    # NaN images from the 4th update on: updates 1-3 are fine, checkpoint-2 is the last good one.
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss.*update 4.*checkpoint-00000002"):
        train_ddpm(CONFIG, Sabotaged(data, after=8 * 3, mode="nan", key="image"), tmp_path)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-00000002"]                   # nothing written after the NaN
    assert not (tmp_path / "pipeline").exists() and not (tmp_path / "history.json").exists()
    weights = load_state_dict(tmp_path / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    # the last good checkpoint resumes
    history = train_ddpm(CONFIG, data, tmp_path)
    assert history["step"][-1] == 6


def test_saved_pipeline_holds_ema_weights_and_matches_the_sampler(uninterrupted):
    from diffusers import DDPMPipeline

    from support.ddpm.model import build_unet
    from support.core.schedules import make_sampler
    from support.ddpm.sampling import sample_images

    out, _ = uninterrupted
    pipe = DDPMPipeline.from_pretrained(out / "pipeline")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    model, ema = _final(out)
    unet_weights = dict(pipe.unet.named_parameters())
    assert all(torch.equal(unet_weights[k].detach(), ema[k]) for k in ema)           # EMA, not the online weights
    assert not all(torch.equal(unet_weights[k].detach(), model[k]) for k in ema)

    seeds = [11, 12, 13]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    reference = pipe(batch_size=3, generator=generators, num_inference_steps=25, output_type="pt").images
    ours = sample_images(pipe.unet, make_sampler("ddpm", pipe.scheduler.config), seeds, 25)
    torch.testing.assert_close(ours, reference.float().cpu(), rtol=0, atol=1e-6)

    fresh = build_unet(CONFIG.unet)
    fresh.load_state_dict(ema)
    alone = sample_images(fresh, make_sampler("ddpm", pipe.scheduler.config), [12], 25)
    torch.testing.assert_close(alone[0], ours[1], rtol=0, atol=1e-5)       # seed 12 alone == seed 12 in a batch
    for name in ("ddim", "dpmsolver++"):
        images = sample_images(pipe.unet, make_sampler(name, pipe.scheduler.config), seeds, 5)
        assert images.shape == (3, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
        assert not torch.allclose(images[0], images[1])                    # different seeds, different images


def test_validation_scores_ema_samples_against_the_validation_images(tmp_path):
    from support.core.schedules import make_sampler
    from support.ddpm.sampling import load_pipeline, pixel_frechet, sample_images

    config = ddpm_config("test", {"train": {"max_steps": 4, "validate_every": 2, "sample_grid_steps": 3,
                                            "val_fd_samples": 6, "val_batch_size": 4}})
    val = SyntheticDiscs(8, 16, seed=1)
    history = train_ddpm(config, SyntheticDiscs(24, 16), tmp_path, val)
    assert history["val_step"] == [2, 4] and len(history["val_pixel_fd_ema"]) == 2
    # the last point is the exported EMA network's samples (fixed seeds) against the first 6 images
    pipe = load_pipeline(tmp_path / "pipeline", device="cpu", dtype="fp32")
    seeds = [config.train.val_seed + i for i in range(6)]
    samples = sample_images(pipe.unet, make_sampler("ddim", pipe.scheduler.config), seeds, 3)
    real = (torch.stack([val[i]["image"] for i in range(6)]) + 1) / 2
    assert history["val_pixel_fd_ema"][-1] == pytest.approx(pixel_frechet(samples, real), rel=1e-4)
    with pytest.raises(ValueError, match="val_fd_samples"):
        ddpm_config("test", {"train": {"val_fd_samples": 1}})


def test_learning_rate_warms_up(tmp_path):
    cfg = ddpm_config("test", {"train": {"max_steps": 4, "lr_warmup_steps": 4, "log_every": 1, "checkpoint_every": 4,
                                         "gradient_accumulation_steps": 1, "sample_grid_steps": 1}})
    history = train_ddpm(cfg, SyntheticDiscs(16, 16), tmp_path)
    assert history["lr"] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_bad_dataset_fails_before_training(tmp_path):
    class Wrong(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 16, 16)}

    with pytest.raises(ValueError, match=r"training set\[0\]\['image'\].*\(1, 16, 16\)"):
        train_ddpm(CONFIG, Wrong(), tmp_path)
    with pytest.raises(ValueError, match="no full batch"):
        train_ddpm(CONFIG, SyntheticDiscs(3, 16), tmp_path)


def _ema_pytorch(weights, beta, every, after):
    """ema_pytorch's EMA.update() after each optimizer update (I-SynMed's trainer), written out:
    a copy until ``after`` calls, then a moving average whose decay warms up as 1 - (1 + n)^(-2/3)."""
    ema, started = None, False
    for call, w in enumerate(weights):
        if call % every:
            continue
        if call <= after:
            ema = w.clone()
            continue
        if not started:
            ema, started = w.clone(), True
        epoch = call + 1 - after - 1
        decay = min(1 - (1 + epoch) ** (-2 / 3), beta)
        ema = ema - (1 - decay) * (ema - w)
    return ema


@pytest.mark.parametrize("every, after", [(10, 100), (1, 20), (2, 0), (3, 7)])
def test_ema_follows_the_published_warm_up_update_for_update(every, after):
    from types import SimpleNamespace

    from support.ddpm.train import ema_model, ema_update

    net = torch.nn.Linear(3, 2)
    t = SimpleNamespace(ema_decay=0.995, ema_update_after_step=after, ema_update_every=every)
    ema = ema_model(net, t)
    generator, seen = torch.Generator().manual_seed(0), []
    for step in range(1, 400):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1 + 0.01)
        seen.append(torch.cat([p.detach().flatten() for p in net.parameters()]).clone())
        ema_update(ema, net, step, every)
        if step in (after + 1, after + every + 1, 150, 399):
            expected = _ema_pytorch(seen, 0.995, every, after)
            shadow = torch.cat([s.flatten() for s in ema.shadow_params])
            assert torch.allclose(shadow, expected, atol=1e-6), (step, (shadow - expected).abs().max())
    assert not torch.allclose(shadow, seen[-1], atol=1e-3)      # an average by then, not a copy


def test_isynmeds_network_trains_and_loads_as_a_diffusers_pipeline(tmp_path):
    from diffusers import DDPMPipeline

    from support.core.schedules import make_sampler
    from support.ddpm.sampling import load_pipeline, sample_images
    from support.ddpm.network.unet import DiffusionUNet

    config = ddpm_config("test", {"unet": {"architecture": "isynmed", "layers_per_block": 2},
                                  "train": {"max_steps": 4, "checkpoint_every": 2, "sample_grid_steps": 2}})
    history = train_ddpm(config, SyntheticDiscs(16, 16), tmp_path / "run")
    assert np.isfinite(history["loss"]).all()
    index = json.loads((tmp_path / "run" / "pipeline" / "model_index.json").read_text())
    assert index["unet"] == ["support.ddpm.network.unet", "DiffusionUNet"]
    pipe = DDPMPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert isinstance(pipe.unet, DiffusionUNet) and isinstance(load_pipeline(tmp_path / "run" / "pipeline").unet,
                                                                DiffusionUNet)
    _, ema = _final_at(tmp_path / "run", 4)
    assert all(torch.equal(p.detach(), ema[n]) for n, p in pipe.unet.named_parameters())
    images = sample_images(pipe.unet, make_sampler("ddim", pipe.scheduler.config), [1, 2], 3)
    assert images.shape == (2, 1, 16, 16) and not torch.allclose(images[0], images[1])
    # a fresh process (notebook 04, 05's RePaint) has not imported the network's module: the loaders do it
    for load in ("from support.ddpm.sampling import load_pipeline; unet = load_pipeline(path).unet",
                 "from support.cleanup.config import InpaintConfig; from support.cleanup.inpaint import RePaintInpainter; "
                 "unet = RePaintInpainter(InpaintConfig(backend='repaint', ddpm_path=path)).pipe.unet"):
        code = f"path = {str(tmp_path / 'run' / 'pipeline')!r}; {load}; print(type(unet).__name__)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.split()[-1] == "DiffusionUNet", out.stderr[-2000:]
