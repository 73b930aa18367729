"""The sampler comparison behind notebook 02 (support.ddpm.quality): which held-out images it judges
against, that each setting's images and distance are what they claim, and the untrained floor."""

import numpy as np
import pandas as pd
import pytest
import torch

from support.core.schedules import make_noise_scheduler
from support.ddpm.config import ddpm_config
from support.ddpm.model import build_unet
from support.ddpm.quality import compare_samplers, generate, real_images, untrained_unet
from support.ddpm.sampling import pixel_frechet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    cfg = ddpm_config("test")
    torch.manual_seed(123)                       # not a seed untrained_unet is asked for below
    return build_unet(cfg.unet).eval(), make_noise_scheduler(cfg.noise).config


def _records(tmp_path, n_per=3):
    """A record table over small PNGs whose value encodes (split, view, index)."""
    from PIL import Image

    rows = []
    for split_i, split in enumerate(("train", "test")):
        for view_i, view in enumerate(("PA", "AP", "LATERAL")):
            for i in range(n_per):
                value = 20 + 80 * split_i + 25 * view_i + i
                path = tmp_path / f"{split}-{view}-{i}.png"
                Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(path)
                rows.append({"path": str(path), "split": split, "view": view, "value": value,
                             "image_id": path.stem, "subject_id": f"p{i}", "study_id": f"s{split_i}{view_i}{i}"})
    return pd.DataFrame(rows)


def test_real_images_are_the_held_out_frontal_ones(tmp_path):
    records = _records(tmp_path)
    x = real_images(records, size=8)
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.float32
    expected = records[(records["split"] == "test") & records["view"].isin(["PA", "AP"])]["value"]
    got = sorted(round(float(v) * 255) for v in x[:, 0, 0, 0])
    assert got == sorted(expected.tolist())                    # test split, PA and AP, no lateral, no train

    lateral = real_images(records, size=8, views=("LATERAL",), split="train")
    assert sorted(round(float(v) * 255) for v in lateral[:, 0, 0, 0]) == [70, 71, 72]

    a, b = real_images(records, size=8, n=4, seed=3), real_images(records, size=8, n=4, seed=3)
    assert a.shape[0] == 4 and torch.equal(a, b)                # a seeded subset, the same twice
    with pytest.raises(ValueError, match="only 0 validate images"):
        real_images(records, size=8, split="validate")
    with pytest.raises(ValueError, match="only 1 test images"):
        real_images(records[(records["split"] == "train") | (records["image_id"] == "test-PA-0")], size=8)
    two = records[(records["split"] == "train") | records["image_id"].isin(["test-PA-0", "test-PA-1"])]
    assert real_images(two, size=8).shape[0] == 2                 # two are enough for a distance


def test_each_setting_samples_its_seeds_and_scores_them(tiny):
    unet, scheduler_config = tiny
    torch.manual_seed(1)
    real = torch.rand(6, 1, 16, 16)
    table, images = compare_samplers(unet, scheduler_config, [("ddim", 2), ("ddpm", 3)], real, n=3,
                                     batch_size=2, seed=5, fd_size=8)
    assert list(table["sampler"]) == ["ddim", "ddpm"] and list(table["steps"]) == [2, 3]
    assert list(table["n"]) == [3, 3] and set(images) == {("ddim", 2), ("ddpm", 3)}
    for (sampler, steps), x in images.items():
        assert x.shape == (3, 1, 16, 16)
        row = table[(table["sampler"] == sampler) & (table["steps"] == steps)].iloc[0]
        assert row["pixel_fd"] == pytest.approx(pixel_frechet(x, real, size=8))        # at the size asked for
        # both are rounded to 3 decimals: at a few milliseconds the rounding of seconds dominates
        assert row["images_per_s"] == pytest.approx(3 / row["seconds"], rel=0.01 + 0.0005 / row["seconds"])
        # seeds seed..seed+n-1, one image per seed whatever the batching
        alone, _ = generate(unet, scheduler_config, sampler, steps, [6], batch_size=1)
        assert torch.allclose(alone[0], x[1], atol=1e-5)
    assert not torch.allclose(images[("ddim", 2)], images[("ddpm", 3)])


def test_untrained_floor_has_the_same_shape_and_fresh_weights(tiny):
    unet, _ = tiny
    fresh = untrained_unet(unet, seed=0)
    again = untrained_unet(unet, seed=0)
    other = untrained_unet(unet, seed=1)
    assert type(fresh) is type(unet) and dict(fresh.config) == dict(unet.config) and not fresh.training
    p, q, r, u = (torch.cat([t.flatten() for t in m.parameters()]) for m in (fresh, again, other, unet))
    assert p.numel() == u.numel() and torch.equal(p, q)        # seeded
    assert not torch.equal(p, r) and not torch.equal(p, u)     # new weights, not the trained ones
    import copy

    elsewhere = copy.deepcopy(unet).to("meta")                # on the network's own device (no GPU needed)
    assert next(untrained_unet(elsewhere).parameters()).device.type == "meta"
