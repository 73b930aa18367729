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
