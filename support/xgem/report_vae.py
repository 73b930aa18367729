"""XGeM stage 2: the report autoencoder, Optimus (Li et al. 2020) as XGeM uses it.

A BERT encoder reads ``[CLS] report [SEP]``; its pooled ``[CLS]`` state gives the mean and the
log-variance of a Gaussian latent. A GPT-2 decoder writes the report back from a sample of it, fed
the latent twice, as Optimus does:

- as an added embedding: ``latent -> Linear -> hidden`` added to every input token embedding;
- as memory: ``latent -> Linear -> layers * 2 * hidden``, one extra key/value position per layer
  (given to GPT-2 as its ``past_key_values``), which every token attends to.

The loss is the teacher-forced reconstruction (summed over tokens, averaged over reports) plus the
KL to N(0, I) under a schedule (0 for the first half of the updates, a linear ramp to 1 over the
next quarter, then 1) and free bits per latent dimension (Optimus' ``dim_target_kl``).

Without local folders both networks are built from :class:`~support.xgem.config.ReportVAEConfig`'s
sizes over one WordPiece tokenizer trained on the reports (``[CLS]`` begins a report, ``[SEP]`` ends
it); with them (``full``), BERT and GPT-2 are read from ``bert_path`` and ``gpt2_path`` with their
own tokenizers (GPT-2's end-of-text token begins, ends and pads a report).

From a notebook: :func:`train_report_vae`, then :func:`load_report_vae` and
:func:`reconstruction_metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from support.core import trainer
from support.core.config import LoopConfig, config_dict
from support.xgem.config import ReportVAEConfig, XGeMConfig
from support.xgem.data import Reports, Studies
from support.xgem.text import TOKENIZER_DIR, special_ids, token_batch

WEIGHTS = "model.safetensors"
CONFIG_JSON = "config.json"          # {"report_vae": ...} (the trainer's own config.json of the stage)


# ------------------------------------------------------------------------------ tokens
@dataclasses.dataclass
class ReportTokenizers:
    """The encoder's and the decoder's tokenizers: one trained tokenizer for both, or a local BERT's
    and a local GPT-2's."""

    encoder: Any
    decoder: Any

    @classmethod
    def of(cls, tokenizer) -> "ReportTokenizers":
        """A pair as is, or one tokenizer serving both sides."""
        return tokenizer if isinstance(tokenizer, cls) else cls(tokenizer, tokenizer)

    @property
    def shared(self) -> bool:
        return self.encoder is self.decoder

    def batch(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """``enc_ids``, ``enc_mask`` (the encoder's input), ``dec_ids``, ``dec_mask`` (the decoder's target)."""
        enc_ids, enc_mask = token_batch(self.encoder, texts, max_tokens)
        dec_ids, dec_mask = (enc_ids, enc_mask) if self.shared else token_batch(self.decoder, texts, max_tokens)
        return {"enc_ids": enc_ids, "enc_mask": enc_mask, "dec_ids": dec_ids, "dec_mask": dec_mask}

    def text(self, ids: Sequence[int]) -> str:
        return self.decoder.decode(list(ids), skip_special_tokens=True).strip()


def report_tokenizers(config: ReportVAEConfig, texts: Sequence[str], folder: str | os.PathLike) -> ReportTokenizers:
    """The local BERT's and GPT-2's tokenizers, or the reports' tokenizer kept in ``folder`` (trained
    on ``texts`` when the folder holds none; shared with the contrastive stage)."""
    from support.core.tokenizer import load_tokenizer
    from support.xgem.text import report_tokenizer

    if config.bert_path:
        return ReportTokenizers(load_tokenizer(config.bert_path), load_tokenizer(config.gpt2_path))
    return ReportTokenizers.of(report_tokenizer(texts, config.vocab_size, folder))


def collate_reports(items: list[dict[str, Any]], tokenizers: ReportTokenizers, max_tokens: int) -> dict[str, Any]:
    """A batch of :class:`~support.xgem.data.Reports` items as token tensors (and their indices)."""
    batch = tokenizers.batch([item["report"] for item in items], max_tokens)
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    return batch


# ------------------------------------------------------------------------------ KL
def kl_weight(step: int | float, max_steps: int, zero_share: float = 0.5, ramp_share: float = 0.25) -> float:
    """The KL weight at update ``step`` of ``max_steps``: 0 for the first ``zero_share`` of the
    updates, a linear ramp from 0 to 1 over the next ``ramp_share``, then 1."""
    start, ramp = zero_share * max_steps, ramp_share * max_steps
    if step < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (step - start) / ramp)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per report and latent dimension, (B, D)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1.0)


