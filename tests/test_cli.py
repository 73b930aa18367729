"""The synthcxr command: one entry for the runner, the generators and the benchmarks."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from support import cli
from support.ddpm.config import ddpm_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_with_ddpm(tmp_path_factory):
    """A run folder laid out as 02 leaves it: models/ddpm/pipeline."""
    from support.core.schedules import make_noise_scheduler
    from support.ddpm.model import build_unet
    from support.ddpm.train import save_pipeline

    cfg = ddpm_config("test")
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_pipeline(build_unet(cfg.unet), make_noise_scheduler(cfg.noise), run / "models" / "ddpm" / "pipeline")
    return run


def test_sample_ddpm_from_a_run_folder_writes_a_dataset(run_with_ddpm, tmp_path, capsys):
    from support.data.adapters import load_dataset

    out = tmp_path / "set"
    assert cli.main(["sample", "ddpm", "--model", str(run_with_ddpm), "--n", "3", "--out", str(out),
                     "--profile", "test", "--seed", "5"]) == 0
    table, _ = load_dataset("mimic-cxr-jpg", out)
    assert len(table) == 3 and "3" in capsys.readouterr().out
    provenance = pd.read_csv(out / "provenance.csv", dtype=str)
    assert sorted(provenance["seed"].astype(int)) == [5, 6, 7]
    assert set(table["subject_id"].str[0]) == {"9"}                         # outside MIMIC's id range
    # the model folder and the pipeline folder name the same model
    again = tmp_path / "again"
    assert cli.main(["sample", "ddpm", "--model", str(run_with_ddpm / "models" / "ddpm" / "pipeline"), "--n", "3",
                     "--out", str(again), "--profile", "test", "--seed", "5"]) == 0
    assert sorted(p.read_bytes() for p in out.rglob("*.jpg")) == sorted(p.read_bytes() for p in again.rglob("*.jpg"))


def test_bad_arguments_are_named(tmp_path, capsys):
    assert cli.main(["sample", "ddpm", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert f"--model {tmp_path}: no DDPMPipeline folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="FINDING=COUNT"):
        cli._finding_mix("Pleural Effusion:3")
    assert cli._finding_mix("Pleural Effusion=3, No Finding=2") == {"Pleural Effusion": 3, "No Finding": 2}
    assert cli.main(["sample", "t2i", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 1


def test_list_and_run_reach_the_runner(capsys, fixture_notebooks, tmp_path):
    assert cli.main(["list"]) == 0
    assert "02_ddpm" in capsys.readouterr().out
    assert cli.main(["run", "--profile", "test", "--notebooks-dir", str(fixture_notebooks),
                     "--runs-root", str(tmp_path), "--run-id", "r"]) == 0
    assert (tmp_path / "r" / "manifest.json").is_file()


def test_console_script_is_declared_and_answers():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["synthcxr"] == "support.cli:main"
    done = subprocess.run([sys.executable, "-m", "support.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "synthcxr sample ddpm" in done.stdout


def test_export_is_an_imagefolder_that_datasets_reads(run_with_ddpm, tmp_path, capsys):
    import datasets

    synthetic = tmp_path / "set"
    assert cli.main(["sample", "ddpm", "--model", str(run_with_ddpm), "--n", "4", "--out", str(synthetic),
                     "--profile", "test", "--seed", "3"]) == 0
    out = tmp_path / "hf"
    assert cli.main(["export", "--set", str(synthetic), "--out", str(out)]) == 0
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out))
    rows = [row for split in loaded.values() for row in split]
    assert len(rows) == 4
    assert sorted(int(r["provenance_seed"]) for r in rows) == [3, 4, 5, 6]
    assert {r["provenance_generator"] for r in rows} == {"ddpm"} and {r["provenance_sampler"] for r in rows} == {"ddim"}
    assert all(r["image"].size == (16, 16) for r in rows) and all(r["subject_id"].startswith("9") for r in rows)
    assert str(tmp_path) not in "".join(p.read_text() for p in out.rglob("metadata.jsonl"))
    assert cli.main(["export", "--set", str(synthetic), "--out", str(out)]) == 1       # never overwrites
    assert "already exists" in capsys.readouterr().err
