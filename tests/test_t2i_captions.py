"""T2I-LoRA without training: captions, the report tokenizer, truncation, parameters, prompt plans,
and the SD 2.1-base architecture built from its written-out configs."""

import math

import pandas as pd
import pytest
import torch

from support.data.labeler import label_report
from support.params import ParameterError
from support.t2i.captions import (EOW, caption_stats, clean_text, fit_caption, fit_captions, learn_bpe,
                                  record_caption, report_caption, report_text, token_count, train_caption_tokenizer)
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


def _with_limit(tokenizer, limit):
    import copy

    short = copy.deepcopy(tokenizer)
    short.model_max_length = limit
    return short


def _words(n, word="x"):
    return " ".join([word] * n)


@pytest.mark.parametrize("limit", [5, 12, 77])
def test_a_caption_of_exactly_the_limit_is_kept_and_one_token_more_is_cut(tokenizer, limit):
    tok = tokenizer if limit == 77 else _with_limit(tokenizer, limit)
    exact, over = _words(limit - 2), _words(limit - 1)       # "x" is one token; start and end make 2 more
    assert token_count(tok, exact) == limit and token_count(tok, over) == limit + 1
    assert fit_caption(exact, tok) == (exact, False)
    assert fit_caption(over, tok) == (exact, True)
    assert fit_caption(_words(3 * limit), tok) == (exact, True)
    assert fit_caption(_words(limit - 3), tok) == (_words(limit - 3), False)
    stats = caption_stats([exact, over, _words(limit - 3), exact + " " + exact], tok)
    assert stats == {"n": 4, "truncated": 2, "share_truncated": 0.5, "token_limit": limit,
                     "mean_tokens": (limit + limit + 1 + limit - 1 + 2 * limit - 2) / 4,
                     "max_tokens": 2 * limit - 2}
    assert caption_stats([exact], tok)["truncated"] == 0 and caption_stats([over], tok)["truncated"] == 1
    fitted, stats = fit_captions([over, exact, _words(limit + 5)], tok)
    assert fitted == [exact, exact, exact] and stats["truncated"] == 2 and stats["n"] == 3


def test_truncation_cuts_at_the_last_whole_token_that_fits(tokenizer):
    tok = _with_limit(tokenizer, 8)          # 6 tokens of content
    caption = "pleural effusion x Épanchement x"          # 1 + 1 + 1 + 10 + 1 content tokens
    assert fit_caption(caption, tok) == ("pleural effusion x Ép", True)   # É is 2 byte tokens, p one
    # a character of several byte tokens is kept whole or not at all
    assert token_count(tok, "x x x 肺") == 8 and fit_caption("x x x 肺", tok) == ("x x x 肺", False)
    assert fit_caption("x x x x 肺", tok) == ("x x x x", True)       # 2 of 肺's 3 byte tokens would fit
    assert fit_caption("x x x x 肺", _with_limit(tokenizer, 7)) == ("x x x x", True)   # 1 of 3 would fit
    assert fit_caption("x x x x x É", _with_limit(tokenizer, 8)) == ("x x x x x", True)   # 1 of É's 2
    assert fit_caption("x x x 肺肺", tok) == ("x x x 肺", True)
    # the cut is a prefix of the caption: leading space kept, trailing space dropped
    assert fit_caption("  x x x x x x x", tok) == ("  x x x x x x", True)
    assert fit_caption("x x x x x x   x", tok) == ("x x x x x x", True)
    # nothing fits: the empty caption
    assert fit_caption("x", _with_limit(tokenizer, 2)) == ("", True)
    assert fit_caption("肺 x", _with_limit(tokenizer, 3)) == ("", True)
    assert fit_caption("x 肺", _with_limit(tokenizer, 3)) == ("x", True)
    assert caption_stats([], tok) == {"n": 0, "truncated": 0, "share_truncated": 0.0, "token_limit": 8,
                                      "mean_tokens": 0.0, "max_tokens": 0}