def free_bits_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Optimus' ``dim_target_kl``: each dimension's KL averaged over the batch, held at no less than
    ``free_bits`` (a dimension under the floor adds the floor and no gradient), summed."""
    return kl.mean(0).clamp(min=free_bits).sum()


# ------------------------------------------------------------------------------ model
def _local_config(path: str, kind: str, field: str):
    """The transformers config of a local folder, which must hold a ``kind`` model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"report_vae.{field} {path}: not a local transformers model folder ({error})") from None
    if config.model_type != kind:
        raise ValueError(f"report_vae.{field} {path}: holds a {config.model_type!r} model, expected {kind!r}")
    return config


def _check_vocab(path: str, field: str, model_vocab: int, tokenizer) -> None:
    if len(tokenizer) > model_vocab:
        raise ValueError(f"report_vae.{field} {path}: the tokenizer has {len(tokenizer)} tokens, the model's "
                         f"embeddings only {model_vocab}")


def build_encoder(config: ReportVAEConfig, tokenizer, pretrained: bool) -> nn.Module:
    """BERT: the local one (its weights unless ``pretrained`` is False), else one built from the sizes."""
    from transformers import BertConfig, BertModel

    if config.bert_path:
        local = _local_config(config.bert_path, "bert", "bert_path")
        _check_vocab(config.bert_path, "bert_path", local.vocab_size, tokenizer)
        if pretrained:
            return BertModel.from_pretrained(config.bert_path, local_files_only=True, add_pooling_layer=True)
        return BertModel(local, add_pooling_layer=True)
    return BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                                num_hidden_layers=config.layers, num_attention_heads=config.heads,
                                intermediate_size=config.intermediate_size,
                                max_position_embeddings=config.max_tokens, pad_token_id=special_ids(tokenizer)[2]),
                     add_pooling_layer=True)


