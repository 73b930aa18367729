"""Inception FID through torchmetrics from a local weights file: an Inception-v3 of the FID
architecture with random weights stands in for the real "pt_inception-2015-12-05" file."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("torch_fidelity")

from support.eval.distribution import frechet_distance  # noqa: E402
from support.eval.inception import InceptionEncoder, InceptionFID, fid_input, inception_fid  # noqa: E402
from support.io import save_state_dict  # noqa: E402
from test_eval_helpers import random_inception_state as random_inception_weights  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def random_inception_state():
    return random_inception_weights()


@pytest.fixture(scope="module")
def weights_pth(random_inception_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-random.pth"
    torch.save(random_inception_state, path)
    return path


def _images(seed, n=6, size=64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        img = 0.2 + 0.6 * (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r) + rng.normal(0, 0.03, (size, size))
        out.append(np.clip(img * 255, 0, 255).round().astype(np.uint8))
    return np.stack(out)


def test_grayscale_is_repeated_to_three_channels():
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    rgb = fid_input(gray)
    assert rgb.shape == (2, 3, 8, 8) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    # float [0, 1] is mapped back to the same uint8 values by rounding
    assert torch.equal(fid_input(gray.float() / 255.0), rgb)


def test_standard_2048_feature_fid_from_local_weights(weights_pth):
    real, noise = _images(1), np.random.default_rng(3).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    fid = InceptionFID(weights_pth, device="cpu", batch_size=6)
    assert fid.update(real, real=True) == 6 and fid.update(noise, real=False) == 6
    value = fid.compute()
    assert np.isfinite(value) and value > 0
    assert fid.features(torch.from_numpy(real[:2]).float().div(255).unsqueeze(1)).shape == (2, 2048)


def test_fid_behaves_and_equals_the_frechet_distance_of_its_features(weights_pth):
    # the 64-d Inception layer keeps the matrix algebra fast; the code path is the 2048-d one
    real, real2, noise = _images(1), _images(2), np.random.default_rng(3).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    fid = InceptionFID(weights_pth, device="cpu", batch_size=6, feature_dim=64)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = fid.compute()
    fid.reset_fake()                       # real statistics are kept
    fid.update(real2, real=False)
    other_sample = fid.compute()
    fid.reset_fake()
    fid.update(noise, real=False)
    vs_noise = fid.compute()
    assert abs(same) < 1e-3 * vs_noise
    assert vs_noise > other_sample > abs(same)
    to_float = lambda a: torch.from_numpy(a).float().div(255).unsqueeze(1)
    f_real, f_noise = fid.features(to_float(real)), fid.features(to_float(noise))
    assert f_real.shape == (6, 64)
    assert vs_noise == pytest.approx(frechet_distance(f_real.numpy(), f_noise.numpy()), rel=2e-3)
    assert inception_fid(real, noise, weights_pth, device="cpu", feature_dim=64) == pytest.approx(vs_noise, rel=1e-5)
    with pytest.raises(ValueError, match="feature_dim"):
        InceptionFID(weights_pth, feature_dim=100)


def test_safetensors_weights_and_encoder_protocol(random_inception_state, tmp_path):
    path = save_state_dict(random_inception_state, tmp_path / "inception.safetensors")
    enc = InceptionEncoder(path, device="cpu")
    x = torch.from_numpy(_images(4, n=2)).float().div(255).unsqueeze(1)
    feats = enc.embed(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and enc.name.startswith("inception-v3")


def test_bad_weight_files_are_clear_errors(random_inception_state, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        InceptionFID(tmp_path / "missing.pth")
    wrong = dict(random_inception_state)
    wrong["fc.weight"] = torch.zeros(10, 2048)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong.pth.*fc.weight"):
        InceptionFID(tmp_path / "wrong.pth")

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"fc.weight": Payload()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="pickled.pth.*tensors-only"):
        InceptionFID(tmp_path / "pickled.pth")


def test_fid_reads_each_file_at_its_saved_resolution_whatever_size_the_evaluation_uses(weights_pth, tmp_path):
    import pandas as pd
    from PIL import Image

    from support.data.datasets import ImageDataset
    from support.eval.images import saved_files

    paths = []
    for i, image in enumerate(np.concatenate([_images(1, n=4, size=96), _images(2, n=4, size=96)])):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image if i < 4 else image[:80]).save(paths[-1])     # two saved sizes: 96x96 and 80x96
    records = pd.DataFrame({"path": [str(p) for p in paths], "image_id": [str(i) for i in range(8)]})
    small = torch.utils.data.Subset(ImageDataset(records, size=32), [0, 2, 5, 7])    # the evaluation's 32 px
    files = saved_files(small)
    assert [p.name for p in files._paths] == ["0.png", "2.png", "5.png", "7.png"]
    assert tuple(files[0].shape) == (1, 96, 96) and tuple(files[2].shape) == (1, 80, 96)
    native = InceptionFID(weights_pth, device="cpu", batch_size=2, feature_dim=64)
    assert native.update(files, real=True) == 4 and native.has_real     # batched by size, none dropped
    native.update(saved_files(ImageDataset(records.iloc[:4], size=32)), real=False)
    resized = InceptionFID(weights_pth, device="cpu", batch_size=2, feature_dim=64)
    resized.update(small, real=True)
    resized.update(ImageDataset(records.iloc[:4], size=32), real=False)
    assert native.compute() != pytest.approx(resized.compute(), rel=1e-3)
    array = np.zeros((3, 16, 16), dtype=np.uint8)
    assert saved_files(array) is not None and len(saved_files(array)) == 3     # in memory: as it is
