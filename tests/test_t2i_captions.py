"""T2I-LoRA without training: captions, the report tokenizer, truncation, parameters, prompt plans,
and the SD 2.1-base architecture built from its written-out configs."""

import math

import pandas as pd
import pytest
import torch

from support.data.labeler import label_report
from support.params import ParameterError
from support.t2i.captions import (caption_stats, fit_caption, learn_bpe, report_caption, token_count,
                                  train_caption_tokenizer)
from support.t2i.config import PromptConfig, t2i_config, t2i_sampling_config
from support.t2i.sampling import check_plan, plan_for_findings, plan_from_reports

torch.set_num_threads(1)

CORPUS = [
    "view_position = PA. modality = CR. The lungs are clear. No pleural effusion or pneumothorax.",
    "view_position = AP. modality = CR. Moderate right pleural effusion with adjacent atelectasis.",
    "view_position = PA. modality = CR. The cardiac silhouette is moderately enlarged.",
    "view_position = PA. modality = CR. Small left apical pneumothorax. Right IJ central line in the SVC.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CORPUS, vocab_size=640, max_length=77)


def test_caption_uses_findings_and_impression_or_the_one_there_is():
    assert report_caption("The lungs\n are clear.  ", "Normal.", "PA") == \
        "view_position = PA. modality = CR. The lungs are clear. Normal."
    assert report_caption("The lungs are clear.", "Normal.", "PA", text_source="findings").endswith("CR. The lungs are clear.")
    assert report_caption("", "Normal.", "PA", text_source="findings").endswith("CR. Normal.")
    assert report_caption("", "1. Small effusion.\n2. Line in SVC.", "AP") == \
        "view_position = AP. modality = CR. 1. Small effusion. 2. Line in SVC."
    assert report_caption(None, float("nan"), "PA") == "view_position = PA. modality = CR."
    assert report_caption("F.", "I.", "PA", text_source="impression+findings").endswith("CR. I. F.")
    assert report_caption("F.", "I.", "PA", template="{text} ({view})") == "F. I. (PA)"


def test_long_empty_and_non_ascii_reports_give_captions(tokenizer):
    long = report_caption(" ".join(["There is a moderate right pleural effusion."] * 40), "", "PA")
    cut, truncated = fit_caption(long, tokenizer)
    assert truncated and long.startswith(cut) and len(cut) < len(long)
    assert token_count(tokenizer, cut) <= 77 < token_count(tokenizer, long)
    # one more word would not have fitted: the cut is the longest whole-token prefix
    assert token_count(tokenizer, long[:len(cut) + 12]) > 77 or len(cut) + 12 >= len(long)

    empty = report_caption("", "", "PA")
    assert fit_caption(empty, tokenizer) == ("view_position = PA. modality = CR.", False)

    foreign = report_caption("Épanchement pleural gauche — ünïcode 肺部积液.", "", "PA")
    assert "Épanchement" in foreign and "肺部积液" in foreign
    ids = tokenizer(foreign).input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]        # byte-level: no character is unknown
    assert "肺部积液" in tokenizer.decode(ids, skip_special_tokens=True)
    # a caption made only of multi-byte characters is cut between characters, never inside one
    wide = "view_position = PA. modality = CR. " + "肺" * 200
    cut, truncated = fit_caption(wide, tokenizer)
    assert truncated and token_count(tokenizer, cut) <= 77 and set(cut[35:]) == {"肺"}

    stats = caption_stats([long, empty, foreign], tokenizer)
    assert stats["n"] == 3 and stats["truncated"] == 1 and math.isclose(stats["share_truncated"], 1 / 3)
    assert stats["max_tokens"] == token_count(tokenizer, long) > 77


def test_bpe_merges_most_frequent_pairs_first_and_breaks_ties_by_order():
    # Sennrich et al.'s example: "es" and "st</w>" both occur 9 times; the smaller pair wins
    words = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    assert learn_bpe(words, 3) == [("e", "s"), ("es", "t</w>"), ("l", "o")]
    assert all(len(learn_bpe(words, k)) == k for k in range(4))
    assert learn_bpe({"ab": 1}, 5) == []                      # pairs seen once are not merged
    again = train_caption_tokenizer(CORPUS, vocab_size=640, max_length=77)
    first = train_caption_tokenizer(CORPUS, vocab_size=640, max_length=77)
    assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()


