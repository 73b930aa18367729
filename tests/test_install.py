"""Installed as a library: ranges in pyproject.toml, exact pins in environments/ (the lock), and a
non-editable install that works with no repository around it."""

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.split("#", 1)[0].strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_every_pin_lies_in_its_range():
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier
              for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = _pins(ROOT / "environments" / "requirements-cpu.txt")
    assert set(ranges) == set(pins)
    outside = {name: (version, str(ranges[name])) for name, version in pins.items() if version not in ranges[name]}
    assert not outside


def test_non_editable_install_works_without_the_repository(tmp_path):
    # the package alone, copied out, so the build writes nothing into the repository
    src = tmp_path / "src"
    shutil.copytree(ROOT / "support", src / "support", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (and pip, setuptools) from this environment, which has the pins
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check", str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import support, support.pipeline, support.ddpm.sampling, support.eval.evaluate;"
             "print(support.__file__); print(support.pipeline.DEFAULT_RUNS_ROOT)")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    where, runs = done.stdout.split()
    assert Path(where).is_relative_to(site) and Path(runs) == elsewhere / "outputs" / "runs"
    # the console command is installed; without notebooks the runner says what it needs
    done = subprocess.run([str(venv / "bin" / "synthcxr"), "run", "--profile", "test"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "notebooks directory not found" in done.stderr and "Traceback" not in done.stderr
    assert not (elsewhere / "outputs").exists()
