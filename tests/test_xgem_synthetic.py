"""XGeM's synthetic sets on a small phantom (``test`` profile): the T->F+L set reads back as
frontal-lateral studies with their conditioning reports and labels, provenance names the
direction, seed, source study and weight hashes, reruns keep what is written and complete the
rest, each study's seed alone decides it, and other directions hold what they generate."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from support.data.adapters import load_dataset
from support.data.schema import CHEXPERT_LABELS
from support.io import sha256_file
from support.xgem import synthetic
from support.xgem.config import xgem_config
from support.xgem.generate import generate
from support.xgem.train import load_xgem, model_config

torch.set_num_threads(1)
CONFIG = xgem_config("test")
SPLITS = ("validate", "test")          # ten held-out studies in this phantom, five with a lateral


@pytest.fixture(scope="module")
def system(tiny_xgem):
    records, root, _ = tiny_xgem
    return records, root, load_xgem(CONFIG, root)


def write(system, out, direction="T->F+L", **kw):
    records, root, models = system
    kw = {"num_studies": 4, "batch_size": 3, "splits": SPLITS, "base_seed": 7, "progress": False, **kw}
    return synthetic.write_xgem_set(models, root, records, out, direction, **kw)


def provenance(out):
    return pd.read_csv(out / "provenance.csv", dtype=str, keep_default_na=False).set_index("dicom_id")


def test_names_and_refused_directions():
    assert synthetic.set_name("T->F+L") == "xgem-t2fl" and synthetic.set_name("F+T->L") == "xgem-ft2l"
    assert synthetic.image_outputs("L->F+T") == ("frontal",)
    for direction in ("F->T", "L->T", "F+L->T"):
        with pytest.raises(ValueError, match="report only"):
            synthetic.image_outputs(direction)


def test_the_config_comes_from_the_model_folder(tmp_path):
    assert model_config(tmp_path, "test") == CONFIG
    (tmp_path / "xgem.json").write_text(json.dumps({"profile": "test", "overrides": {"generate": {"steps": 2}}}))
    assert model_config(tmp_path, "full").generate.steps == 2


def test_the_t2fl_set_reads_back_as_triplets_with_provenance(system, tmp_path):
    records, model_root, _ = system
    out = tmp_path / "xgem-t2fl"
    summary = write(system, out)
    assert (summary["generated"], summary["present"], summary["images_written"]) == (4, 0, 8)
    table, _ = load_dataset("mimic-cxr-jpg", out, reports="auto")
    assert len(table) == 8 and all(len(views) == 2 and "LATERAL" in set(views) and set(views) & {"PA", "AP"}
                                   for _, views in table.groupby("study_id")["view"])

    prov = provenance(out)
    size = CONFIG.image_vae.size
    sources = records.drop_duplicates("study_id").set_index("study_id")
    for row in table.itertuples():
        p = prov.loc[row.image_id]
        assert p["direction"] == "T->F+L" and p["output"] == {"PA": "frontal", "AP": "frontal",
                                                              "LATERAL": "lateral"}[row.view]
        assert int(row.study_id) == 90000000 + int(p["seed"]) and 7 <= int(p["seed"]) < 11 and p["joint"] == "True"
        assert int(p["steps"]) == CONFIG.generate.steps and float(p["guidance_scale"]) == CONFIG.generate.guidance_scale
        source = sources.loc[p["source_study_id"]]
        assert source["split"] in SPLITS
        if p["output"] == "frontal":                # the source study's frontal view (AP stays AP)
            assert row.view == records.loc[(records["study_id"] == p["source_study_id"])
                                           & records["view"].isin(["PA", "AP"]), "view"].iat[0]
        # the conditioning report is the study's report, its labels the study's labels
        assert (row.findings, row.impression) == (source["findings"], source["impression"])
        labels = table.loc[table["image_id"] == row.image_id, list(CHEXPERT_LABELS)].to_numpy(dtype=float)[0]
        np.testing.assert_array_equal(labels, source[list(CHEXPERT_LABELS)].to_numpy(dtype=float))
        assert (row.sex, row.age) == (source["sex"], source["age"])
        assert np.asarray(Image.open(row.path)).shape == (size, size)
    assert prov["source_study_id"].nunique() == 4
    hashes = prov.iloc[0]
    assert hashes["frontal_sha256"] == sha256_file(model_root / "frontal" / "denoiser" /
                                                   "diffusion_pytorch_model.safetensors")
    assert hashes["report_sha256"] == sha256_file(model_root / "report" / "denoiser" / "model.safetensors")
    assert hashes["joint_sha256"] == sha256_file(model_root / "joint" / "joint.safetensors")
    assert hashes["contrastive_sha256"] == sha256_file(model_root / "contrastive" / "model.safetensors")
    assert all(len(hashes[f"{w}_sha256"]) == 64 for w in synthetic.WEIGHTS)


def test_a_rerun_keeps_what_is_written_and_completes_the_rest(system, tmp_path):
    out = tmp_path / "set"
    assert write(system, out, num_studies=2)["generated"] == 2
    images = sorted((out / "files").rglob("*.jpg"))
    stamps = {p: p.stat().st_mtime_ns for p in images}
    first = provenance(out)

    more = write(system, out, num_studies=5)           # the same two sources first, then three more
    assert (more["present"], more["generated"]) == (2, 3)
    assert {p: p.stat().st_mtime_ns for p in images} == stamps
    assert provenance(out).loc[first.index, "source_study_id"].equals(first["source_study_id"])

    images[0].unlink()                                  # an interrupted study is generated again
    again = write(system, out, num_studies=5)
    assert (again["present"], again["generated"]) == (4, 1) and images[0].is_file()
    assert len(load_dataset("mimic-cxr-jpg", out, reports="auto")[0]) == 10

    with pytest.raises(ValueError, match="another XGeM setting"):
        write(system, out, num_studies=5, guidance=2.0)


def test_each_study_depends_on_its_seed_alone(system):
    records, _, models = system
    studies = synthetic.source_studies(records, CONFIG.image_vae.size, SPLITS)
    reports = studies.records.loc[studies.has_report, "report"].tolist()[:3]
    for eta in (0.0, 0.5):                              # eta > 0: each study's DDIM noise is its own too
        batch = generate(models, "T->F+L", {"report": reports}, seed=[11, 12, 13], eta=eta)
        for j, seed in enumerate([11, 12, 13]):
            alone = generate(models, "T->F+L", {"report": [reports[j]]}, seed=seed, eta=eta)
            for m in ("frontal", "lateral"):
                assert torch.allclose(batch[m][j], alone[m][0], atol=1e-4), (m, seed, eta)
    assert not torch.allclose(batch["frontal"][0], batch["frontal"][1])


def test_a_single_view_direction_writes_the_generated_view_alone(system, tmp_path):
    out = tmp_path / "xgem-f2l"
    assert write(system, out, "F->L", num_studies=3)["generated"] == 3
    table, _ = load_dataset("mimic-cxr-jpg", out, reports="auto")
    assert len(table) == 3 and set(table["view"]) == {"LATERAL"}
    assert not list((out / "files").rglob("*.txt"))    # the report was neither an input nor an output
    prov = provenance(out)
    assert set(prov["output"]) == {"lateral"} and set(prov["joint"]) == {"False"} and set(prov["joint_sha256"]) == {""}
    assert table[list(CHEXPERT_LABELS)].notna().any(axis=None)   # the source studies' labels


def test_a_generated_report_is_the_study_report(system, tmp_path):
    out = tmp_path / "xgem-f2lt"
    summary = write(system, out, "F->L+T", num_studies=2, batch_size=2)
    assert summary["generated"] == 2 and summary["joint"] is True
    texts = sorted((out / "files").rglob("*.txt"))
    assert len(texts) == 2 and all(t.read_text().startswith("FINDINGS:") for t in texts)
    table, _ = load_dataset("mimic-cxr-jpg", out, reports="auto")
    assert len(table) == 2 and set(table["view"]) == {"LATERAL"} and (table["impression"] == "").all()


def test_the_rare_finding_set_draws_the_rarest_findings_in_turn(system, tmp_path):
    records, _, _ = system
    train = records[records["split"] == "train"].drop_duplicates("study_id")
    rare = synthetic.rarest_findings(records, 2)
    counts = {f: int((train[f] == 1).sum()) for f in CHEXPERT_LABELS if f not in ("No Finding", "Support Devices")}
    present = sorted(n for n in counts.values() if n >= 1)
    assert [counts[f] for f in rare] == present[:2] and "No Finding" not in rare
    studies = synthetic.source_studies(records, CONFIG.image_vae.size)
    chosen = synthetic.choose_finding_sources(studies, "T->F+L", 9, rare, seed=3)
    assert len(chosen) == 9
    for i, row in enumerate(chosen):                      # finding i % 2 in turn, repeated when few
        assert studies.records[rare[i % 2]].iat[row] == 1 and studies.has_report.iat[row]
    assert chosen == synthetic.choose_finding_sources(studies, "T->F+L", 9, rare, seed=3)
    with pytest.raises(ValueError, match="no label column 'Nodule'"):
        synthetic.choose_finding_sources(studies, "T->F+L", 2, ["Nodule"])
    out = tmp_path / "xgem-t2fl-rare"
    summary = write(system, out, num_studies=4, splits=("train",), findings=rare)
    assert summary["generated"] == 4
    table, _ = load_dataset("mimic-cxr-jpg", out, reports="auto")
    per_study = table.drop_duplicates("study_id")
    assert ((per_study[rare[0]] == 1) | (per_study[rare[1]] == 1)).all()
