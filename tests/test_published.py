"""The full profile runs the published systems or refuses to start; with stand-ins allowed, the run
says which parts stood in (manifest, index, every metrics file)."""

import json
from pathlib import Path

import pytest
import yaml

from support import pipeline, published
from support.pipeline import PipelineError
from support.runs import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def test_full_without_the_published_weights_refuses_before_anything_runs(tmp_path):
    with pytest.raises(PipelineError) as err:
        pipeline.run("full", NOTEBOOKS, NOTEBOOKS / "params", tmp_path / "runs", run_id="r")
    msg = str(err.value)
    for part in published.PUBLISHED:
        assert f"{part.key} is empty" in msg and part.layout in msg and part.get in msg, part.key
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "sam_vit_h_4b8939.pth" in msg
    assert "--allow-stand-ins" in msg
    assert not (tmp_path / "runs" / "r").exists()


def _full(selected: list[str], overrides: list[str], allow: bool) -> tuple[dict, list]:
    notebooks = pipeline.discover(NOTEBOOKS)
    _, profile = pipeline.load_profile(NOTEBOOKS / "params", "full")
    pipeline.apply_overrides(profile, overrides, notebooks)
    profile["allow_stand_ins"] = allow
    chosen = [nb for nb in notebooks if nb.name in selected]
    return profile, pipeline.check_published("full", profile, chosen)


def test_stand_ins_are_allowed_only_on_request_and_drop_the_weightless_backend():
    profile, stand_ins = _full(["01_lora_t2i", "05_cleanup", "08_cmcgns_pretrain"], [], allow=True)
    assert [p.key for p in stand_ins] == ["01_lora_t2i.base_model", "05_cleanup.sam_checkpoint",
                                          "05_cleanup.sd_inpaint_path", "08_cmcgns_pretrain.text_model"]
    assert profile["notebooks"]["05_cleanup"]["backends"] == ["telea", "repaint"]  # no SD-2 weights: no sd
    with pytest.raises(PipelineError, match="05_cleanup.sd_inpaint_path is empty"):
        _full(["05_cleanup"], [], allow=False)
    _, none = _full(["02_ddpm", "04_sampling", "07_ssl_dino"], [], allow=False)    # nothing to download there
    assert none == []
    with pytest.raises(PipelineError) as err:          # sd left out by choice: no SD-2 folder asked for
        _full(["05_cleanup"], ["05_cleanup.backends=[telea]"], allow=False)
    assert "sam_checkpoint is empty" in str(err.value) and "sd_inpaint_path" not in str(err.value)


def test_a_given_path_must_hold_the_published_layout_even_with_stand_ins(tmp_path):
    folder = tmp_path / "sd21"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(PipelineError) as err:
        _full(["01_lora_t2i"], [f"01_lora_t2i.base_model={folder}"], allow=True)
    assert "lacks vae, scheduler, text_encoder, tokenizer" in str(err.value)
    for name in ("vae", "scheduler", "text_encoder", "tokenizer"):
        (folder / name).mkdir()
    _, stand_ins = _full(["01_lora_t2i"], [f"01_lora_t2i.base_model={folder}"], allow=False)
    assert stand_ins == []
    with pytest.raises(PipelineError, match="is not a file"):
        _full(["06_evaluation"], [f"06_evaluation.inception_weights={folder}"], allow=True)
    bert = tmp_path / "bert"
    bert.mkdir()
    for name in ("config.json", "tokenizer.json", "pytorch_model.bin"):   # .bin weights count as weights
        (bert / name).write_text("{}")
    assert _full(["08_cmcgns_pretrain"], [f"08_cmcgns_pretrain.text_model={bert}"], allow=False)[1] == []


def test_a_real_dataset_replaces_the_phantom(tmp_path):
    with pytest.raises(PipelineError, match="00_data.dataset_root is empty"):
        _full(["00_data"], [], allow=False)
    assert _full(["00_data"], ["00_data.dataset_kind=mimic-cxr-jpg", f"00_data.dataset_root={tmp_path}"],
                 allow=False)[1] == []
    with pytest.raises(PipelineError, match="does not exist"):
        _full(["00_data"], ["00_data.dataset_kind=mimic-cxr-jpg", f"00_data.dataset_root={tmp_path / 'no'}"],
              allow=True)


def test_a_run_with_stand_ins_lists_them_in_manifest_index_and_every_metrics_file(fixture_notebooks, tmp_path,
                                                                                   monkeypatch):
    part = published.Published("00_first", "weights", "the published network", "one file", "its authors",
                               "a small network trained here")
    monkeypatch.setattr(published, "PUBLISHED", (part,))
    with pytest.raises(PipelineError, match="00_first.weights is empty"):
        pipeline.run("test", fixture_notebooks, fixture_notebooks / "params", tmp_path / "runs", run_id="no",
                     allow_stand_ins=False)
    assert not (tmp_path / "runs" / "no").exists()
    prof = fixture_notebooks / "params" / "test.yaml"
    data = yaml.safe_load(prof.read_text())
    prof.write_text(yaml.safe_dump({**data, "allow_stand_ins": True}))
    root = pipeline.run("test", fixture_notebooks, fixture_notebooks / "params", tmp_path / "runs", run_id="yes")
    listed = [{"parameter": "00_first.weights", "published": "the published network",
               "stand_in": "a small network trained here"}]
    assert json.loads((root / "manifest.json").read_text())["stand_ins"] == listed
    written = sorted(Path(root / "metrics").glob("*.json"))
    assert len(written) == 2 and all(json.loads(p.read_text())["stand_ins"] == listed for p in written)
    index = (root / "index.html").read_text()
    assert "Stand-ins" in index and "a small network trained here in place of the published network" in index


def test_cmcgns_full_needs_bio_clinicalbert_unless_stand_ins_are_allowed():
    from support.cmcgns.ablations import notebook_config
    from support.params import ParameterError

    with pytest.raises(ParameterError, match="Bio_ClinicalBERT"):
        notebook_config("full")
    config = notebook_config("full", allow_stand_ins=True)
    assert config.text.model_path == "" and config.image.encoder == "resnet50"


def test_the_dry_run_names_only_declared_parameters_of_the_right_types():
    from support import dry_run

    sets = dry_run.overrides()
    assert len(sets) == sum(len(v) for v in dry_run.FEW.values())
    profile, stand_ins = _full([nb for nb in dry_run.FEW], sets, allow=True)
    assert profile["notebooks"]["01_lora_t2i"]["t2i_overrides"]["base"]["ldm_training"]["max_steps"] == 2
    assert profile["notebooks"]["04_sampling"]["compare"] == [["ddim", 2]]
    assert {p.key for p in stand_ins} == {p.key for p in published.PUBLISHED}