def test_lengths_ignore_the_truncation_and_padding_of_an_earlier_call(tokenizer):
    long = _words(100)
    tokenizer([long], truncation=True, max_length=77)
    assert token_count(tokenizer, long) == 102
    assert fit_caption(long, tokenizer) == (_words(75), True)
    tokenizer([long], truncation=True, max_length=77)
    assert caption_stats([long], tokenizer)["max_tokens"] == 102
    tokenizer(["x"], padding="max_length", max_length=77)
    assert token_count(tokenizer, "x x") == 4 and caption_stats(["x"], tokenizer)["max_tokens"] == 3


def test_clean_text_and_report_text_fall_back_to_the_other_section():
    assert clean_text(None) == "" and clean_text(float("nan")) == "" and clean_text(1.5) == "1.5"
    assert clean_text("  a\n\t b  \r\nc ") == "a b c"
    assert clean_text("cafe\u0301") == "caf\u00e9"                  # NFC: one code point
    assert report_text("F.", "I.") == "F. I."
    assert report_text("F.", "I.", "impression+findings") == "I. F."
    assert report_text("F.", "I.", "findings") == "F." and report_text("F.", "I.", "impression") == "I."
    assert report_text("", "I.", "findings") == "I." and report_text("F.", " ", "impression") == "F."
    assert report_text("", "I.", "findings+impression") == "I." and report_text("F.", "", "impression+findings") == "F."
    assert report_text(None, None, "impression") == "" and report_text("", "", "findings+impression") == ""
    for bad in ("finding", "findings+", "findings,impression", "", "Impression"):
        with pytest.raises(ValueError, match="text_source"):
            report_text("F.", "I.", bad)


def test_captions_of_records_and_templates():
    assert report_caption("F.", "I.", "  ") == "view_position = unknown. modality = CR. F. I."
    assert report_caption("F.", "I.", None, template="{view}|{text}") == "unknown|F. I."
    with pytest.raises(ParameterError, match=r"^caption template: '\{view\} \{report\}' uses \['report'\]"):
        report_caption("F.", "I.", "PA", template="{view} {report}")
    assert record_caption({"findings": "F.", "impression": "I.", "view": "AP"}) == \
        "view_position = AP. modality = CR. F. I."
    assert record_caption({"impression": "I."}) == "view_position = unknown. modality = CR. I."
    assert record_caption({"findings": "F."}, "{text} ({view})") == "F. (unknown)"
    assert record_caption({"view": "PA"}) == "view_position = PA. modality = CR."
    assert record_caption({"findings": "F.", "impression": "I.", "view": "PA"}, "{text}", "impression") == "I."


