"""Notebook 03's configuration and bookkeeping: the full profile refuses missing local weights, stage
budgets and seeds reach every loop, the settings file rebuilds the config, and the studies a
direction is measured on hold its inputs and its report truth."""

import math

import pandas as pd
import pytest

from support.params import ParameterError
from support.xgem import study
from support.xgem.data import Studies
from support.xgem.train import model_config, write_settings


def test_full_names_the_missing_local_folders_unless_stand_ins_are_allowed(tmp_path):
    with pytest.raises(ParameterError, match=r"\['vae_path', 'clip_path', 'bert_path', 'gpt2_path'\]"):
        study.notebook_config("full")
    config, _ = study.notebook_config("full", allow_stand_ins=True)
    assert config.unet.base_channels == 320 and config.contrastive.embed_dim == 768
    vae = tmp_path / "vae"
    vae.mkdir()
    with pytest.raises(ParameterError, match=r"\['clip_path', 'bert_path', 'gpt2_path'\]"):
        study.notebook_config("full", local={"vae_path": str(vae)})
    with pytest.raises(ParameterError, match="unknown local weights 'sd_path'"):
        study.notebook_config("quick", local={"sd_path": "x"})


def test_stage_budgets_and_the_seed_reach_every_loop_and_the_settings_rebuild_it(tmp_path):
    config, settings = study.notebook_config("quick", seed=7, stage_steps={"frontal": 123, "joint": 0},
                                             overrides={"generate": {"steps": 4}})
    assert config.loops.frontal.max_steps == 123 and config.loops.frontal.epochs is None
    assert config.loops.joint.max_steps == study.xgem_config("quick").loops.joint.max_steps    # 0: the preset's
    assert {getattr(config.loops, s).seed for s in ("image_vae", "report_vae", "contrastive", "frontal", "lateral",
                                                    "report", "joint")} == {7}
    assert config.generate.steps == 4
    write_settings(tmp_path, settings)
    assert model_config(tmp_path) == config
    with pytest.raises(ParameterError, match="unknown stage"):
        study.notebook_config("quick", stage_steps={"decoder": 5})
    with pytest.raises(FileNotFoundError, match="no XGeM settings"):
        model_config(tmp_path / "elsewhere")
    assert not study.single_prompt(config).diffusion.multi_prompt and config.diffusion.multi_prompt


def test_stage_table_reads_each_history():
    histories = {"frontal": {"step": [10, 20], "loss": [1.0, 0.5], "images_per_s": [10.0, 30.0], "n_studies": 40},
                 "report_vae": {"step": [5], "loss": [9.0], "images_per_s": [], "n_reports": 12}}
    table = study.stage_table(histories).set_index("stage")
    assert table.loc["frontal", "updates"] == 20 and table.loc["frontal", "loss end"] == 0.5
    assert table.loc["frontal", "items/s"] == 20.0 and table.loc["frontal", "studies"] == 40
    assert math.isnan(table.loc["report_vae", "items/s"]) and table.loc["report_vae", "studies"] == 12


class _Fake(Studies):
    """Studies from a table alone (no images read)."""

    def __init__(self, table):
        self.records = table


def test_a_direction_is_measured_on_studies_holding_its_inputs_and_report_truth():
    table = pd.DataFrame({"lateral_path": ["l0", "", "l2", ""], "report": ["a", "b", "", ""]})
    studies = _Fake(table)
    assert study._eligible(studies, ("frontal",), ("lateral",)) == [0, 1, 2, 3]
    assert study._eligible(studies, ("lateral",), ("frontal",)) == [0, 2]
    assert study._eligible(studies, ("frontal",), ("report",)) == [0, 1]       # BLEU needs the study's report
    assert study._eligible(studies, ("report",), ("frontal", "lateral")) == [0, 1]
    assert study._eligible(studies, ("frontal", "lateral"), ("report",)) == [0]


def test_the_ablation_table_pairs_outputs_of_the_same_direction():
    multi = pd.DataFrame({"direction": ["F->L", "T->F"], "output": ["lateral", "frontal"], "agreement": [0.7, 0.6],
                          "f1": [0.3, 0.2], "fd": [10.0, 12.0]})
    single = multi.assign(agreement=[0.5, 0.65])
    table = study.ablation_table(multi, single).set_index("direction")
    assert table.loc["F->L", "agreement multi"] == 0.7 and table.loc["F->L", "agreement single"] == 0.5
    assert list(table.columns[:2]) == ["output", "agreement multi"]


