"""XGeM stage 1, the image autoencoder: latent shapes and scaling, SD's 3-channel VAE from a local
folder (and a wrong folder refused), PSNR by hand, training lowers the loss, resume is exact."""

import math

import pytest
import torch

from sabotage import Sabotaged
from support.core import trainer
from support.data.adapters import load_dataset
from support.io import load_state_dict
from support.phantom import PhantomConfig, generate_phantom
from support.xgem.config import ImageVAEConfig, xgem_config
from support.xgem.data import view_images
from support.xgem.image_vae import (ImageCodec, ImageVAEStage, ImageVAETask, ReconstructionObjective, build_image_vae,
                                    image_psnr, load_image_vae, reconstruction_psnr, train_image_vae)

torch.set_num_threads(1)

TEST = xgem_config("test")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=8, image_size=48, seed=5, lateral_share=0.5, text_share=0.0),
                     workers=1, progress=False)
    return load_dataset("mimic-cxr-jpg", root)[0]


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _tiny_vae(in_channels: int = 3, latent_channels: int = 4, levels: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         block_out_channels=(8,) * levels, layers_per_block=1, norm_num_groups=4)


def test_the_test_profile_encodes_to_scaled_latents_and_decodes_to_gray_images():
    cfg = TEST.image_vae
    torch.manual_seed(0)
    vae = build_image_vae(cfg).eval()
    assert (vae.config.in_channels, vae.config.out_channels) == (1, 1)
    codec = ImageCodec(vae)
    x = _images(2, cfg.size)
    with torch.no_grad():
        mean, std = codec.encode(x)
        assert mean.shape == std.shape == (2, cfg.latent_channels, cfg.latent_size, cfg.latent_size) == (2, 4, 8, 8)
        posterior = vae.encode(x).latent_dist
        assert torch.allclose(mean, posterior.mean * 0.18215) and torch.allclose(std, posterior.std * 0.18215)
        z = 5 * torch.randn(2, 4, 8, 8)
        out = codec.decode(z)
        assert out.shape == (2, 1, cfg.size, cfg.size)
        assert torch.equal(out, vae.decode(z / 0.18215).sample.clamp(-1, 1))
        assert out.min() >= -1 and out.max() <= 1


def test_psnr_by_hand():
    black = torch.full((1, 1, 4, 4), -1.0)
    # [0, 1] values 0 and 0.1: MSE 0.01, 20 dB; 0 and 0.01: MSE 1e-4, 40 dB
    pair_a, pair_b = torch.cat([black, black]), torch.cat([black + 0.2, black + 0.02])
    assert torch.allclose(image_psnr(pair_a, pair_b), torch.tensor([20.0, 40.0]), atol=1e-3)
    assert image_psnr(black, black).item() == pytest.approx(100.0)         # identical: capped, not inf
    vae = build_image_vae(TEST.image_vae).eval()
    x = _images(3, TEST.image_vae.size)
    result = reconstruction_psnr(vae, x, batch_size=2)
    codec = ImageCodec(vae)
    with torch.no_grad():
        expected = image_psnr(x, codec.reconstruct(x)).mean().item()
    assert result["n"] == 3 and result["psnr"] == pytest.approx(expected, rel=1e-5)


def test_sd_vae_from_a_folder_copies_gray_in_and_keeps_channel_0(tmp_path, records):
    sd = _tiny_vae().eval()
    sd.save_pretrained(tmp_path / "sd-vae", safe_serialization=True)
    cfg = ImageVAEConfig(vae_path=str(tmp_path / "sd-vae"), size=32)
    assert cfg.latent_size == 4
    codec = ImageCodec(build_image_vae(cfg).eval())
    x = _images(2, 32)
    with torch.no_grad():
        mean, std = codec.encode(x)
        posterior = sd.encode(x.repeat(1, 3, 1, 1)).latent_dist
        assert mean.shape == (2, 4, 4, 4)
        assert torch.allclose(mean, posterior.mean * 0.18215, atol=1e-6)
        decoded = sd.decode(mean / 0.18215).sample
        assert not torch.allclose(decoded[:, 0], decoded[:, 1])            # channel 0 is a choice
        assert torch.allclose(codec.decode(mean), decoded[:, :1].clamp(-1, 1), atol=1e-6)
    # nothing to train: loaded, checked and measured
    config = xgem_config("test", {"image_vae": {"vae_path": str(tmp_path / "sd-vae")}})
    history = train_image_vae(config, records, tmp_path / "stage", progress=False)
    assert history["trained"] is False and "nothing trained" in history["note"]
    assert history["n_val_images"] > 0 and math.isfinite(history["val_psnr"][0])
    assert not (tmp_path / "stage" / "checkpoints").exists() and not (tmp_path / "stage" / "vae").exists()