def _naive_bpe(word_counts, num_merges, min_count=2):
    """BPE as defined: recount every adjacent pair, merge the most frequent (ties: smallest pair)."""
    words = {w: list(w[:-1]) + [w[-1] + EOW] for w in word_counts if w}
    merges = []
    while len(merges) < num_merges:
        counts = {}
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + word_counts[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_count:
            break
        merges.append(best)
        for w, symbols in words.items():
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[w] = out
    return merges


@pytest.mark.parametrize("min_count", [0, 1, 2, 3, 7])
def test_bpe_equals_the_definition_on_corpora(min_count):
    import random

    rng = random.Random(min_count)
    corpora = [
        {"low": 5, "lower": 2, "newest": 6, "widest": 3},
        {"aaaa": 3, "aaa": 2, "aa": 4, "a": 1, "abab": 2, "": 9},
        {w: c for w, c in zip("the lungs are clear no pleural effusion or pneumothorax seen".split(),
                              [9, 3, 5, 2, 7, 4, 4, 6, 2, 1])},
        {"".join(rng.choice("abc") for _ in range(rng.randint(1, 7))): rng.randint(1, 6) for _ in range(40)},
    ]
    for words in corpora:
        for n in (0, 1, 2, 5, 500):
            assert learn_bpe(words, n, min_count) == _naive_bpe(words, n, min_count), (words, n)
    # a pair seen exactly min_count times is merged, one seen fewer times is not
    assert learn_bpe({"ab": 3}, 5, 3) == [("a", "b</w>")] and learn_bpe({"ab": 2}, 5, 3) == []
    assert learn_bpe({"ab": 1, "cd": 1}, 5) == [] and learn_bpe({"ab": 1, "cd": 1}, 5, 1) == [("a", "b</w>"),
                                                                                            ("c", "d</w>")]
    assert learn_bpe({"ab": 2}, 5) == [("a", "b</w>")]            # the default min_count is 2


def test_tokenizer_vocabulary_has_clips_layout_and_the_asked_size(tokenizer):
    import json

    from tokenizers.pre_tokenizers import ByteLevel

    small = train_caption_tokenizer(CORPUS, vocab_size=600, max_length=13)
    assert len(small) == 600 and small.model_max_length == 13
    assert len(tokenizer) <= 640 and tokenizer.model_max_length == 77
    assert train_caption_tokenizer(CORPUS, vocab_size=600).model_max_length == 77
    alphabet = sorted(ByteLevel.alphabet())
    assert len(alphabet) == 256
    vocab = small.get_vocab()
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 1)
    assert (small.bos_token_id, small.eos_token_id) == (0, 1)
    assert [vocab[a] for a in alphabet] == list(range(2, 258))
    assert [vocab[a + EOW] for a in alphabet] == list(range(258, 514))
    merges = json.loads(small.backend_tokenizer.to_str())["model"]["merges"]
    assert len(merges) == 600 - 514
    assert [vocab["".join(m)] for m in merges] == list(range(514, 600))
    assert small("Effusion").input_ids == small("effusion").input_ids == [0, vocab["effusion" + EOW], 1]
    assert len(train_caption_tokenizer(CORPUS, vocab_size=515)) == 515
    with pytest.raises(ValueError, match="vocab_size 514: expected at least 515"):
        train_caption_tokenizer(CORPUS, vocab_size=514)
    for empty in ([], ["", "  \n ", None]):
        with pytest.raises(ValueError, match="corpus is empty"):
            train_caption_tokenizer(empty, vocab_size=600)
    # blank texts are left out, not counted: the same merges as without them
    padded = train_caption_tokenizer(CORPUS + ["", None], vocab_size=600, max_length=13)
    assert padded.backend_tokenizer.to_str() == small.backend_tokenizer.to_str()


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


def _tiny_unet_and_text_encoder():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                                num_hidden_layers=2, vocab_size=50, max_position_embeddings=16,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet, text_encoder


def _adapted(model):
    """Names of the modules carrying a LoRA adapter, and their (rank, scale)."""
    return {n: (m.r["default"], m.scaling["default"]) for n, m in model.named_modules() if hasattr(m, "lora_A")}


def test_lora_configs_carry_rank_alpha_dropout_and_targets():
    from support.t2i.config import LoraParams
    from support.t2i.lora import text_encoder_lora_config, unet_lora_config

    params = LoraParams(rank=3, alpha=6.0, dropout=0.25, target_modules=("to_q", "to_v"), text_encoder_rank=5,
                        text_encoder_alpha=2.5, text_encoder_target_modules=("q_proj", "out_proj"))
    unet = unet_lora_config(params)
    assert (unet.r, unet.lora_alpha, unet.lora_dropout, unet.init_lora_weights) == (3, 6.0, 0.25, "gaussian")
    assert set(unet.target_modules) == {"to_q", "to_v"}
    text = text_encoder_lora_config(params)
    assert (text.r, text.lora_alpha, text.lora_dropout, text.init_lora_weights) == (5, 2.5, 0.25, "gaussian")
    assert set(text.target_modules) == {"q_proj", "out_proj"}