def build_decoder(config: ReportVAEConfig, tokenizer, pretrained: bool) -> nn.Module:
    """GPT-2 with its LM head: the local one (its weights unless ``pretrained`` is False), else one
    built from the sizes (one position more than ``max_tokens``: the memory comes first)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.gpt2_path:
        local = _local_config(config.gpt2_path, "gpt2", "gpt2_path")
        _check_vocab(config.gpt2_path, "gpt2_path", local.vocab_size, tokenizer)
        if pretrained:
            return GPT2LMHeadModel.from_pretrained(config.gpt2_path, local_files_only=True)
        return GPT2LMHeadModel(local)
    begin, end, pad = special_ids(tokenizer)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=config.max_tokens + 1,
                                      n_embd=config.hidden_size, n_layer=config.layers, n_head=config.heads,
                                      n_inner=config.intermediate_size, bos_token_id=begin, eos_token_id=end,
                                      pad_token_id=pad))


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode without gradients, its mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class Optimus(nn.Module):
    """BERT -> Gaussian latent -> GPT-2 fed the latent as an added embedding and as per-layer memory.

    ``tokenizers``: a :class:`ReportTokenizers` (or one tokenizer for both sides); ``pretrained``
    False builds the local folders' architectures without reading their weights (a saved model's
    weights are loaded over them)."""

    def __init__(self, config: ReportVAEConfig, tokenizers, pretrained: bool = True):
        super().__init__()
        self.config = config
        self.tokenizers = ReportTokenizers.of(tokenizers)
        self.encoder = build_encoder(config, self.tokenizers.encoder, pretrained)
        self.decoder = build_decoder(config, self.tokenizers.decoder, pretrained)
        gpt = self.decoder.config
        self.layers, self.heads, self.hidden = gpt.n_layer, gpt.n_head, gpt.n_embd
        self.to_latent = nn.Linear(self.encoder.config.hidden_size, 2 * config.latent_dim)
        self.embedding = nn.Linear(config.latent_dim, self.hidden)                   # added to every token
        self.memory = nn.Linear(config.latent_dim, self.layers * 2 * self.hidden)    # a key and a value per layer
        self.begin, self.end, _ = special_ids(self.tokenizers.decoder)

    # -- encoder
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's (mean, log-variance), each (B, latent_dim), from the pooled ``[CLS]`` state."""
        pooled = self.encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        mean, logvar = self.to_latent(pooled).chunk(2, dim=-1)
        return mean, logvar

    # -- decoder
    def memory_cache(self, latent: torch.Tensor):
        """The latent as one key/value position in front of every layer's attention (a fresh cache:
        GPT-2 appends each forward's keys to it)."""
        from transformers import DynamicCache

        head_dim = self.hidden // self.heads
        kv = self.memory(latent).view(latent.shape[0], self.layers, 2, self.heads, 1, head_dim)
        cache = DynamicCache(config=self.decoder.config)
        for layer in range(self.layers):
            cache.update(kv[:, layer, 0], kv[:, layer, 1], layer)
        return cache

    def decoder_logits(self, latent: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, cache=None) -> torch.Tensor:
        """Next-token logits (B, L, V) for ``ids`` (B, L) given ``latent``; ``cache`` continues a
        decoding (it already holds the memory and the tokens before ``ids``)."""
        cache = self.memory_cache(latent) if cache is None else cache
        embeds = self.decoder.get_input_embeddings()(ids) + self.embedding(latent).unsqueeze(1)
        seen = cache.get_seq_length()
        attention = torch.cat([mask.new_ones(mask.shape[0], seen), mask], dim=1)   # the memory is always visible
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention, past_key_values=cache, use_cache=True)
        return out.logits

    def reconstruction_loss(self, latent: torch.Tensor, dec_ids: torch.Tensor, dec_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy, summed over each report's tokens (padding
        excluded), averaged over the batch."""
        logits = self.decoder_logits(latent, dec_ids[:, :-1], dec_mask[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), dec_ids[:, 1:], reduction="none")
        return (nll * dec_mask[:, 1:].float()).sum(1).mean()

    def decode(self, latent: torch.Tensor, max_tokens: int | None = None) -> list[str]:
        """Greedy decoding of each latent (B, latent_dim) until the end token: deterministic, in eval
        mode. At most ``max_tokens`` tokens, and no more than training taught (``max_tokens - 1`` of
        the config, the end token included)."""
        limit = self.config.max_tokens - 1 if max_tokens is None else min(max_tokens, self.config.max_tokens - 1)
        with eval_mode(self):
            batch = latent.shape[0]
            cache = self.memory_cache(latent)
            token = torch.full((batch, 1), self.begin, dtype=torch.long, device=latent.device)
            ones = torch.ones_like(token)
            written: list[torch.Tensor] = []
            done = torch.zeros(batch, dtype=torch.bool, device=latent.device)
            for _ in range(limit):
                token = self.decoder_logits(latent, token, ones, cache)[:, -1].argmax(-1, keepdim=True)
                written.append(token[:, 0])
                done |= token[:, 0] == self.end
                if bool(done.all()):
                    break
        rows = torch.stack(written, 1).tolist() if written else [[] for _ in range(batch)]
        return [self.tokenizers.text(row[:row.index(self.end)] if self.end in row else row) for row in rows]

    # -- training objective
    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_ids: torch.Tensor, dec_mask: torch.Tensor,
                generator: torch.Generator, beta: float) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of a batch, reconstruction + ``beta`` * free-bits KL, and its parts (``recon``,
        the raw ``kl``, ``kl_weight``). The sample's noise is drawn from ``generator`` alone."""
        mean, logvar = self.encode(enc_ids, enc_mask)
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
        latent = mean + (0.5 * logvar).exp() * noise
        recon = self.reconstruction_loss(latent, dec_ids, dec_mask)
        kl = gaussian_kl(mean.float(), logvar.float())
        loss = recon + beta * free_bits_kl(kl, self.config.free_bits)
        return loss, {"recon": recon.detach(), "kl": kl.sum(1).mean().detach(), "kl_weight": float(beta)}