def test_tokenizer_reloads_as_clip_tokenizer(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again.model_max_length == 77 and len(again) == len(tokenizer)
    text = CORPUS[1]
    assert again(text).input_ids == tokenizer(text).input_ids
    # measuring lengths is unaffected by the padding/truncation of an earlier batch call
    tokenizer([text], padding="max_length", truncation=True, max_length=77)
    assert token_count(tokenizer, text) == len(tokenizer(text).input_ids) < 77


def test_parameter_errors_name_the_field():
    with pytest.raises(ParameterError, match="caption_template"):
        t2i_config("test", {"train": {"caption_template": "{view} {report}"}})
    with pytest.raises(ParameterError, match="unknown parameter"):
        t2i_config("test", {"lora": {"rnk": 8}})
    with pytest.raises(ParameterError, match="lora.rank"):
        t2i_config("test", {"lora": {"rank": 0}})
    with pytest.raises(ParameterError, match="resolution"):
        t2i_config("test", {"base": {"resolution": 36}})
    with pytest.raises(ParameterError, match="guidance_scale"):
        t2i_sampling_config("test", {"guidance_scale": -1.0})
    full = t2i_config("full")
    assert (full.lora.rank, full.lora.alpha, full.train.batch_size, full.train.epochs) == (4, 4.0, 5, 10)
    assert (full.train.learning_rate, full.train.weight_decay, full.train.mixed_precision, full.train.seed) == \
        (1e-4, 1e-2, "fp16", 42)
    assert t2i_sampling_config("full").steps == 75 and t2i_sampling_config("full").guidance_scale == 4.0


def test_plan_for_findings_composes_reports_that_state_the_request():
    cfg = PromptConfig(source="findings", finding_mix={"Pleural Effusion": 3, "No Finding": 2}, seed=5)
    plan = plan_for_findings(cfg)
    assert len(plan) == 5 and list(plan["requested"]) == ["Pleural Effusion"] * 3 + ["No Finding"] * 2
    assert (plan["prompt"].str.startswith("view_position = ")).all()
    effusion = plan[plan["requested"] == "Pleural Effusion"]
    assert (effusion["Pleural Effusion"] == 1.0).all() and (effusion["No Finding"] == 0.0).all()
    normal = plan[plan["requested"] == "No Finding"]
    assert (normal["No Finding"] == 1.0).all() and (normal["Pleural Effusion"] == 0.0).all()
    assert normal["Edema"].isna().all()                     # outside the phantom's findings: unknown
    for row in plan.itertuples():                           # the labeller reads the request back
        assert label_report(row.report)[row.requested] == 1.0
    # one seeded stream per finding and row: other counts leave these rows as they were
    more = plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 3, "No Finding": 4},
                                          seed=5))
    pd.testing.assert_frame_equal(more.iloc[:5].reset_index(drop=True), plan)
    assert not plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 3},
                                              seed=6))["prompt"].equals(effusion["prompt"].reset_index(drop=True))


def _records():
    table = [  # subject, study, view, split, findings, impression, effusion
        ("10000001", "50000001", "PA", "test", "Large left effusion.", "Effusion.", 1.0),
        ("10000001", "50000001", "LATERAL", "test", "Large left effusion.", "Effusion.", 1.0),
        ("10000002", "50000002", "AP", "test", "", "No acute process.", 0.0),
        ("10000003", "50000003", "PA", "train", "Clear lungs.", "Normal.", 0.0),
        ("10000004", "50000004", "PA", "test", "Small right effusion.", "", 1.0),
    ]
    return pd.DataFrame([{"subject_id": s, "study_id": st, "image_id": f"img{k}", "view": v, "split": sp,
                          "findings": f, "impression": i, "Pleural Effusion": e, "No Finding": 1.0 - e,
                          "sex": "F", "age": 60.0}
                         for k, (s, st, v, sp, f, i, e) in enumerate(table)])


def test_plans_from_held_out_reports_take_one_frontal_per_study():
    records = _records()
    plan = plan_from_reports(records, PromptConfig(source="reports", num_prompts=10))
    assert len(plan) == 3                                  # test split, frontal, one per study
    assert set(plan["view"]) <= {"PA", "AP"} and plan["source_study_id"].is_unique
    assert "view_position = AP. modality = CR. No acute process." in set(plan["prompt"])
    assert any(r.startswith("FINDINGS:") and "IMPRESSION:" in r for r in plan["report"])
    picked = plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 2}, compose=False),
                               records)
    assert len(picked) == 2 and (picked["Pleural Effusion"] == 1.0).all()
    assert set(picked["source"]) == {"report"} and picked["source_study_id"].is_unique
    with pytest.warns(UserWarning, match="reused"):
        plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 5}, compose=False),
                          records)
    with pytest.raises(ValueError, match="positive for 'Cardiomegaly'"):
        plan_for_findings(PromptConfig(source="findings", finding_mix={"Cardiomegaly": 1}, compose=False),
                          records.assign(Cardiomegaly=0.0))


def test_check_plan_names_the_bad_row():
    good = pd.DataFrame({"prompt": ["a", "b"], "view": ["PA", "AP"]})
    assert check_plan(good)["Pleural Effusion"].isna().all()
    with pytest.raises(ValueError, match="row 1: view 'LATERAL'"):
        check_plan(good.assign(view=["PA", "LATERAL"]))
    with pytest.raises(ValueError, match=r"row 0: label Cardiomegaly=0\.5"):
        check_plan(good.assign(Cardiomegaly=[0.5, 1.0]))
    with pytest.raises(ValueError, match="row 1: prompt"):
        check_plan(pd.DataFrame({"prompt": ["a", None]}))


def test_sd21_base_architecture_from_written_configs(tokenizer):
    """The written-out SD 2.1-base configs give its published parameter counts; LoRA rank 4 on
    every attention projection is the trainable share measured on that architecture."""
    from support.t2i.base_model import build_sd21_base
    from support.t2i.lora import add_lora, trainable_parameters

    pipe = build_sd21_base(tokenizer, device="meta")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    assert counts == {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * 8 == 512
    add_lora(pipe.unet, pipe.text_encoder, t2i_config("full").lora)
    share = trainable_parameters(unet=pipe.unet, text_encoder=pipe.text_encoder, vae=pipe.vae)
    # 4 projections x rank 4 x (in + out) per attention module, self- and cross-attention
    lora_modules = [m for n, m in pipe.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    expected = sum(4 * (m.in_features + m.out_features) for m in lora_modules)
    assert share["unet"]["trainable"] == expected == 829_952
    assert share["text_encoder"]["trainable"] == 0 and 0.00095 < share["unet"]["share"] < 0.00096
