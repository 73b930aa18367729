"""make's venv rule: a venv it did not build is checked against the pins, never deleted."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp_path):
    """A copy of the Makefile and the pins, with a hand-made .venv whose python is this interpreter."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "environments", tmp_path / "environments")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')    # this venv's interpreter, site-packages and all
    python.chmod(0o755)
    (tmp_path / ".venv" / "precious").write_text("keep")
    return tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_hand_made_venv_with_the_pins_is_kept_and_used(tmp_path):
    root = _project(tmp_path)
    done = subprocess.run(["make", "-s", "venv"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (root / ".venv" / "precious").read_text() == "keep" and "creating" not in done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_hand_made_venv_off_the_pins_is_kept_and_named(tmp_path):
    root = _project(tmp_path)
    reqs = root / "environments" / "requirements-cpu.txt"
    reqs.write_text(reqs.read_text().replace("torch==", "torch==0.0.1\n# was torch==", 1))
    done = subprocess.run(["make", "-s", "venv"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "torch: " in done.stderr and "0.0.1 pinned" in done.stderr and "was not made by make" in done.stderr
    assert (root / ".venv" / "precious").read_text() == "keep"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_bench_deps_installs_the_pinned_peers_where_the_benchmarks_look():
    from support.benchmarks.ddpm import DEFAULT_REFERENCE_PATH

    done = subprocess.run(["make", "-n", "bench-deps", "HOME=/home/someone"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--target /home/someone/.cache/synthcxr/bench-packages -r environments/requirements-bench.txt" in done.stdout
    assert DEFAULT_REFERENCE_PATH == Path("~/.cache/synthcxr/bench-packages").expanduser()
    pins = (ROOT / "environments" / "requirements-bench.txt").read_text()
    for peer in ("denoising-diffusion-pytorch==", "einops==", "ema-pytorch==", "pytorch-fid=="):
        assert peer in pins