# ------------------------------------------------------------------------------ save / load
def save_report_vae(model: Optimus, folder: str | os.PathLike, train: LoopConfig | None = None) -> Path:
    """``folder/model.safetensors``, ``config.json`` (``{"report_vae": ...}``, with the ``train`` loop
    when given) and, for a trained tokenizer, ``tokenizer/``: what :func:`load_report_vae` reads."""
    from support.io import save_state_dict, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), folder / WEIGHTS)
    meta = {"report_vae": config_dict(model.config)}
    if train is not None:
        meta["train"] = config_dict(train)
    write_json_atomic(folder / CONFIG_JSON, meta)
    if not model.config.bert_path:
        model.tokenizers.encoder.save_pretrained(str(folder / TOKENIZER_DIR))
    return folder


def load_weights(model: nn.Module, path: Path, folder: Path) -> None:
    """Load ``path`` into ``model``, every weight of the same name and shape, or an error naming
    ``folder`` and what does not match."""
    from support.io import load_state_dict

    state, own = load_state_dict(path), model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = ([f"{len(missing)} weight(s) missing, e.g. {missing[:3]}"] if missing else []) + \
               ([f"{len(extra)} unknown weight(s), e.g. {extra[:3]}"] if extra else []) + \
               ([f"{len(shapes)} of another shape, e.g. {shapes[:3]}"] if shapes else [])
    if problems:
        raise ValueError(f"{folder}: {WEIGHTS} does not fit the model {CONFIG_JSON} describes ({'; '.join(problems)})")
    model.load_state_dict(state)


def load_report_vae(folder: str | os.PathLike) -> tuple[Optimus, ReportTokenizers]:
    """The model :func:`save_report_vae` (or the stage's export) wrote, in eval mode, and its
    tokenizers. A local-folder model reads the architectures and tokenizers from ``bert_path``
    and ``gpt2_path`` (which must still exist) and its weights from ``folder``."""
    from support.core.tokenizer import load_tokenizer
    from support.io import read_json
    from support.params import from_mapping

    folder = Path(folder)
    if not (folder / CONFIG_JSON).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: not a report VAE folder (expected {CONFIG_JSON} and {WEIGHTS})")
    meta = read_json(folder / CONFIG_JSON)
    if not isinstance(meta, dict) or "report_vae" not in meta:
        raise ValueError(f"{folder / CONFIG_JSON}: no 'report_vae' part")
    config = from_mapping(ReportVAEConfig, meta["report_vae"], source=str(folder / CONFIG_JSON)).validate()
    if config.bert_path:
        tokenizers = ReportTokenizers(load_tokenizer(config.bert_path), load_tokenizer(config.gpt2_path))
    else:
        tokenizers = ReportTokenizers.of(load_tokenizer(folder / TOKENIZER_DIR))
    model = Optimus(config, tokenizers, pretrained=False)
    load_weights(model, folder / WEIGHTS, folder)
    return model.eval(), tokenizers


# ------------------------------------------------------------------------------ training
@dataclasses.dataclass
class ReportVAERun:
    """What the trainer runs: the model part (the resume key) and its loop."""

    report_vae: ReportVAEConfig
    train: LoopConfig

    def validate(self) -> "ReportVAERun":
        self.report_vae.validate()
        self.train.validate()
        return self


class ReportVAETask(trainer.Task):
    """Optimus on :class:`~support.xgem.data.Reports`."""

    name = "xgem-report-vae"

    def __init__(self, config: ReportVAEConfig, reports: Reports, tokenizers):
        self.config, self.train_set = config, reports
        self.tokenizers = ReportTokenizers.of(tokenizers)
        self.collate_fn = functools.partial(collate_reports, tokenizers=self.tokenizers, max_tokens=config.max_tokens)

    def setup(self) -> trainer.Parts:
        self.network = Optimus(self.config, self.tokenizers)
        return trainer.Parts(models=[self.network])

    def loss(self, batch: dict[str, torch.Tensor], step: trainer.Step):
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        beta = kl_weight(step.step, self.ctx.max_steps, self.config.kl_zero_share, self.config.kl_ramp_share)
        return self.models[0](batch["enc_ids"], batch["enc_mask"], batch["dec_ids"], batch["dec_mask"],
                              step.generator, beta)

    def describe(self) -> dict[str, Any]:
        return {"n_reports": len(self.train_set), "skipped_empty_reports": int(getattr(self.train_set, "skipped", 0)),
                "parameters": sum(p.numel() for p in self.network.parameters()),
                "encoder": self.config.bert_path or "built", "decoder": self.config.gpt2_path or "built"}

    def export(self) -> None:
        network = self.ctx.accelerator.unwrap_model(self.models[0])
        save_report_vae(network, self.ctx.output_dir, self.ctx.loop)


