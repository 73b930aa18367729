"""A report tokenizer built from the reports themselves, for every system without a local model.

WordPiece over a vocabulary chosen deterministically: the special tokens, every character (alone
and as a ``##`` continuation, so no word is ever unknown), then whole words by count, ties by
spelling. Words are what BERT's pre-tokenizer makes of the text (punctuation is a word of its own),
and the tokenizer decodes back to text, so a report model's output can be read and labelled.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def words_of(text: str) -> list[str]:
    """The words BERT's (lower-casing) pre-tokenizer makes of ``text``."""
    from tokenizers import normalizers, pre_tokenizers

    normal = normalizers.BertNormalizer(lowercase=True).normalize_str(text)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normal)]


def word_vocabulary(texts: Iterable[str], size: int) -> dict[str, int]:
    """A WordPiece vocabulary of at most ``size`` entries (see the module docs)."""
    words = Counter(w for t in texts for w in words_of(t))
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


def train_wordpiece(texts: Sequence[str], vocab_size: int):
    """A fast WordPiece tokenizer (``transformers``) over :func:`word_vocabulary` of ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(word_vocabulary(texts, vocab_size), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(folder: str | os.PathLike):
    """A tokenizer saved with ``save_pretrained`` (ours, or a local model's), never downloaded."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
