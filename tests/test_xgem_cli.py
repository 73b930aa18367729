"""XGeM's command line on a tiny trained system (``test`` profile, as test_xgem_system trains it):
images from a report, a report from images and a pair, each written as files with a record;
a second call adds files and overwrites none; usage errors name what is wrong and exit 2."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from support.xgem.cli import main, model_config, parse_weights
from support.xgem.config import xgem_config
from support.xgem.data import Studies
from support.xgem.generate import DIRECTIONS

CONFIG = xgem_config("test")
SPACES = {"image_vae", "report_vae", "contrastive", "frontal", "lateral", "report"}


@pytest.fixture(scope="module")
def system(tiny_xgem):
    """(model folder with its xgem.json, a held-out study's frontal and lateral paths and report)."""
    records, root, _ = tiny_xgem
    (root / "xgem.json").write_text(json.dumps({"profile": "test", "overrides": {}}))
    held = Studies(records[records["split"] != "train"], CONFIG.image_vae.size)
    row = held.records[held.has_lateral & held.has_report].iloc[0]
    return root, row["frontal_path"], row["lateral_path"], row["report"]


def _png(path):
    return np.asarray(Image.open(path))


def test_list_prints_the_twelve_directions(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(DIRECTIONS)


def test_an_image_from_a_report_is_written_with_its_record(system, tmp_path):
    root, _, _, report = system
    out = tmp_path / "out"
    (tmp_path / "second.txt").write_text("No finding.\n")
    assert main(["generate", "--model", str(root), "--direction", "T->F", "--report", report,
                 "--report-file", str(tmp_path / "second.txt"),
                 "--out", str(out), "--seed", "3", "--steps", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000_frontal.png", "001_frontal.png", "generation.json"]
    image = _png(out / "000_frontal.png")
    assert image.dtype == np.uint8 and image.shape == (CONFIG.image_vae.size,) * 2
    record = json.loads((out / "generation.json").read_text())
    assert record["direction"] == "T->F" and record["seed"] == 3 and record["steps"] == 2
    assert record["guidance"] == CONFIG.generate.guidance_scale and record["config"]["profile"] == "test"
    assert record["inputs"]["report"] == [report, "no finding."]
    assert set(record["weights_sha256"]) == SPACES | {"joint"}
    assert [s["frontal"] for s in record["studies"]] == ["000_frontal.png", "001_frontal.png"]


def test_a_report_from_both_views(system, tmp_path):
    root, frontal, lateral, _ = system
    assert main(["generate", "--model", str(root), "--direction", "F+L->T", "--frontal", frontal, "--lateral", lateral,
                 "--out", str(tmp_path), "--weights", "F=2,lateral=1", "--quiet"]) == 0
    text = (tmp_path / "000_report.txt").read_text()
    assert text.endswith("\n")
    record = json.loads((tmp_path / "generation.json").read_text())
    assert record["weights"] == {"frontal": 2.0, "lateral": 1.0} and record["studies"][0]["report"] == "000_report.txt"


def test_a_pair_twice_into_one_folder_overwrites_nothing(system, tmp_path):
    root, _, _, report = system
    args = ["generate", "--model", str(root), "--direction", "T->F+L", "--report", report, "--out", str(tmp_path),
            "--steps", "2", "--quiet"]
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(first) == {"000_frontal.png", "000_lateral.png", "generation.json"}
    assert json.loads(first["generation.json"])["joint"] is True
    assert main(args + ["--independent"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == set(first) | {"001_frontal.png", "001_lateral.png",
                                                                  "generation-1.json"}
    assert all((tmp_path / name).read_bytes() == data for name, data in first.items())
    second = json.loads((tmp_path / "generation-1.json").read_text())
    assert second["joint"] is False and "joint" not in second["weights_sha256"]


def test_usage_errors_name_the_problem_and_exit_2(system, tmp_path, capsys):
    root, frontal, _, _ = system
    base = ["generate", "--model", str(root), "--out", str(tmp_path / "out")]
    assert main(base + ["--direction", "F+L->T", "--frontal", frontal]) == 2
    assert "needs input(s) ['lateral']: give --lateral IMAGE" in capsys.readouterr().err
    assert main(base + ["--direction", "F->L", "--frontal", frontal, "--report", "x"]) == 2
    assert "does not take ['report']" in capsys.readouterr().err
    assert main(base + ["--direction", "F->T", "--frontal", str(tmp_path / "absent.png")]) == 2
    assert "absent.png: file not found" in capsys.readouterr().err
    assert main(base + ["--direction", "T->F", "--report", "x", "--guidance", "0.5"]) == 2
    assert "guidance_scale must be 1 (no guidance) or more" in capsys.readouterr().err
    assert main(base + ["--direction", "T->F", "--report", "x", "--weights", "frontal=1"]) == 2
    assert "not among the direction's inputs" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["generate", "--model", str(bare), "--out", str(tmp_path), "--direction", "T->F", "--report", "x"]) == 2
    assert "has no xgem.json; name the profile" in capsys.readouterr().err
    unjoined = tmp_path / "unjoined"
    shutil.copytree(root, unjoined, ignore=lambda folder, names: ["joint"] if folder == str(root) else [])
    assert main(["generate", "--model", str(unjoined), "--out", str(tmp_path / "out"), "--direction", "T->F+L",
                 "--report", "x"]) == 2
    assert "train stage 5 or pass --independent" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_config_comes_from_xgem_json_or_the_profile(system, tmp_path):
    root = system[0]
    config, source = model_config(root, None, ["generate.steps=2"])
    assert config.generate.steps == 2 and source["profile"] == "test" and source["from"].endswith("xgem.json")
    config, source = model_config(tmp_path, "quick", [])
    assert config.image_vae.size == 64 and source["from"] == "--profile"
    with pytest.raises(ValueError, match="trained with profile 'test'"):
        model_config(root, "quick", [])
    with pytest.raises(ValueError, match="expected MODALITY=NUMBER"):
        parse_weights("frontal:1")
