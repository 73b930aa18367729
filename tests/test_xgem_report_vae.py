"""XGeM's report autoencoder (Optimus): the KL schedule and free bits, a decoder that reads the latent
through both paths, the stage on the shared trainer (learns, resumes bit for bit, skips and counts
empty reports), the saved model and its checks, local BERT/GPT-2 folders, and the metrics."""

import json
import math
import shutil

import pandas as pd
import pytest
import torch

from sabotage import Sabotaged
from support.core import trainer
from support.core.config import LoopConfig
from support.core.tokenizer import train_wordpiece
from support.data.adapters import load_dataset
from support.io import load_state_dict
from support.phantom import PhantomConfig, generate_phantom
from support.xgem.config import PROFILES, ReportVAEConfig
from support.xgem.data import Reports, Studies
from support.xgem.report_vae import (Optimus, ReportTokenizers, ReportVAERun, ReportVAETask, free_bits_kl,
                                     gaussian_kl, kl_weight, label_agreement, load_report_vae,
                                     reconstruction_metrics, save_report_vae, train_report_vae)

torch.set_num_threads(1)

TEXTS = ["no pneumothorax.", "mild cardiomegaly.", "small left pleural effusion.", "the lungs are clear."]
TINY = ReportVAEConfig(latent_dim=8, max_tokens=16, vocab_size=200, hidden_size=32, layers=1, heads=2,
                       intermediate_size=64)


class TextStudies:
    """What :class:`Reports` reads of :class:`Studies`, for texts without images."""

    def __init__(self, texts):
        self.records = pd.DataFrame({"report": list(texts), "study_id": range(len(texts))})

    @property
    def has_report(self):
        return self.records["report"] != ""


def tiny_model(seed: int = 0, config: ReportVAEConfig = TINY) -> Optimus:
    torch.manual_seed(seed)
    return Optimus(config, train_wordpiece(TEXTS, config.vocab_size)).eval()


def loop(**overrides) -> LoopConfig:
    base = dict(max_steps=6, batch_size=2, learning_rate=3e-3, optimizer="adamw", cpu=True, mixed_precision="no",
                log_every=1, checkpoint_every=2, checkpoints_total_limit=None)
    return LoopConfig(**{**base, **overrides})


def fit(out, texts=TEXTS, dataset=None, **overrides):
    tokenizer = train_wordpiece(TEXTS, TINY.vocab_size)
    task = ReportVAETask(TINY, dataset if dataset is not None else Reports(TextStudies(texts)), tokenizer)
    return task, trainer.fit(task, ReportVAERun(TINY, loop(**overrides)), out, progress=False)


