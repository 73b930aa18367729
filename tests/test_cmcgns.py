"""CM-CGNS end to end on a small phantom: report cleaning and what it leaves out, the two stages
on the shared trainer (resumable, stage 2 from stage 1), and the exported image encoder."""

import json

import pytest
import torch

from support.cmcgns.config import cmcgns_config
from support.cmcgns.data import ReportPairs, collate_pairs
from support.cmcgns.text import encode_report, report_sentences
from support.core.tokenizer import train_wordpiece, word_vocabulary
from support.cmcgns.train import NETWORK, pretrain
from support.data.adapters import load_dataset
from support.downstream.encoders import load_encoder_folder
from support.phantom import PhantomConfig, generate_phantom

torch.set_num_threads(1)


def test_reports_are_cleaned_as_mgca_does():
    sentences, dropped = report_sentences("Heart size is NORMAL. Unchanged.\nNo pleural effusion, or pneumothorax!",
                                          "IMPRESSION: no acute process.")
    assert sentences == ["heart size is normal", "no pleural effusion or pneumothorax", "impression no acute process"]
    assert dropped == 1                                   # "Unchanged." is one word
    assert report_sentences("Stable.", "") == ([], 1)     # under three words: the report is left out
    assert report_sentences(float("nan"), None) == ([], 0)


def test_the_tokenizer_is_deterministic_and_marks_each_tokens_sentence():
    corpus = ["no pneumothorax", "heart size is normal", "no pneumothorax", "small left effusion"]
    assert word_vocabulary(corpus, 200) == word_vocabulary(list(reversed(corpus)), 200)
    vocab = word_vocabulary(corpus, 200)
    assert list(vocab)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab["no"] < vocab["heart"]                   # by count, then spelling
    tokenizer = train_wordpiece(corpus, 200)
    ids, index = encode_report(tokenizer, ["no pneumothorax", "heart size is normal"], 64)
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "no", "pneumothorax", "heart", "size", "is", "normal",
                                                    "[SEP]"]
    assert index == [-1, 0, 0, 1, 1, 1, 1, -1]
    ids, index = encode_report(tokenizer, ["no pneumothorax", "heart size is normal"], 5)   # cut to fit
    assert len(ids) == 5 and index == [-1, 0, 0, 1, -1]
    with pytest.raises(ValueError, match="characters alone need"):
        word_vocabulary(corpus, 10)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=24, image_size=48, seed=5, lateral_share=0.3, text_share=0.0),
                     workers=1, progress=False)
    return load_dataset("mimic-cxr-jpg", root)[0]


def test_pairs_leave_out_laterals_and_studies_without_a_usable_report(records):
    records = records.copy()
    frontal = records.index[records["view"].isin(["PA", "AP"])]
    records.loc[frontal[0], ["findings", "impression"]] = ["", ""]
    records.loc[frontal[1], ["findings", "impression"]] = ["Stable.", ""]
    tokenizer = train_wordpiece(["no pneumothorax"], 200)
    pairs = ReportPairs(records, tokenizer, 64, 32)
    excluded = pairs.summary.excluded
    assert excluded["study without a report"] == 1 and excluded["report that cleans to under 3 words"] == 1
    assert excluded["view not selected"] == int((~records["view"].isin(["PA", "AP"])).sum())
    assert len(pairs) == len(frontal) - 2
    batch = collate_pairs([pairs[0], pairs[1]])
    assert batch["image"].shape == (2, 1, 32, 32) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["input_ids"].shape == batch["sentence_index"].shape == batch["attention_mask"].shape
    assert ((batch["sentence_index"] >= 0) <= (batch["attention_mask"] == 1)).all()


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmcgns")
    train = records[records["split"] == "train"]
    return out, train, pretrain(cmcgns_config("test"), train, out, source="phantom", progress=False)


def test_two_stages_run_and_stage_2_starts_from_stage_1(trained):
    out, train, histories = trained
    one, two = histories["stage1"], histories["stage2"]
    assert one["step"][-1] == 3 and two["step"][-1] == 2
    assert "loss/mir" in two and "loss/mir" not in one                  # CM-MIR in stage 2 only
    assert "loss/false_negatives" in one and one["n_sentences"] > one["n_pairs"]
    from support.io import load_state_dict
    first, second = load_state_dict(out / "stage1" / NETWORK), load_state_dict(out / "stage2" / NETWORK)
    assert first.keys() == second.keys()
    assert int(second["clusters.active"]) >= 2                          # the k-means state travels
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("image_encoder."))


def test_the_exported_encoder_is_the_trained_image_encoder_and_dense(trained):
    out, _, _ = trained
    from support.io import load_state_dict
    encoder = load_encoder_folder(out / "encoder")
    assert encoder.info["method"] == "cmcgns:cmcgns" and encoder.info["source"] == "phantom"
    network = load_state_dict(out / "stage2" / NETWORK)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, network[f"image_encoder.{name}"])
    maps = encoder.feature_maps(torch.rand(2, 1, 32, 32))
    assert len(maps) == len(encoder.feature_channels) and maps[-1].shape[1] == encoder.feature_dim


def test_a_finished_run_resumes_without_training_again(trained):
    out, train, histories = trained
    before = (out / "stage2" / NETWORK).read_bytes()
    again = pretrain(cmcgns_config("test"), train, out, source="phantom", progress=False)
    assert again["stage2"]["step"] == histories["stage2"]["step"]
    assert (out / "stage2" / NETWORK).read_bytes() == before