def _scored(scores, truth, features=None):
    """A direction's per-study record as evaluate_directions keeps it (one output: lateral)."""
    import numpy as np

    from support.xgem.evaluate import study_matches

    other = np.roll(truth, 1, axis=0)
    return {"rows": list(range(len(truth))),
            "per_study": {"lateral": {"scores": scores, "truth": truth, "other": other, "features": features,
                                      "matches": study_matches(scores > 0.5, truth),
                                      "unmatched": study_matches(scores > 0.5, other)}}}


def _truth(n, seed=0):
    """Studies whose first finding is present in a random half, the others absent."""
    import numpy as np

    from support.xgem.evaluate import FINDINGS

    truth = np.zeros((n, len(FINDINGS)))
    truth[:, 0] = np.random.default_rng(seed).permutation(np.arange(n) % 2)
    return truth


def test_the_conditioning_effect_is_own_minus_other_truth_with_a_paired_interval():
    import numpy as np

    truth = _truth(40)
    rng = np.random.default_rng(1)
    follows = _scored(np.clip(truth * 0.8 + rng.uniform(0, 0.2, truth.shape), 0, 1), truth)   # reads its study
    ignores = _scored(rng.uniform(0, 1, truth.shape), truth)                                  # reads nothing
    few = _scored(np.clip(truth[:6] * 0.8, 0, 1), truth[:6])
    table = study.conditioning_effect({"F->L": follows, "T->L": ignores, "L+T->F": few}, n_boot=200)
    auroc = table[table["measure"] == "auroc - unmatched"].set_index("direction")
    own = 1.0                                                      # a perfect ranking of its own study
    from support.downstream.auroc import per_finding_auroc

    other = per_finding_auroc(np.roll(truth, 1, axis=0)[:, :1], follows["per_study"]["lateral"]["scores"][:, :1],
                              ["a"])["a"]
    assert auroc.loc["F->L", "difference"] == pytest.approx(own - other) and auroc.loc["F->L", "excludes 0"]
    assert auroc.loc["T->L", "ci_low"] < 0 < auroc.loc["T->L", "ci_high"] and not auroc.loc["T->L", "excludes 0"]
    assert np.isnan(auroc.loc["L+T->F", "difference"]) and auroc.loc["L+T->F", "note"].startswith("too few samples")
    agreement = table[table["measure"] == "agreement - unmatched"].set_index("direction")
    assert agreement.loc["F->L", "difference"] > 0 and agreement.loc["F->L", "excludes 0"]
    assert agreement.loc["L+T->F", "note"] == ""                   # 6 studies: agreement is scored, AUROC is not


def test_ablation_differences_pair_the_same_studies_for_auroc_agreement_and_frechet_distance():
    import numpy as np

    rng = np.random.default_rng(0)
    truth = _truth(30)
    real = {"lateral": rng.normal(0, 1, (80, 4))}
    good = np.clip(truth * 0.8 + rng.uniform(0, 0.2, truth.shape), 0, 1)
    multi = {"F->L": _scored(good, truth, rng.normal(0, 1, (30, 4)))}
    single = {"F->L": _scored(rng.uniform(0, 1, truth.shape), truth, rng.normal(3, 1, (30, 4))),
              "T->L": _scored(good, truth)}                                   # not in multi: not compared
    table = study.ablation_differences(multi, single, real, n_boot=100).set_index("measure")
    assert list(table.index) == ["auroc", "agreement", "fd"] and (table["direction"] == "F->L").all()
    assert table.loc["auroc", "difference"] > 0.3 and table.loc["auroc", "excludes 0"]
    assert table.loc["agreement", "difference"] > 0 and table.loc["agreement", "excludes 0"]
    assert table.loc["fd", "difference"] < 0 and table.loc["fd", "ci_high"] < 0      # Multi-Prompt's nearer
    # equal models (as after a few updates from one start): a difference of float rounding is no effect
    same = study.ablation_differences(multi, {"F->L": {**multi["F->L"]}}, real, n_boot=20)
    assert not same["excludes 0"].any() and same["difference"].abs().max() < 1e-9
    short = {"F->L": _scored(good[:29], truth[:29], rng.normal(3, 1, (29, 4)))}
    with pytest.raises(ValueError, match="30 studies multi-prompt, 29 single"):
        study.ablation_differences(multi, short, real)
