"""Image sets as metrics read them: arrays, Datasets and files; embedding; clear input errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from support.eval.features import FeatureEncoder, embed_set
from support.core.images import to_unit_float
from support.eval.images import as_image_set

torch.set_num_threads(1)


def test_sources_give_the_same_float_images(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 10, 12), dtype=np.uint8)
    paths = []
    for i, img in enumerate(u8):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")

    class DictDataset(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": torch.from_numpy(u8[i]).float().div(255).unsqueeze(0), "labels": torch.zeros(14)}

    expected = torch.from_numpy(u8).float().div(255).unsqueeze(1)
    for source in (u8, torch.from_numpy(u8).unsqueeze(1), paths, DictDataset(), u8.astype(np.float32) / 255):
        got = as_image_set(source).load()
        assert got.shape == (3, 1, 10, 12) and torch.allclose(got, expected, atol=1e-6)
    assert as_image_set(u8).load(size=8).shape == (3, 1, 8, 8)


def test_sixteen_bit_files_read_as_the_loaders_read_them(tmp_path):
    from support.data.images import read_image

    arr = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = as_image_set([tmp_path / "deep.png"])[0]
    assert out.shape == (1, 2, 2) and out.min() == 0 and out.max() == 1
    assert torch.equal(out[0], torch.from_numpy(read_image(tmp_path / "deep.png")))


def test_input_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"real\[0\]: float pixels must lie in \[0, 1\]"):
        as_image_set(np.full((2, 4, 4), -1.0, np.float32), name="real")[0]
    with pytest.raises(ValueError, match="expected images"):
        as_image_set(np.zeros((2, 5, 4, 4)))
    with pytest.raises(TypeError, match="uint8 or float"):
        to_unit_float(np.zeros((4, 4), np.int32))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        as_image_set([tmp_path / "nope.png"])[0]
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: not an image"):
        as_image_set([tmp_path / "junk.png"])[0]

    class NoImage(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"pixels": torch.zeros(1, 4, 4)}

    with pytest.raises(KeyError, match="no 'image' entry"):
        as_image_set(NoImage(), name="loader")[0]
    mixed = [torch.zeros(1, 4, 4), torch.zeros(1, 6, 6)]

    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return mixed[i]

    with pytest.raises(ValueError, match="different sizes"):
        as_image_set(Mixed()).load()
    assert as_image_set(Mixed()).load(size=5).shape == (2, 1, 5, 5)


def test_embed_set_batches_through_any_feature_encoder():
    class MeanStd:
        name = "mean-std"

        def embed(self, images):
            return torch.stack([images.mean(dim=(1, 2, 3)), images.std(dim=(1, 2, 3))], dim=1)

    assert isinstance(MeanStd(), FeatureEncoder)
    imgs = np.random.default_rng(1).random((70, 8, 8), dtype=np.float32)
    feats = embed_set(MeanStd(), imgs, batch_size=32)
    assert feats.shape == (70, 2) and feats.dtype == np.float64
    assert np.allclose(feats[:, 0], imgs.reshape(70, -1).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        embed_set(MeanStd(), np.zeros((0, 8, 8), np.float32))


def test_torchxrayvision_encoder_from_a_local_state_dict(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    from support.eval.features import TorchXRayVisionEncoder
    from support.io import save_state_dict

    save_state_dict(xrv.models.DenseNet(weights=None, num_classes=18).state_dict(), tmp_path / "dn.safetensors")
    enc = TorchXRayVisionEncoder(tmp_path / "dn.safetensors", device="cpu")
    assert enc.embed(torch.rand(2, 1, 64, 64)).shape == (2, 1024)
