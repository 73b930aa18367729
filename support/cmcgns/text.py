"""Reports as sentences, and their tokens.

Cleaning follows MGCA's preprocessing, which CM-CGNS inherits: findings then impression, split
into sentences at full stops and line breaks, lower-cased, reduced to alphanumeric words;
sentences of at most one word are dropped, and reports of fewer than three words are left out
(both counted). A report is then one token sequence, ``[CLS] s1 s2 ... [SEP]``, with the
sentence of each token beside it (-1 for the special and padding tokens), from which the report
encoder averages sentence embeddings.

Without a local BERT folder the tokenizer is a WordPiece one whose vocabulary is built from the
training sentences deterministically: the special tokens, every character (alone and as a
``##`` continuation, so no word is ever unknown), then whole words by count, ties by spelling.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
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


def word_vocabulary(sentences: Iterable[str], size: int) -> dict[str, int]:
    """A WordPiece vocabulary of at most ``size`` entries (:mod:`module docs <support.cmcgns.text>`)."""
    words = Counter(w for s in sentences for w in s.split())
    characters = sorted({c for w in words for c in w})
    vocab = list(SPECIAL_TOKENS) + characters + [f"##{c}" for c in characters]
    if len(vocab) > size:
        raise ValueError(f"tokenizer vocabulary of {size}: the special tokens and the reports' {len(characters)} "
                         f"characters alone need {len(vocab)}")
    seen = set(vocab)
    for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return {token: i for i, token in enumerate(vocab)}


def train_report_tokenizer(sentences: Sequence[str], vocab_size: int):
    """A fast WordPiece tokenizer (``transformers``) over :func:`word_vocabulary` of ``sentences``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(word_vocabulary(sentences, vocab_size), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_report_tokenizer(folder):
    """A tokenizer saved with ``save_pretrained`` (ours, or a local BERT's), never downloaded."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


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
