"""LoRA fine-tuning on the full-scale code path with a tiny pipeline of the SD 2.1 classes:
saved LoRA loads into a fresh pipeline and reproduces the trainer's own samples, the base weights
stay untouched, a resumed run ends where an uninterrupted one does, NaN stops training."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sabotage import Sabotaged
from support.io import load_state_dict
from support.params import ParameterError
from support.t2i.base_model import build_small_pipeline, load_pipeline, model_sha256, save_pipeline
from support.t2i.captions import train_caption_tokenizer
from support.t2i.config import t2i_config
from support.t2i.data import SyntheticCaptioned
from support.t2i.lora import LORA_WEIGHTS, load_lora
from support.data.images import to_uint8
from support.t2i.sampling import generate_images
from support.t2i.train import NonFiniteLossError, train_lora

torch.set_num_threads(1)

# 8 images, batch 2: 4 updates per epoch, so 6 updates cross an epoch boundary (validation at its end).
CONFIG = t2i_config("test", {"train": {"max_steps": 6, "checkpoint_every": 2, "sample_every_epochs": 1}})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny StableDiffusionPipeline of the SD 2.1 classes, built from configs and saved."""
    root = tmp_path_factory.mktemp("t2i_base")
    data = SyntheticCaptioned(8, 32)
    tokenizer = train_caption_tokenizer(data.captions + list(CONFIG.train.validation_prompts), 640, 77)
    return save_pipeline(build_small_pipeline(CONFIG.base, tokenizer, seed=0), root / "pipeline")


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_run")
    before = model_sha256(base, None)
    history = train_lora(CONFIG, base, SyntheticCaptioned(8, 32), out, progress=False)
    return out, history, before


def _saved_samples(directory, n):
    return np.stack([np.asarray(Image.open(directory / f"{i:03d}.png")) for i in range(n)])


def test_saved_lora_reproduces_the_trainers_samples_in_a_fresh_pipeline(base, uninterrupted):
    out, history, base_hash = uninterrupted
    assert model_sha256(base, None) == base_hash                    # base weights never written
    assert history["step"] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(history["loss"]))
    assert [s["step"] for s in history["samples"]] == [4, 6]         # end of epoch 0, end of training
    t = history["trainable"]
    assert 0 < t["unet"]["trainable"] < t["unet"]["total"] and t["text_encoder"]["trainable"] == 0
    assert t["vae"]["trainable"] == 0
    info = json.loads((out / "lora" / "lora.json").read_text())
    assert info["trainable"] == t and info["lora"]["rank"] == 4 and info["base_model_sha256"]
    assert history["captions"]["n"] == 8 and history["captions"]["truncated"] == 0

    t_cfg = CONFIG.train
    prompts = list(t_cfg.validation_prompts)
    seeds = [t_cfg.validation_seed + i for i in range(len(prompts))]
    kwargs = dict(steps=t_cfg.validation_steps, guidance_scale=t_cfg.validation_guidance_scale,
                  sampler=t_cfg.validation_sampler, batch_size=8)
    pipe = load_pipeline(base, device="cpu", dtype="fp32")
    plain = to_uint8(generate_images(pipe, prompts, seeds, **kwargs))
    load_lora(pipe, out / "lora")
    tuned = to_uint8(generate_images(pipe, prompts, seeds, **kwargs))
    trainer = _saved_samples(out / "samples" / "step-00000006", len(prompts))
    assert np.array_equal(tuned, trainer)                            # same image for the same seed
    assert np.abs(plain.astype(int) - trainer).max() > 8             # ... and LoRA changed it
    negative = to_uint8(generate_images(pipe, prompts, seeds, negative_prompt="view_position = AP.", **kwargs))
    assert not np.array_equal(negative, tuned)                       # the negative prompt is used
    # alpha 8 / rank 4: the adapter scale travels in the file and is restored on load
    assert pipe.unet.peft_config["t2i-lora"].lora_alpha == 8 and pipe.unet.peft_config["t2i-lora"].r == 4
    # every checkpoint holds a LoRA file that diffusers loads as well
    fresh = load_pipeline(base, device="cpu", dtype="fp32")
    load_lora(fresh, out / "checkpoints" / "checkpoint-00000006")
    assert np.array_equal(to_uint8(generate_images(fresh, prompts, seeds, **kwargs)), trainer)