# ------------------------------------------------------------------------------ KL
def test_kl_weight_is_zero_then_a_linear_ramp_then_one():
    assert [kl_weight(s, 100) for s in (0, 49, 50, 62.5, 75, 99)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert kl_weight(56, 100) == pytest.approx(0.24)
    assert kl_weight(1, 10, zero_share=0.2, ramp_share=0.4) == 0.0 and kl_weight(4, 10, 0.2, 0.4) == 0.5
    assert kl_weight(0, 10, zero_share=0.0, ramp_share=0.0) == 1.0       # no warm-up at all
    assert kl_weight(9, 10, zero_share=1.0, ramp_share=0.0) == 0.0       # a plain autoencoder


def test_free_bits_hold_each_dimension_at_the_floor():
    mean, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    assert torch.allclose(gaussian_kl(mean, logvar), torch.tensor([[0.5, 0.5 * (1.0 - math.log(2.0))]]))
    kl = torch.tensor([[1.0, 5.0, 8.0], [3.0, 7.0, 2.0]])                # batch means 2, 6, 5
    assert float(free_bits_kl(kl, 3.0)) == 3.0 + 6.0 + 5.0                 # under the floor: the floor
    assert float(free_bits_kl(kl, 0.0)) == 13.0
    grad = torch.tensor([[1.0, 5.0]], requires_grad=True)
    free_bits_kl(grad, 3.0).backward()
    assert grad.grad.tolist() == [[0.0, 1.0]]                             # no pull under the floor


def test_loss_is_reconstruction_plus_weighted_free_bits_with_noise_from_the_step_generator():
    model = tiny_model()
    batch = model.tokenizers.batch(TEXTS, TINY.max_tokens)
    args = (batch["enc_ids"], batch["enc_mask"], batch["dec_ids"], batch["dec_mask"])
    with torch.no_grad():
        loss, parts = model(*args, torch.Generator().manual_seed(3), 0.25)
        mean, logvar = model.encode(batch["enc_ids"], batch["enc_mask"])
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
        recon = model.reconstruction_loss(mean + (0.5 * logvar).exp() * noise, batch["dec_ids"], batch["dec_mask"])
        kl = gaussian_kl(mean, logvar)
        again, _ = model(*args, torch.Generator().manual_seed(3), 0.25)
        other, _ = model(*args, torch.Generator().manual_seed(4), 0.25)
    assert torch.allclose(parts["recon"], recon) and torch.allclose(parts["kl"], kl.sum(1).mean())
    assert torch.allclose(loss, recon + 0.25 * free_bits_kl(kl, TINY.free_bits)) and parts["kl_weight"] == 0.25
    assert torch.equal(loss, again) and not torch.equal(loss, other)


def test_reconstruction_is_summed_over_tokens_and_averaged_over_reports_without_padding():
    model = tiny_model()
    batch = model.tokenizers.batch(TEXTS[1:3], TINY.max_tokens)
    assert (batch["dec_mask"] == 0).any()                                 # the shorter report is padded
    latent = torch.randn(2, TINY.latent_dim, generator=torch.Generator().manual_seed(0))
    alone = []
    with torch.no_grad():
        pair = model.reconstruction_loss(latent, batch["dec_ids"], batch["dec_mask"])
        for i, text in enumerate(TEXTS[1:3]):
            one = model.tokenizers.batch([text], TINY.max_tokens)
            logits = model.decoder_logits(latent[i:i + 1], one["dec_ids"][:, :-1], one["dec_mask"][:, :-1])
            alone.append(torch.nn.functional.cross_entropy(logits[0], one["dec_ids"][0, 1:], reduction="sum"))
    assert torch.allclose(pair, (alone[0] + alone[1]) / 2, atol=1e-5)


# ------------------------------------------------------------------------------ the decoder reads the latent
def test_both_latent_paths_reach_the_logits_and_decoding_matches_teacher_forcing():
    model = tiny_model()
    batch = model.tokenizers.batch(TEXTS, TINY.max_tokens)
    ids, mask = batch["dec_ids"], batch["dec_mask"]
    latent = torch.randn(len(TEXTS), TINY.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.decoder_logits(latent, ids, mask)
        assert not torch.allclose(base, model.decoder_logits(latent.flip(0), ids, mask))
        for projection in (model.embedding, model.memory):
            saved = {k: v.clone() for k, v in projection.state_dict().items()}
            for p in projection.parameters():
                p.zero_()
            assert not torch.allclose(base, model.decoder_logits(latent, ids, mask), atol=1e-4), projection
            projection.load_state_dict(saved)
        # one token at a time through the cache gives the teacher-forced logits
        n = int(mask[2].sum())
        cache, one = model.memory_cache(latent[2:3]), torch.ones(1, 1, dtype=torch.long)
        steps = torch.cat([model.decoder_logits(latent[2:3], ids[2:3, i:i + 1], one, cache) for i in range(n)], 1)
    assert torch.allclose(steps, base[2:3, :n], atol=1e-5)
    assert model.decode(latent) == model.decode(latent) and len(model.decode(latent, 3)) == len(TEXTS)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """100 updates on the four texts, all in each batch; the stage's export in ``out``."""
    out = tmp_path_factory.mktemp("report_vae")
    task, history = fit(out, max_steps=100, batch_size=4, learning_rate=1e-2, checkpoint_every=100)
    return out, task.network.eval(), history


def test_the_decoder_writes_each_report_back_from_its_latent(learned):
    _, model, history = learned
    assert history["loss/recon"][-1] < 0.2 * history["loss/recon"][0]
    assert history["loss/kl_weight"][49] == 0.0 and history["loss/kl_weight"][-1] == 1.0
    batch = model.tokenizers.batch(TEXTS, TINY.max_tokens)
    with torch.no_grad():
        mean, _ = model.encode(batch["enc_ids"], batch["enc_mask"])
        right = model.reconstruction_loss(mean, batch["dec_ids"], batch["dec_mask"])
        shuffled = model.reconstruction_loss(mean.roll(1, 0), batch["dec_ids"], batch["dec_mask"])
    assert model.decode(mean) == TEXTS
    assert float(right) < 0.25 * float(shuffled)
    metrics = reconstruction_metrics(model, model.tokenizers, TEXTS, batch_size=3)
    assert metrics["bleu4"] == pytest.approx(1.0) and metrics["bleu1"] == pytest.approx(1.0)
    assert metrics["label_agreement"] == 1.0 and metrics["label_pairs"] == 5 and metrics["reason"] == ""


def test_the_exported_model_loads_back_and_a_mismatched_folder_is_named(learned, tmp_path):
    out, model, _ = learned
    loaded, tokenizers = load_report_vae(out)
    batch = tokenizers.batch(TEXTS, TINY.max_tokens)
    latent = torch.randn(len(TEXTS), TINY.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.decoder_logits(latent, batch["dec_ids"], batch["dec_mask"]),
                           loaded.decoder_logits(latent, batch["dec_ids"], batch["dec_mask"]))
        assert torch.equal(model.encode(batch["enc_ids"], batch["enc_mask"])[0],
                           loaded.encode(batch["enc_ids"], batch["enc_mask"])[0])
    assert json.loads((out / "config.json").read_text())["report_vae"]["latent_dim"] == TINY.latent_dim

    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((wrong / "config.json").read_text())
    meta["report_vae"]["hidden_size"] = 64
    (wrong / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{wrong}: model.safetensors does not fit.*of another shape"):
        load_report_vae(wrong)
    with pytest.raises(FileNotFoundError, match="not a report VAE folder"):
        load_report_vae(tmp_path)


# ------------------------------------------------------------------------------ the stage
def test_resume_after_a_crash_is_bit_identical(tmp_path):
    # 6 updates of 2 reports: the KL weight is 0 over updates 1-4 (the ramp starts at 0), 2/3, then 1
    _, history_a = fit(tmp_path / "a")
    assert history_a["loss/kl_weight"] == [0.0, 0.0, 0.0, 0.0, pytest.approx(2 / 3), 1.0]
    # no look at item 0 before training here: reads 1-8 are updates 1-4, read 10 is in update 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "b", dataset=Sabotaged(Reports(TextStudies(TEXTS)), after=8, mode="crash", key="report"))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())[-1] == "checkpoint-00000004"
    _, history_b = fit(tmp_path / "b")
    for key in ("loss", "loss/recon", "loss/kl", "loss/kl_weight"):
        assert history_b[key] == history_a[key], key
    a, b = (load_state_dict(tmp_path / run / "model.safetensors") for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=8, image_size=32, seed=5, lateral_share=0.3, text_share=0.0),
                     workers=1, progress=False)
    return load_dataset("mimic-cxr-jpg", root)[0]


def test_the_stage_skips_and_counts_empty_reports(studies, tmp_path):
    records = studies.copy()
    frontal = records.index[records["view"].isin(["PA", "AP"])]
    records.loc[frontal[:2], ["findings", "impression"]] = ["", ""]
    triplets = Studies(records, size=32)
    history = train_report_vae(PROFILES["test"], triplets, tmp_path / "report_vae", progress=False)
    assert history["skipped_empty_reports"] == 2 and history["n_reports"] == len(triplets) - 2
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()          # shared with the contrastive stage
    model, tokenizers = load_report_vae(tmp_path / "report_vae")
    texts = Reports(triplets).texts[:3]
    metrics = reconstruction_metrics(model, tokenizers, texts, batch_size=2)
    assert metrics["n_reports"] == 3 and 0.0 <= metrics["bleu1"] <= 1.0 and metrics["reason"] == ""

    records.loc[frontal, ["findings", "impression"]] = ["", ""]
    with pytest.raises(ValueError, match=rf"none of the {len(triplets)} studies has report text \({len(triplets)} "):
        train_report_vae(PROFILES["test"], Studies(records, size=32), tmp_path / "empty", progress=False)


# ------------------------------------------------------------------------------ local folders
def gpt2_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def local_folders(tmp_path_factory):
    """A tiny local BERT and GPT-2, each with its own tokenizer (GPT-2's without a pad token)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("local")
    bert_tok, gpt_tok = train_wordpiece(TEXTS, 200), gpt2_tokenizer(TEXTS)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt_tok), n_positions=64, n_embd=24, n_layer=2, n_head=2,
                               bos_token_id=gpt_tok.eos_token_id, eos_token_id=gpt_tok.eos_token_id)
                    ).save_pretrained(root / "gpt2")
    bert_tok.save_pretrained(root / "bert")
    gpt_tok.save_pretrained(root / "gpt2")
    return root


def test_local_bert_and_gpt2_folders_with_their_own_tokenizers(local_folders, tmp_path):
    from support.core.tokenizer import load_tokenizer

    config = ReportVAEConfig(bert_path=str(local_folders / "bert"), gpt2_path=str(local_folders / "gpt2"),
                             latent_dim=8, max_tokens=16).validate()
    tokenizers = ReportTokenizers(load_tokenizer(config.bert_path), load_tokenizer(config.gpt2_path))
    model = Optimus(config, tokenizers).eval()
    saved = load_state_dict(local_folders / "bert" / "model.safetensors")
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"])
    assert model.decoder.config.n_embd == 24 and model.memory.out_features == 2 * 2 * 24

    batch = tokenizers.batch(TEXTS, config.max_tokens)
    eos = tokenizers.decoder.eos_token_id
    assert batch["enc_ids"][0, 0] == tokenizers.encoder.cls_token_id and not batch["dec_ids"].equal(batch["enc_ids"])
    assert batch["dec_ids"][0, 0] == eos and (batch["dec_ids"][batch["dec_mask"] == 0] == eos).all()
    ends = batch["dec_mask"].sum(1) - 1                                   # the closing end token is a target
    assert (batch["dec_ids"][torch.arange(len(TEXTS)), ends] == eos).all()
    assert tokenizers.text(batch["dec_ids"][1, 1:int(ends[1])].tolist()) == TEXTS[1]

    loss, _ = model(*batch.values(), torch.Generator().manual_seed(0), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and model.memory.weight.grad.abs().sum() > 0
    folder = save_report_vae(model, tmp_path / "saved")
    assert not (folder / "tokenizer").exists()                           # the local folders keep theirs
    loaded, _ = load_report_vae(folder)
    latent = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    assert loaded.decode(latent, 5) == model.decode(latent, 5)

    swapped = ReportVAEConfig(bert_path=config.gpt2_path, gpt2_path=config.bert_path, latent_dim=8, max_tokens=16)
    with pytest.raises(ValueError, match=rf"bert_path {config.gpt2_path}: holds a 'gpt2' model, expected 'bert'"):
        Optimus(swapped, ReportTokenizers(tokenizers.decoder, tokenizers.encoder))


# ------------------------------------------------------------------------------ metrics
def test_label_agreement_counts_the_findings_the_source_mentions():
    sources = ["mild cardiomegaly. no pleural effusion.", "no pneumothorax."]
    decoded = ["mild cardiomegaly.", "heart size is normal."]
    # source 1: cardiomegaly 1 (kept), effusion 0 (lost); source 2: no finding 1 (kept), pneumothorax 0 (lost);
    # the decoded "cardiomegaly 0" of report 2 is not a pair: its source does not mention it
    assert label_agreement(sources, decoded) == (0.5, 4)
    assert label_agreement(sources, sources) == (1.0, 4)
    # "no finding" is a label of any report that names nothing abnormal; empty sources name nothing
    assert label_agreement(["the patient is here."], ["mild cardiomegaly."]) == (0.0, 1)
    agreement, pairs = label_agreement(["", ""], ["mild cardiomegaly.", ""])
    assert math.isnan(agreement) and pairs == 0


def test_too_few_reports_give_a_reason_not_a_number():
    metrics = reconstruction_metrics(tiny_model(), None, TEXTS[:1])
    assert metrics["reason"].startswith("too few samples: 1 report") and math.isnan(metrics["bleu4"])
    assert math.isnan(metrics["label_agreement"]) and metrics["label_pairs"] == 0