def test_ablations_differ_in_what_they_learn(records, tmp_path):
    train = records[records["split"] == "train"]
    config = cmcgns_config("test", {"loss": {"method": "global"}, "train": {"stage2_max_steps": 0}})
    history = pretrain(config, train, tmp_path, progress=False)
    assert set(history) == {"stage1"}
    assert [k for k in history["stage1"] if k.startswith("loss/")] == ["loss/global"]
    assert json.loads((tmp_path / "encoder" / "encoder.json").read_text())["method"] == "cmcgns:global"


def test_no_usable_pair_is_a_clear_error(records, tmp_path):
    blank = records.assign(findings="", impression="")
    with pytest.raises(ValueError, match="findings"):
        pretrain(cmcgns_config("test"), blank, tmp_path, progress=False)


def test_the_benchmark_times_both_formulations_on_the_same_network():
    from support.benchmarks import cmcgns as bench

    config = cmcgns_config("test")
    batch, vocab = bench.batch_of(config, 6)
    assert batch["image"].shape[0] == 6 and int((batch["sentence_index"].amax(1) + 1).sum()) == sum(4 + i % 4
                                                                                                  for i in range(6))
    from support.cmcgns.model import CMCGNS
    net = CMCGNS(config, vocab)
    looped = bench.looped_losses(net, batch)
    assert torch.isfinite(looped) and looped.requires_grad
    result = bench.run("test", batch_size=6, updates=1, warmup=0, repeats=1)
    assert result["ours_images_per_s"] > 0 and result["original_loops_images_per_s"] > 0
    assert result["ratio_ours_over_original"] == pytest.approx(result["ours_images_per_s"] /
                                                               result["original_loops_images_per_s"])


TWO_PROCESSES = '''
import json, sys
from support.cmcgns.config import cmcgns_config
from support.cmcgns.train import pretrain
from support.data.adapters import load_dataset
from support.phantom import PhantomConfig, generate_phantom

root, out = sys.argv[1], sys.argv[2]
generate_phantom(root, PhantomConfig(n_patients=16, image_size=32, seed=2, lateral_share=0.0, text_share=0.0),
                 workers=1, progress=False)
records = load_dataset("mimic-cxr-jpg", root)[0]
histories = pretrain(cmcgns_config("test"), records[records["split"] == "train"], out, num_processes=2,
                     progress=False)
json.dump({k: v["step"] for k, v in histories.items()}, open(out + "/steps.json", "w"))
'''


def test_pretraining_runs_on_two_gloo_processes(tmp_path):
    """Every part either learns or is frozen in its stage (DDP waits for no gradient that never comes),
    and the k-means synchronisation runs inside the processes' forward passes."""
    import subprocess
    import sys

    from launch import ENV

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "phantom"), str(out)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads((out / "steps.json").read_text()) == {"stage1": [1, 2, 3], "stage2": [1, 2]}
    assert (out / "encoder" / "encoder.safetensors").is_file()


def test_gains_are_differences_to_global_on_the_pairs_judged():
    import math

    import pandas as pd

    from support.cmcgns.evaluate import gains

    rows = [("global|real", "chexpert5", 0.1, "auroc", 0.60), ("cmcgns|real", "chexpert5", 0.1, "auroc", 0.65),
            ("global|real", "chexpert5", 1.0, "auroc", 0.70), ("cmcgns|real", "chexpert5", 1.0, "auroc", 0.66),
            ("global|real", "pneumothorax", 1.0, "dice", math.nan), ("cmcgns|real", "pneumothorax", 1.0, "dice", 0.5),
            ("cmcgns|real", "chexpert5", 1.0, "auroc:Edema", 0.99), ("random", "chexpert5", 1.0, "auroc", 0.5)]
    long = pd.DataFrame(rows, columns=["source", "task", "fraction", "metric", "value"]).assign(protocol="linear")
    table = gains(long)
    assert list(table.index) == ["cmcgns|real"]                     # the baseline and random are no rows
    assert sorted(table.columns) == [("chexpert5", 0.1), ("chexpert5", 1.0), ("pneumothorax", 1.0)]
    assert table.loc["cmcgns|real", ("chexpert5", 0.1)] == pytest.approx(0.05)
    assert table.loc["cmcgns|real", ("chexpert5", 1.0)] == pytest.approx(-0.04)   # the headline, not auroc:Edema
    assert math.isnan(table.loc["cmcgns|real", ("pneumothorax", 1.0)])             # global not scored: no gain


def test_a_source_smaller_than_one_batch_is_named_and_not_trained(records, tmp_path):
    from support.cmcgns.ablations import pretrain_grid

    config = cmcgns_config("test")
    frontal = records[records["split"].eq("train") & records["view"].isin(["PA", "AP"])]
    tiny = frontal.head(config.train.batch_size - 1)        # every one a usable pair (text_share 0)
    with pytest.warns(UserWarning, match="'tiny' skipped"):
        summary, histories, skipped = pretrain_grid({"tiny": tiny, "phantom": frontal}, ["global", "cmcgns"],
                                                    config, tmp_path)
    assert list(skipped) == ["tiny"] and f"{len(tiny)} items give no full batch" in skipped["tiny"]
    assert summary["source"].tolist() == ["phantom", "phantom"] and set(histories) == {
        "cmcgns-global-phantom", "cmcgns-cmcgns-phantom"}
    assert not (tmp_path / "cmcgns-global-tiny" / "stage1").exists()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="every source is smaller than one batch.*'tiny'"):
        pretrain_grid({"tiny": tiny}, ["cmcgns"], config, tmp_path / "again")
