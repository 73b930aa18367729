"""The notebooks in notebooks/: stored clean, one parameters cell, profiles that match them, and
the whole pipeline under the test profile."""

import json
import re

import numpy as np
from pathlib import Path

import pytest

from support import pipeline
from support.io import read_json

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if pipeline.NOTEBOOK_RE.match(p.name))


def test_there_are_notebooks():
    assert PATHS, "notebooks/ holds no NN_name.ipynb"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_with_one_parameters_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    for c in cells:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and not c.get("execution_count"), f"{path.name}: stored with outputs"
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"], f"{path.name}: no title cell"
    # JupyterLab opens it on the kernel `make lab` registers (this project's venv), not a bare python3
    lab = re.search(r"ipykernel install --user --name (\S+)", (NOTEBOOKS.parent / "Makefile").read_text()).group(1)
    assert nb["metadata"]["kernelspec"]["name"] == lab, f"{path.name}: kernel {nb['metadata']['kernelspec']}"
    declared = pipeline.discover(NOTEBOOKS)
    names = {nb.name: nb for nb in declared}[path.stem].declared
    assert "run_dir" in names and "seed" in names


@pytest.mark.parametrize("profile", pipeline.PROFILES)
def test_profile_names_only_declared_parameters(profile):
    notebooks = pipeline.discover(NOTEBOOKS)
    declared = {nb.name: set(nb.declared) for nb in notebooks}
    path, prof = pipeline.load_profile(NOTEBOOKS / "params", profile)
    for name, params in prof["notebooks"].items():
        assert name in declared, f"{profile}: no notebook {name}"
        assert set(params) <= declared[name], f"{profile}.{name}: undeclared {set(params) - declared[name]}"
    pipeline.validate(path, prof, notebooks, notebooks)
    # and validate is what refuses a name a notebook does not declare, naming it
    first = next(iter(prof["notebooks"]))
    typo = {**prof, "notebooks": {**prof["notebooks"], first: {**prof["notebooks"][first], "n_stpes": 3}}}
    with pytest.raises(pipeline.PipelineError, match=f"{first}.*n_stpes"):
        pipeline.validate(path, typo, notebooks, notebooks)


def test_every_profile_the_runner_knows_is_a_preset_of_every_system():
    """A notebook passes its run's profile to its system's reader: a system without the preset
    would fail the run at that notebook, minutes in."""
    from support.cmcgns.config import cmcgns_config
    from support.ddpm.config import ddpm_config, sampling_config
    from support.ssl.config import dino_config
    from support.t2i.config import prompt_config, t2i_config, t2i_sampling_config
    from support.xgem.config import xgem_config

    readers = (t2i_config, t2i_sampling_config, prompt_config, ddpm_config, sampling_config, dino_config,
               cmcgns_config, xgem_config)
    for profile in pipeline.PROFILES:
        for read in readers:
            read(profile)
    # study exists to show effects: the T2I base reads text at every level and trains longer than quick
    study, quick = t2i_config("study").base, t2i_config("quick").base
    assert set(study.unet.cross_attention_levels) == set(range(len(study.unet.block_out_channels)))
    assert study.ldm_training.max_steps > 4 * quick.ldm_training.max_steps
    ddpm_study, ddpm_quick = ddpm_config("study").train, ddpm_config("quick").train
    assert ddpm_study.max_steps * ddpm_study.batch_size >= 1.5 * ddpm_quick.max_steps * ddpm_quick.batch_size
    assert ddpm_study.val_fd_samples and ddpm_study.validate_every < ddpm_study.max_steps   # a quality curve