@pytest.mark.parametrize("in_channels, latent_channels, wrong", [(1, 4, "in_channels 1"),
                                                                  (3, 8, r"latent_channels 8 \(expected 4\)")])
def test_a_folder_that_is_not_sds_vae_is_refused_by_name(tmp_path, in_channels, latent_channels, wrong):
    folder = tmp_path / "other-vae"
    _tiny_vae(in_channels, latent_channels).save_pretrained(folder, safe_serialization=True)
    with pytest.raises(ValueError, match=rf"{folder}.*{wrong}"):
        build_image_vae(ImageVAEConfig(vae_path=str(folder), size=32))


def test_training_lowers_the_loss_and_exports_the_trained_vae(tmp_path, records):
    config = xgem_config("test", {"loops": {"image_vae": {"max_steps": 8, "checkpoint_every": 8}}})
    history = train_image_vae(config, records, tmp_path, progress=False)
    l1 = history["loss/l1"]
    assert len(l1) == 8 and sum(l1[-2:]) / 2 < 0.8 * sum(l1[:2]) / 2
    assert history["loss"][-1] == pytest.approx(l1[-1] + 1e-6 * history["loss/kl"][-1], rel=1e-5)
    held_out = view_images(records[records["split"] != "train"], TEST.image_vae.size)
    torch.manual_seed(0)                                                   # the trainer's seed
    before = reconstruction_psnr(build_image_vae(TEST.image_vae), held_out)
    assert history["val_step"] == [8] and before["n"] == history["n_val_images"]
    assert history["val_psnr"][0] > before["psnr"] + 3
    codec = load_image_vae(tmp_path / "vae")
    assert codec.channels == 1 and not codec.vae.training
    trained = load_state_dict(tmp_path / "checkpoints" / "checkpoint-00000008" / "model.safetensors")
    exported = codec.vae.state_dict()
    assert trained.keys() == {f"vae.{k}" for k in exported}
    assert all(torch.equal(trained[f"vae.{k}"], v) for k, v in exported.items())


def test_the_posterior_sample_comes_from_the_step_generator_alone():
    objective = ReconstructionObjective(build_image_vae(TEST.image_vae), kl_weight=1e-6)
    x = _images(2, TEST.image_vae.size)
    losses = []
    for global_seed, step_seed in [(1, 7), (2, 7), (1, 8)]:
        torch.manual_seed(global_seed)
        losses.append(objective(x, torch.Generator().manual_seed(step_seed))[0].item())
    assert losses[0] == losses[1] != losses[2]


def test_a_crashed_run_resumes_to_the_same_weights(tmp_path, records):
    train = records[records["split"] == "train"]
    loop = xgem_config("test", {"loops": {"image_vae": {"max_steps": 4, "checkpoint_every": 2}}}).loops.image_vae
    stage = ImageVAEStage(image_vae=TEST.image_vae, train=loop)
    images = view_images(train, TEST.image_vae.size)

    def run(data, out):
        return trainer.launch(ImageVAETask(stage, data), stage, out, progress=False)

    reference = run(images, tmp_path / "a")
    # batch 4: read 1 is the check of item 0, then 4 reads an update; crash inside update 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(Sabotaged(images, after=4 * 2 + 2, mode="crash", key="image"), tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["checkpoint-00000002"]
    resumed = run(images, tmp_path / "b")
    a, b = (load_state_dict(tmp_path / d / "checkpoints" / "checkpoint-00000004" / "model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["loss"] == reference["loss"]