def test_resume_after_crash_ends_in_the_same_lora_weights(base, uninterrupted, tmp_path):
    out_a, history_a, _ = uninterrupted
    data = SyntheticCaptioned(8, 32)
    # each update reads 2 images; the crash comes inside update 5, after checkpoint-4
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lora(CONFIG, base, Sabotaged(data, after=2 * 4 + 1, mode="crash", key="pixel_values"), tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000002",
                                                                           "checkpoint-00000004"]
    assert not (tmp_path / "lora").exists()
    history_b = train_lora(CONFIG, base, data, tmp_path, progress=False)   # resumes from update 4
    assert history_b["step"] == history_a["step"]
    np.testing.assert_allclose(history_b["loss"], history_a["loss"], rtol=1e-6)
    a = load_state_dict(out_a / "lora" / LORA_WEIGHTS)
    b = load_state_dict(tmp_path / "lora" / LORA_WEIGHTS)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # a resume with other adapter parameters is refused, naming them
    with pytest.raises(ParameterError, match="lora.rank"):
        train_lora(t2i_config("test", {"lora": {"rank": 8}, "train": {"max_steps": 8, "checkpoint_every": 2}}),
                   base, data, tmp_path, progress=False)


def test_non_finite_loss_stops_before_the_update(base, tmp_path):
    data = SyntheticCaptioned(8, 32)
    with pytest.raises(NonFiniteLossError, match="update 4"):
        train_lora(CONFIG, base, Sabotaged(data, after=2 * 3, mode="nan", key="pixel_values"), tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-00000002"]
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-00000002" / "state.json").read_text())
    assert state["step"] == 2


def test_text_encoder_lora_with_min_snr_and_noise_offset_round_trips(base, tmp_path):
    cfg = t2i_config("test", {"lora": {"text_encoder": True}, "train": {
        "max_steps": 2, "snr_gamma": 5.0, "noise_offset": 0.05, "caption_dropout": 0.5,
        "gradient_accumulation_steps": 2}})
    history = train_lora(cfg, base, SyntheticCaptioned(8, 32), tmp_path, progress=False)
    assert history["trainable"]["text_encoder"]["trainable"] > 0 and all(np.isfinite(history["loss"]))
    pipe = load_lora(load_pipeline(base, device="cpu", dtype="fp32"), tmp_path / "lora")
    assert hasattr(pipe.text_encoder, "peft_config")                  # text-encoder adapters loaded too
    prompts = list(cfg.train.validation_prompts)
    images = generate_images(pipe, prompts, [0, 1], steps=cfg.train.validation_steps,
                             guidance_scale=cfg.train.validation_guidance_scale, sampler="pndm", batch_size=8)
    assert np.array_equal(to_uint8(images), _saved_samples(tmp_path / "samples" / "step-00000002", 2))


def test_sd21_structure_with_an_rgb_autoencoder_through_the_benchmark(base):
    """SD 2.1-base's written-out configs, narrowed: RGB VAE at /8, four UNet levels with per-level
    heads and linear projections; LoRA training and sampling as the benchmark times them."""
    from support.benchmarks.lora import full_finetune_rate, sampling_rate, training_rate
    from support.t2i.base_model import SD21_BASE_TEXT_ENCODER, SD21_BASE_UNET, SD21_BASE_VAE, build_pipeline

    tokenizer = load_pipeline(base, device="cpu", dtype="fp32").tokenizer
    torch.manual_seed(0)
    pipe = build_pipeline(
        {**SD21_BASE_UNET, "sample_size": 8, "block_out_channels": [32, 32, 64, 64], "attention_head_dim": [1, 1, 2, 2],
         "cross_attention_dim": 32},
        {**SD21_BASE_VAE, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "sample_size": 64},
        {**SD21_BASE_TEXT_ENCODER, "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32,
         "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}, tokenizer)
    assert pipe.vae.config.in_channels == 3 and pipe.vae_scale_factor == 8
    train = training_rate(pipe, CONFIG, batch_size=2, updates=2, warmup=1, resolution=64)
    assert train["updates_per_s"] > 0 and train["images_per_s"] == pytest.approx(2 * train["updates_per_s"])
    assert 0 < train["trainable"]["unet"]["share"] < 0.2
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    full = full_finetune_rate(pipe, batch_size=2, updates=2, warmup=1, resolution=64)
    assert full["updates_per_s"] > 0 and full["trainable_parameters"] == sum(p.numel() for p in pipe.unet.parameters())
    assert full["trainable_parameters"] > train["trainable"]["unet"]["trainable"]
    # the peer trains a copy: the pipeline's own UNet is untouched
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    sample = sampling_rate(pipe, images=2, batch_size=2, steps=2, guidance_scale=4.0, sampler="dpmsolver++",
                           resolution=64)
    assert sample["images_per_s"] > 0
    gray = generate_images(pipe, ["view_position = PA. modality = CR."], [0], steps=2, sampler="ddim")
    assert gray.shape == (1, 64, 64) and 0.0 <= gray.min() <= gray.max() <= 1.0