def train_report_vae(config: XGeMConfig, studies: Studies, output_dir: str | os.PathLike, num_processes: int = 1,
                     progress: bool = True) -> dict:
    """Train the report VAE on the non-empty reports of ``studies`` under ``config.report_vae`` and
    ``config.loops.report_vae``; resumable in ``output_dir``. The reports' tokenizer is kept in
    ``output_dir.parent/tokenizer`` (shared with the contrastive stage). Writes the trainer's
    folders and the model (:func:`load_report_vae` reads ``output_dir``); returns the history."""
    config = config.validate()
    reports = Reports(studies)
    if not len(reports):
        raise ValueError(f"XGeM report VAE: none of the {len(studies)} studies has report text "
                         f"({reports.skipped} without findings or impression)")
    out = Path(output_dir)
    tokenizers = report_tokenizers(config.report_vae, reports.texts, out.parent / TOKENIZER_DIR)
    run = ReportVAERun(config.report_vae, config.loops.report_vae)
    return trainer.launch(ReportVAETask(config.report_vae, reports, tokenizers), run, out, num_processes,
                          progress=progress)


# ------------------------------------------------------------------------------ evaluation
def label_agreement(sources: Sequence[str], decoded: Sequence[str]) -> tuple[float, int]:
    """(agreement, pairs): over the (report, finding) pairs the labeler
    (:func:`~support.data.labeler.label_report`) gives a label in the source report (1, 0 or -1;
    NaN is "not mentioned"; "No Finding" is 1 for any report that names nothing abnormal), the
    share whose label in the decoded report is the same value (a finding the decoded report does
    not mention disagrees; findings only the decoded report mentions are not counted). NaN when no
    source report has any label (all empty)."""
    from support.data.labeler import label_report

    agree = pairs = 0
    for source, text in zip(sources, decoded):
        wanted, got = label_report(source), label_report(text)
        for finding, value in wanted.items():
            if not math.isnan(value):
                pairs += 1
                agree += got[finding] == value
    return (agree / pairs if pairs else math.nan), pairs


def reconstruction_metrics(model: Optimus, tokenizer, texts: Sequence[str], batch_size: int = 16) -> dict[str, Any]:
    """How well each report survives encoding (posterior mean) and greedy decoding; ``tokenizer``
    is the model's (None: ``model.tokenizers``).

    - ``bleu1`` .. ``bleu4``, ``rougeL``: :func:`~support.xgem.evaluate.text_scores` of the decoded
      reports against their sources;
    - ``label_agreement`` over ``label_pairs``: see :func:`label_agreement`;
    - ``n_reports``, and ``reason``: why the metrics are NaN (fewer than 2 reports), else "".
    """
    from support.xgem.evaluate import text_scores

    texts = list(texts)
    nan = {f"bleu{n}": math.nan for n in range(1, 5)} | {"rougeL": math.nan}
    if len(texts) < 2:
        return {"n_reports": len(texts), **nan, "label_agreement": math.nan, "label_pairs": 0,
                "reason": f"too few samples: {len(texts)} report(s), at least 2 needed"}
    tokenizers = model.tokenizers if tokenizer is None else ReportTokenizers.of(tokenizer)
    device = next(model.parameters()).device
    decoded: list[str] = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = tokenizers.batch(texts[start:start + batch_size], model.config.max_tokens)
            mean, _ = model.encode(batch["enc_ids"].to(device), batch["enc_mask"].to(device))
            decoded += model.decode(mean)
    agreement, pairs = label_agreement(texts, decoded)
    return {"n_reports": len(texts), **text_scores(decoded, texts), "label_agreement": agreement, "label_pairs": pairs,
            "reason": ""}
