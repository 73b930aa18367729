"""Reports as sentences, and their tokens.

Cleaning follows MGCA's preprocessing, which CM-CGNS inherits: findings then impression, split
into sentences at full stops and line breaks, lower-cased, reduced to alphanumeric words;
sentences of at most one word are dropped, and reports of fewer than three words are left out
(both counted). A report is then one token sequence, ``[CLS] s1 s2 ... [SEP]``, with the
sentence of each token beside it (-1 for the special and padding tokens), from which the report
encoder averages sentence embeddings.

Without a local BERT folder the tokenizer is :mod:`support.core.tokenizer`'s, built from the
training sentences.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

MIN_SENTENCE_WORDS = 2      # sentences of at most one word are dropped
MIN_REPORT_WORDS = 3        # reports under three words are left out

_WORD = re.compile(r"[a-z0-9]+")
_BREAK = re.compile(r"[.\n]+")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def clean_sentences(text: str) -> tuple[list[str], int]:
    """MGCA's cleaning of one text: (kept sentences, sentences dropped for having <= 1 word)."""
    kept, dropped = [], 0
    for part in _BREAK.split(text.lower()):
        words = _WORD.findall(part)
        if len(words) >= MIN_SENTENCE_WORDS:
            kept.append(" ".join(words))
        elif words:
            dropped += 1
    return kept, dropped


def report_sentences(findings: Any, impression: Any) -> tuple[list[str], int]:
    """The cleaned sentences of a report (findings, then impression) and how many were dropped;
    no sentences when the report has fewer than :data:`MIN_REPORT_WORDS` words in them."""
    sentences, dropped = clean_sentences(f"{_text(findings)}\n{_text(impression)}")
    if sum(len(s.split()) for s in sentences) < MIN_REPORT_WORDS:
        return [], dropped
    return sentences, dropped


def encode_report(tokenizer, sentences: Sequence[str], max_tokens: int) -> tuple[list[int], list[int]]:
    """``[CLS] s1 s2 ... [SEP]`` as ids, and each token's sentence (-1 for [CLS]/[SEP]); sentences
    that do not fit in ``max_tokens`` are cut, and a sentence cut to nothing is gone."""
    ids, index = [tokenizer.cls_token_id], [-1]
    pieces = tokenizer(list(sentences), add_special_tokens=False)["input_ids"] if sentences else []
    for i, piece in enumerate(pieces):
        room = max_tokens - 1 - len(ids)
        if room <= 0:
            break
        piece = piece[:room]
        ids += piece
        index += [i] * len(piece)
    return ids + [tokenizer.sep_token_id], index + [-1]
