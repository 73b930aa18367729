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
