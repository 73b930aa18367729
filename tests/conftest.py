import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_NOTEBOOKS = REPO / "tests" / "fixtures" / "notebooks"

# Nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs as two xdist workers on two cores: one thread each (inherited by notebook kernels
# and launched processes). Two threads a worker oversubscribe the cores, and torch's spinning
# threads then run small models tens of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def fixture_notebooks(tmp_path) -> Path:
    """A private copy of the fixture notebooks and their profile, free to edit per test."""
    dst = tmp_path / "notebooks"
    shutil.copytree(FIXTURE_NOTEBOOKS, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_xgem(tmp_path_factory):
    """XGeM's ``test`` profile trained once on a 20-patient phantom at 48 px (a lateral in 60% of the
    studies): (records, model folder, each stage's history). Tests read it; none retrains it."""
    from support.data.adapters import load_dataset
    from support.phantom import PhantomConfig, generate_phantom
    from support.xgem.config import xgem_config
    from support.xgem.train import train_xgem

    data = tmp_path_factory.mktemp("xgem-phantom")
    generate_phantom(data, PhantomConfig(n_patients=20, image_size=48, seed=3, lateral_share=0.6, text_share=0.0),
                     workers=1, progress=False)
    records = load_dataset("mimic-cxr-jpg", data)[0]
    root = tmp_path_factory.mktemp("xgem")
    histories = train_xgem(xgem_config("test"), records, root, progress=False)
    return records, root, histories


@pytest.fixture(scope="session")
def text_phantom(tmp_path_factory):
    """A two-image phantom at 256 px, every image with burned-in text: (root, [(dicom id, lossless PNG
    copy of the image, its text mask)]), the image whose text the batch cleaner covers best first."""
    from PIL import Image

    from support.cleanup import Cleaner
    from support.cleanup.pixels import read_pixels
    from support.data.adapters import load_dataset
    from support.phantom import PhantomConfig, generate_phantom

    root = tmp_path_factory.mktemp("text-phantom") / "phantom"
    generate_phantom(root, PhantomConfig(n_patients=2, studies_per_patient=(1, 1), image_size=256, seed=1,
                                         text_share=1.0, lateral_share=0.0), workers=1, progress=False)
    records, _ = load_dataset("mimic-cxr-jpg", root, reports=False)
    cleaner, images = Cleaner(), []
    for rec in records.itertuples():
        pixels = read_pixels(rec.path)
        png = root.parent / f"{rec.image_id}.png"
        Image.fromarray(pixels, "L").save(png)
        text = read_pixels(root / "phantom" / "text_masks" / f"{rec.image_id}.png") > 0
        covered = (cleaner.clean(pixels).mask & text).sum() / max(1, text.sum())
        images.append((covered, rec.image_id, png, text))
    images.sort(key=lambda t: -t[0])
    assert images[0][0] > 0.9 and all(t[3].any() for t in images)
    return root, [(i, p, m) for _, i, p, m in images]