@pytest.mark.parametrize("with_text_encoder", [False, True])
def test_add_lora_adapts_exactly_the_targets_and_trains_only_the_adapters(with_text_encoder):
    from support.t2i.config import LoraParams
    from support.t2i.lora import add_lora, lora_parameters, trainable_parameters

    unet, text_encoder = _tiny_unet_and_text_encoder()
    params = LoraParams(rank=3, alpha=6.0, target_modules=("to_q", "to_out.0"), text_encoder=with_text_encoder,
                        text_encoder_rank=2, text_encoder_alpha=1.0, text_encoder_target_modules=("q_proj",))
    targets = [n for n, _ in unet.named_modules() if n.endswith((".to_q", ".to_out.0"))]
    text_targets = [n for n, _ in text_encoder.named_modules() if n.endswith(".q_proj")]
    assert len(targets) == 16 and len(text_targets) == 2
    sample, t, context = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 5, 8)
    ids = torch.tensor([[0, 5, 7, 1]])
    with torch.no_grad():
        before = unet(sample, t, context).sample
        text_before = text_encoder(ids).last_hidden_state
    add_lora(unet, text_encoder, params)
    assert _adapted(unet) == {n: (3, 2.0) for n in targets}               # scale alpha / rank
    assert _adapted(text_encoder) == ({n: (2, 0.5) for n in text_targets} if with_text_encoder else {})
    with torch.no_grad():                                                  # B = 0: the new adapter changes nothing
        assert torch.equal(unet(sample, t, context).sample, before)
        assert torch.equal(text_encoder(ids).last_hidden_state, text_before)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sorted({n.rsplit(".lora_", 1)[0] for n in trainable}) == sorted(targets)
    text_trainable = [n for n, p in text_encoder.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n in text_trainable)
    assert len(text_trainable) == (2 * len(text_targets) if with_text_encoder else 0)
    # the optimizer gets exactly the adapter tensors; the counts are theirs
    chosen = lora_parameters(unet, None, text_encoder)
    expected = [p for p in unet.parameters() if p.requires_grad] + [p for p in text_encoder.parameters() if p.requires_grad]
    assert len(chosen) == len(expected) and all(a is b for a, b in zip(chosen, expected))
    modules = dict(unet.named_modules())
    n_unet = sum(3 * (modules[n].in_features + modules[n].out_features) for n in targets)
    n_text = 2 * (8 + 8) * len(text_targets) if with_text_encoder else 0
    counts = trainable_parameters(unet=unet, text_encoder=text_encoder)
    total_unet, total_text = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in text_encoder.parameters())
    assert counts["unet"] == {"trainable": n_unet, "total": total_unet, "share": n_unet / total_unet}
    assert counts["text_encoder"] == {"trainable": n_text, "total": total_text, "share": n_text / total_text}
    assert counts["all"] == {"trainable": n_unet + n_text, "total": total_unet + total_text,
                             "share": (n_unet + n_text) / (total_unet + total_text)}


def test_lora_targets_that_match_nothing_and_empty_counts():
    from support.t2i.config import LoraParams
    from support.t2i.lora import add_lora, lora_parameters, trainable_parameters

    unet, text_encoder = _tiny_unet_and_text_encoder()
    with pytest.raises(ValueError, match="to_nothing"):
        add_lora(unet, text_encoder, LoraParams(target_modules=("to_nothing",)))
    assert trainable_parameters(empty=torch.nn.Identity()) == {
        "empty": {"trainable": 0, "total": 0, "share": 0.0}, "all": {"trainable": 0, "total": 0, "share": 0.0}}
    frozen = torch.nn.Linear(2, 3).requires_grad_(False)
    half = torch.nn.Sequential(torch.nn.Linear(2, 3), frozen)
    assert trainable_parameters(half=half, none=torch.nn.Identity())["all"] == {"trainable": 9, "total": 18,
                                                                              "share": 0.5}
    assert lora_parameters(frozen, None) == [] and len(lora_parameters(half)) == 2


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