@pytest.mark.notebooks
def test_whole_pipeline_runs_under_test_profile(tmp_path):
    root = pipeline.run("test", NOTEBOOKS, NOTEBOOKS / "params", tmp_path / "runs", run_id="t")
    manifest = read_json(root / "manifest.json")
    assert manifest["status"] == "ok"
    assert [e["name"] for e in manifest["notebooks"]] == [p.stem for p in PATHS]
    index = (root / "index.html").read_text()
    for p in PATHS:
        assert (root / "html" / f"{p.stem}.html").exists() and f"html/{p.stem}.html" in index

    # rendered notebooks: a progress bar is its final line, not hundreds; 06's page stays small
    for executed in (root / "notebooks").glob("*.ipynb"):
        streams = ["".join(o.get("text", "")) for c in json.loads(executed.read_text())["cells"]
                   for o in c.get("outputs", []) if o.get("output_type") == "stream"]
        # a bar's updates coalesced: at most its final line and the carriage return that cleared it
        assert max((t.count("\r") for t in streams), default=0) <= 1, f"{executed.name}: progress lines kept"
        assert max(map(len, streams), default=0) < 20_000, f"{executed.name}: a cell printed pages of output"
    assert (root / "html" / "06_evaluation.html").stat().st_size < 2_500_000
    # index.html: curated headlines for every notebook that wrote metrics (their keys still exist)
    from support.headlines import headline_rows

    for metrics_file in sorted((root / "metrics").glob("*.json")):
        rows, _ = headline_rows(metrics_file.stem, json.loads(metrics_file.read_text()))
        assert rows, f"{metrics_file.name}: no curated headline key matches the metrics any more"
        assert f'href="metrics/{metrics_file.name}"' in index
    # every saved model folder has its card: what it is, no path of the run
    folders = [p for p in (root / "models").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert {"ddpm", "t2i-lora", "xgem"} <= {p.name for p in folders}
    for folder in folders:
        card = (folder / "README.md").read_text()
        assert "Synthetic-data research use only" in card and "fingerprint `sha256:" in card, folder
        assert str(root) not in card and str(tmp_path) not in card, folder
    # 00: the phantom of the profile's size, nothing skipped, every patient in one split
    data = read_json(root / "metrics" / "00_data.json")
    assert (data["dataset"], data["n_subjects"], data["n_skipped"]) == ("phantom", 60, 0)
    assert data["n_images"] >= data["n_studies"] >= data["n_subjects"] and data["stand_ins"]
    from support.data import source

    records, _ = source.load_run_dataset(root)
    assert len(records) == data["n_images"] and records.groupby("subject_id")["split"].nunique().max() == 1
    assert set(records["split"]) == {"train", "validate", "test"}
    # 03: XGeM's five stages trained their updates; all 12 directions scored on held-out studies (or said why
    # not), both ablations on the same studies
    import pandas as pd
    from support.data.adapters import load_dataset
    from support.xgem.generate import DIRECTIONS, parse_direction

    xgem = read_json(root / "metrics" / "03_xgem.json")
    updates = {row["stage"]: row["updates"] for row in xgem["stages"]}
    assert all(updates[s] == 3 for s in ("image_vae", "report_vae", "contrastive", "frontal", "lateral", "report",
                                         "joint", "frontal (single-prompt)"))
    scores = pd.DataFrame(xgem["directions"])
    assert sorted(scores["direction"].unique()) == sorted(DIRECTIONS)
    assert len(scores) == sum(len(parse_direction(d)[1]) for d in DIRECTIONS)
    for _, row in scores.iterrows():
        measure = row["bleu1"] if row["output"] == "report" else row["fd"]
        assert (0 <= measure and (row["output"] != "report" or measure <= 1)) or row["note"], row.to_dict()
        assert np.isnan(row["agreement"]) or 0 <= row["agreement"] <= 1
    assert {"joint", "independent"} <= {c["generation"] for c in xgem["consistency"]}
    assert len(xgem["multi_vs_single_prompt"]) == sum("+" not in d.split("->")[1] for d in DIRECTIONS)
    # the conditioning effect of every output, and Multi-Prompt minus single-prompt, each with its interval
    assert all(np.isnan(v) or 0 <= v <= 1 for c in ("auroc", "auroc unmatched", "auroc real") for v in scores[c])
    effect = pd.DataFrame(xgem["conditioning_effect"])
    assert len(effect) == 2 * len(scores) and set(effect["measure"]) == {"auroc - unmatched", "agreement - unmatched"}
    finite = effect[effect["difference"].notna()]
    assert len(finite) and ((finite["ci_low"] <= finite["difference"]) & (finite["difference"] <= finite["ci_high"])).all()
    assert effect.loc[effect["difference"].isna(), "note"].str.startswith("too few samples").all()
    differences = pd.DataFrame(xgem["multi_minus_single"])
    one_output = [d for d in DIRECTIONS if "+" not in d.split("->")[1]]
    assert set(differences["direction"]) == set(one_output)
    assert set(differences["measure"]) == {"auroc", "agreement", "fd"}
    assert (Path(xgem["model"]) / "joint" / "joint.safetensors").is_file()
    # 02: the DDPM trained its updates, and its samples are nearer the real images than an untrained net's
    ddpm = read_json(root / "metrics" / "02_ddpm.json")
    assert ddpm["updates"] > 0 and np.isfinite(ddpm["final_loss"]) and np.isfinite(ddpm["val_loss_ema"])
    assert 0 < ddpm["pixel_fd_trained"] < ddpm["pixel_fd_untrained"]
    assert (Path(ddpm["pipeline"]) / "model_index.json").is_file()
    lora = read_json(root / "metrics" / "01_lora_t2i.json")
    assert lora["updates"] == 4 and 0 < lora["trainable_share_unet"] < 0.2
    assert (Path(lora["lora_weights"]) / "pytorch_lora_weights.safetensors").is_file()
    assert lora["mean_abs_change"] > 0 and lora["before_after_prompts"] == 4
    # the small base is also read in its own domain, beside the real images' round trip through it
    sets = ("base", "base+LoRA", "full fine-tune", "base, own domain", "real", "real, source look and back")
    assert set(lora["positive_rate_requested"]) == {f"{s}:{f}" for s in sets for f in ("Pleural Effusion", "No Finding")}
    # LoRA trains a sliver of what the full fine-tune trains; both are measured against the target
    lora_row, full_row = lora["methods"]
    assert lora_row["method"] == "LoRA" and full_row["method"] == "full fine-tune"
    assert 0 < lora_row["trainable_parameters"] < full_row["trainable_parameters"]
    assert full_row["trainable_share_unet"] == 1.0
    assert set(lora["fd_to_target"]) == {"base", "base+LoRA", "full fine-tune", "real (train)"}
    # 04: the report-conditioned set, with the prompt and requested labels of each image
    sampling = read_json(root / "metrics" / "04_sampling.json")
    t2i_root = Path(sampling["t2i_set"])
    assert sampling["t2i_n_samples"] == 6 and t2i_root.parent == root / "samples"

    prov = pd.read_csv(t2i_root / "provenance.csv", dtype=str, keep_default_na=False)
    assert len(prov) == 6 and prov["prompt"].str.startswith("view_position = ").all()
    assert sorted(prov["requested"]) == ["No Finding"] * 3 + ["Pleural Effusion"] * 3
    # 04: XGeM's T->F+L set: triplet studies (a frontal, a lateral, the conditioning report)
    xgem_root = root / "samples" / "xgem-t2fl"
    triplets, _ = load_dataset("mimic-cxr-jpg", xgem_root, reports="auto")
    assert triplets["study_id"].nunique() == 6 and len(triplets) == 12
    assert (triplets.groupby("study_id")["view"].apply(lambda v: "LATERAL" in set(v))).all()
    assert (triplets["findings"].fillna("") + triplets["impression"].fillna("")).str.len().gt(0).all()
    # 06 judged both synthetic sets, conditional fidelity where findings were requested
    evaluation = read_json(root / "metrics" / "06_evaluation.json")
    name = t2i_root.name
    assert f"{name}.fd" in evaluation and "xgem-t2fl.fd" in evaluation
    # conditional fidelity ran on the sets with requested findings; 3 images a finding are too few to
    # rank, so the AUROC is withheld (NaN in the table, absent from the summary), never a number
    table = pd.read_csv(root / "metrics" / "06_evaluation_table.csv").set_index("set")
    for conditioned in (name, "xgem-t2fl", f"{name}-cleaned"):
        assert "cond_auroc_mean" in table and np.isnan(table.loc[conditioned, "cond_auroc_mean"])
        assert f"{conditioned}.cond_auroc_mean" not in evaluation
    assert table.filter(like="cond_auroc/").loc[name].isna().all()
    # 06 judged XGeM's laterals against the real laterals, memorisation audit included
    assert {"xgem-t2fl.lateral.fd", "xgem-t2fl.lateral.privacy_share_flagged"} <= set(evaluation)
    assert f"{name}.lateral.fd" not in evaluation                           # T2I-LoRA's set has no lateral
    # 06's utility study: by default the first labelled set, the real regime once beside it
    [studied] = evaluation["utility_sets"]
    assert {"real@1.0", f"{studied}|synthetic@1.0", f"{studied}|synthetic->real@0.5"} <= set(
        evaluation["utility_mean_auroc"])
    assert all(0 <= v <= 1 for v in evaluation["utility_mean_auroc"].values() if np.isfinite(v))
    # 05 cleaned the generated set beside itself, which 06 judged too, with the labels it was asked for
    cleanup = read_json(root / "metrics" / "05_cleanup.json")
    assert cleanup["cleaned_sets"][name]["images"] == 6 and cleanup["cleaned_sets"][name]["skipped"] == 0
    assert f"{name}-cleaned.fd" in evaluation
    # 05's measured text removal on the phantom: text found, and nothing changed outside the masks
    for backend in cleanup["backends"]:
        assert 0 < cleanup[f"{backend}.pixel_recall"] <= 1 and 0 <= cleanup[f"{backend}.det_precision"] <= 1
        assert cleanup[f"{backend}.outside_changed_pixels"] == 0
        assert not np.isnan(cleanup[f"{backend}.psnr_after"])          # inf: every text pixel restored exactly
    # 07: DINO on the real split and each uncleaned synthetic set, every headline a probability or a Dice
    dino = read_json(root / "metrics" / "07_ssl_dino.json")
    assert set(dino["sources"]) == {"real", "none"} | {p.name for p in (root / "samples").iterdir()
                                                       if not p.name.endswith("-cleaned")}
    assert dino["sources"]["none"] == 0 and all(n > 0 for k, n in dino["sources"].items() if k != "none")
    assert set(dino["encoders"]) == set(dino["sources"]) - {"none"} and dino["headline"] and dino["skipped"] == {}
    assert all(0 <= v <= 1 for v in dino["headline"].values() if v is not None and np.isfinite(v))
    # 08: both ablations on the real split and on the report-carrying sets (T2I-LoRA's, XGeM's), not on the DDPM's
    cmcgns = read_json(root / "metrics" / "08_cmcgns_pretrain.json")
    assert set(cmcgns["sources"]) == {"real", name, "xgem-t2fl"} and cmcgns["sources"][name] == 6
    assert cmcgns["skipped"] == {}
    assert list(cmcgns["not_sources"]) == [p.name for p in (root / "samples").iterdir() if p.name.startswith("ddpm")]
    for run in ("global|real", f"cmcgns|{name}"):
        assert (Path(cmcgns["encoders"][run]) / "encoder.safetensors").is_file()
    # 09: 08's encoders beside a random start and the reference encoder, on one table
    downstream = read_json(root / "metrics" / "09_cmcgns_downstream.json")
    assert set(downstream["encoders"]) == {f"{m}|{src}" for m in ("global", "cmcgns") for src in ("real", name,
                                                                                                  "xgem-t2fl")} | \
        {"random", "reference"}
    assert any(k.startswith("cmcgns|real|covidx|linear") for k in downstream["headline"])

    # a run folder is self-contained: moved elsewhere, its files name no old path and 04 runs on it again
    import shutil

    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(root), moved)
    ours = [moved / "manifest.json", *(moved / "metrics").glob("*.json"), *(moved / "data").glob("*.json"),
            *(moved / "samples").glob("*/dataset.json"), *(moved / "models").glob("*/history.json")]
    assert not [p for p in ours if str(root) in p.read_text()]
    manifest = read_json(moved / "manifest.json")
    params = manifest["parameters"]["04_sampling"]
    assert params["run_dir"] == str(moved)
    again = {nb.name: nb for nb in pipeline.discover(NOTEBOOKS)}["04_sampling"]
    with pipeline._KernelSpec() as kernel:
        pipeline.execute(again, moved / "notebooks" / "04_again.ipynb", params, kernel, moved / "logs" / "04_again.log")
    assert read_json(moved / "metrics" / "04_sampling.json")["t2i_set"] == str(moved / "samples" / name)
