"""The model-backed paths of text removal on tiny models: SAM refinement, RePaint, SD inpainting."""


import numpy as np
import pytest
import torch

from support.cleanup import Cleaner, CleanupConfig, InpaintConfig, MaskConfig
from support.cleanup.inpaint import _repaint_scheduler
from support.cleanup.sam import SamRefiner, load_sam
from support.cleanup.synthetic import radiograph_background, synthetic_text_images
from support.cleanup.tiny_models import TINY_SAM_SPEC, write_tiny_ddpm, write_tiny_sam, write_tiny_sd_inpaint

torch.set_num_threads(1)

SIZE = 96


class Payload:
    """An arbitrary object: ``weights_only`` loading refuses to unpickle it."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"sam": write_tiny_sam(root / "sam_tiny.pth"), "ddpm": write_tiny_ddpm(root / "ddpm", sample_size=32),
            "sd": write_tiny_sd_inpaint(root / "sd-inpaint")}


@pytest.fixture(scope="module")
def images():
    found = synthetic_text_images(3, SIZE, seed=5, p_no_text=0.0)
    rng = np.random.default_rng(0)
    blank = np.clip(np.rint(radiograph_background(rng, SIZE) * 255), 0, 255).astype(np.uint8)
    return [t.image for t in found], blank


def _sam_config(models, **inpaint) -> CleanupConfig:
    return CleanupConfig(mask=MaskConfig(sam_checkpoint=str(models["sam"]), sam_kind="vit_b", sam_spec=TINY_SAM_SPEC,
                                         device="cpu"),
                         inpaint=InpaintConfig(device="cpu", **inpaint), batch_size=4)


def test_sam_gives_one_mask_per_box_prompt(models):
    refiner = SamRefiner.from_checkpoint(models["sam"], "vit_b", TINY_SAM_SPEC, device="cpu")
    assert refiner.model.image_encoder.img_size == 64
    image = np.zeros((SIZE, SIZE + 20), np.uint8)
    masks = refiner.box_masks(image, [[5, 5, 30, 20], [40, 50, 90, 70], [0, 0, 116, 96]])
    assert masks.shape == (3, SIZE, SIZE + 20) and masks.dtype == bool
    assert refiner.box_masks(image, []).shape == (0, SIZE, SIZE + 20)
    rgb = refiner.box_masks(np.zeros((SIZE, SIZE, 3), np.uint8), [[5, 5, 30, 20]])
    assert rgb.shape == (1, SIZE, SIZE)


def test_sam_checkpoints_are_loaded_strictly_and_without_pickle(models, tmp_path):
    with pytest.raises(ValueError, match="do not fit|not a SAM"):
        load_sam(models["sam"], "vit_b", {**TINY_SAM_SPEC, "encoder_embed_dim": 48}, device="cpu")
    state = torch.load(models["sam"], weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        load_sam(tmp_path / "partial.pth", "vit_b", TINY_SAM_SPEC, device="cpu")
    torch.save({"x": Payload()}, tmp_path / "pickled.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_sam(tmp_path / "pickled.pth", "vit_b", TINY_SAM_SPEC, device="cpu")
    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        load_sam(tmp_path / "missing.pth", "vit_b", TINY_SAM_SPEC)


def test_sam_masks_stay_inside_the_boxes_and_the_rest_is_untouched(models, images):
    texts, _ = images
    cleaner = Cleaner(_sam_config(models))
    assert cleaner.sam is not None
    for image, r in zip(texts, cleaner.clean_all(texts, progress=False)):
        assert r.boxes and r.text_mask.any()
        allowed = np.zeros(image.shape, bool)
        for b in r.boxes:    # SAM masks are clipped to their box grown by sam_box_margin
            m = cleaner.config.mask.sam_box_margin
            allowed[max(0, int(b.y0) - m):int(np.ceil(b.y1)) + m, max(0, int(b.x0) - m):int(np.ceil(b.x1)) + m] = True
        assert not (r.text_mask & ~allowed).any()
        assert np.array_equal(r.image[~r.mask], image[~r.mask])


@pytest.mark.parametrize("backend", ["repaint", "sd"])
def test_diffusion_backends_keep_pixels_outside_the_mask_bit_identical(models, images, backend):
    texts, blank = images
    fields = {"repaint": dict(backend="repaint", ddpm_path=str(models["ddpm"]), repaint_steps=8, jump_length=2,
                              jump_n_sample=2),
              "sd": dict(backend="sd", sd_path=str(models["sd"]), sd_steps=2, sd_resolution=64)}[backend]
    cleaner = Cleaner(CleanupConfig(inpaint=InpaintConfig(device="cpu", **fields), batch_size=4))
    rgb = np.repeat(texts[1][..., None], 3, axis=2)
    wide = texts[2].astype(np.uint16) * 16     # a 12-bit film in a 16-bit container
    batch = [texts[0], blank, rgb, wide]
    results = cleaner.clean_batch(batch)
    for image, r in zip(batch, results):
        assert r.image.dtype == image.dtype and r.image.shape == image.shape
        assert np.array_equal(r.image[~r.mask], image[~r.mask])
    assert results[1].backend == "none" and np.array_equal(results[1].image, blank)
    assert results[3].image.max() <= wide.max()   # filled within the film's own range
    assert all(results[i].backend == backend and results[i].changed for i in (0, 2, 3))
    inside = results[0].mask
    assert (results[0].image[inside] != texts[0][inside]).mean() > 0.5   # the mask really was repainted
    # seeded per image by content: the same image gives the same result in another batch
    again = cleaner.clean_batch([texts[0]])[0]
    if backend == "sd":
        assert np.array_equal(again.image, results[0].image)


def test_repaint_turns_v_prediction_into_the_noise_it_implies(models):
    from diffusers import DDPMPipeline

    ddpm = DDPMPipeline.from_pretrained(models["ddpm"], local_files_only=True)
    assert ddpm.scheduler.config.prediction_type == "v_prediction"
    v_sched = _repaint_scheduler(ddpm.scheduler)
    eps_sched = _repaint_scheduler(ddpm.scheduler)
    eps_sched.prediction_type = "epsilon"
    for s in (v_sched, eps_sched):
        s.set_timesteps(10, jump_length=2, jump_n_sample=2)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(1, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(1, 1, 8, 8, generator=gen)
    t = int(v_sched.timesteps[3])
    a = v_sched.alphas_cumprod[t]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    known, mask = torch.zeros_like(x0), torch.zeros_like(x0)
    out_v = v_sched.step(v, t, xt, known, mask, torch.Generator().manual_seed(1))
    out_eps = eps_sched.step(noise, t, xt, known, mask, torch.Generator().manual_seed(1))
    assert torch.allclose(out_v.pred_original_sample, out_eps.pred_original_sample, atol=1e-4)
    assert torch.allclose(out_v.pred_original_sample, x0.clamp(-1, 1), atol=1e-3)
    assert torch.allclose(out_v.prev_sample, out_eps.prev_sample, atol=1e-4)


def test_sd_backend_uses_the_configured_resolution_and_prompt(models, images, monkeypatch):
    texts, _ = images
    cleaner = Cleaner(CleanupConfig(inpaint=InpaintConfig(backend="sd", sd_path=str(models["sd"]), sd_steps=2,
                                                          sd_resolution=64, prompt="No text, clean background",
                                                          device="cpu")))
    seen = {}
    original = type(cleaner.inpainter.pipe).__call__

    def spy(pipe, **kwargs):
        seen.update(kwargs)
        return original(pipe, **kwargs)

    monkeypatch.setattr(type(cleaner.inpainter.pipe), "__call__", spy)
    cleaner.clean(texts[0])
    assert seen["height"] == seen["width"] == 64 and seen["image"][0].size == (64, 64)
    assert seen["prompt"] == ["No text, clean background"] and seen["num_inference_steps"] == 2
    assert seen["guidance_scale"] == 7.5


def test_missing_model_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="sd_path"):
        Cleaner(CleanupConfig(inpaint=InpaintConfig(backend="sd", sd_path=str(tmp_path))))
    with pytest.raises(FileNotFoundError, match="ddpm_path"):
        Cleaner(CleanupConfig(inpaint=InpaintConfig(backend="repaint", ddpm_path=str(tmp_path / "none"))))


def test_published_kinds_come_from_sams_registry_with_the_same_shapes(models):
    from segment_anything import sam_model_registry

    from support.cleanup.sam import build_sam, sam_spec

    registry = {k: v.shape for k, v in sam_model_registry["vit_b"](checkpoint=None).state_dict().items()}
    assert registry == {k: v.shape for k, v in build_sam(sam_spec("vit_b")).state_dict().items()}
    with pytest.raises(ValueError, match="vit_b"):   # the tiny checkpoint is no vit_b
        load_sam(models["sam"], "vit_b", device="cpu")
