"""Reports as XGeM reads and writes them: findings then impression, lower-cased, whitespace made
single; one WordPiece tokenizer trained on them (:mod:`support.core.tokenizer`) serves every text
part unless local model folders bring their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from support.core.tokenizer import load_tokenizer, train_wordpiece

TOKENIZER_DIR = "tokenizer"


def normalise_report(findings: Any, impression: Any = "") -> str:
    """The report text XGeM models: ``findings impression``, lower-case, single spaces ("" if none)."""
    parts = [p for p in (findings, impression) if isinstance(p, str)]
    return " ".join(" ".join(parts).lower().split())


def report_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | os.PathLike):
    """The tokenizer kept in ``folder`` (a resumed run reads it back), else one trained on ``texts``
    and saved there."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("XGeM: no report text to build a tokenizer from (columns 'findings' and 'impression')")
    tokenizer = train_wordpiece(texts, vocab_size)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(begin, end, pad) ids: BERT-style ``[CLS]``/``[SEP]``/``[PAD]``, else GPT-2-style BOS/EOS with
    EOS as padding (padding is masked by the attention mask, never by its id)."""
    begin = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if begin is None or end is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: no [CLS]/[SEP] nor BOS/EOS token "
                         f"to begin and end a report")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return begin, end, pad


def token_batch(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of ``begin text end`` for each text, the text cut to ``max_tokens`` in all, padded
    on the right to the longest in the batch."""
    begin, end, pad = special_ids(tokenizer)
    rows = [[begin, *ids[:max_tokens - 2], end]
            for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, mask
