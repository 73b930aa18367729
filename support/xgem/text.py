"""Reports as XGeM reads and writes them: findings then impression, lower-cased, whitespace made
single; one WordPiece tokenizer trained on them (:mod:`support.core.tokenizer`) serves every text
part unless local model folders bring their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

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
