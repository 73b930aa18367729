"""Captions from reports, the report-corpus tokenizer, and truncation to the text encoder's limit.

A caption is ``view_position = PA. modality = CR. <findings> <impression>`` by default (the form
of the original prompts, the report's text sections; ``text_source`` picks them); a report with
one of them gives it alone, and a report with neither gives the view part alone. Text is NFC-normalised with whitespace collapsed, so line
breaks of numbered impressions and non-ASCII characters reach the byte-level BPE unharmed.
CLIP reads at most ``model_max_length`` tokens (77 for SD 2.1) including its start and end
tokens; :func:`fit_caption` cuts a caption at the last whole token that fits and says so.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Iterable, Mapping, Sequence

from support.t2i.config import DEFAULT_TEMPLATE, check_template

_SPACE = re.compile(r"\s+")


def clean_text(text: Any) -> str:
    """NFC-normalised text with runs of whitespace collapsed to one space; None/NaN -> ""."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", str(text))).strip()


def report_text(findings: Any, impression: Any, text_source: str = "findings+impression") -> str:
    """The report text a caption carries: ``text_source``'s section(s), else the other section."""
    sections = {"findings": clean_text(findings), "impression": clean_text(impression)}
    order = text_source.split("+")
    if not order or any(name not in sections for name in order):
        raise ValueError(f"text_source {text_source!r}: expected findings, impression, "
                         f"findings+impression or impression+findings")
    text = " ".join(sections[name] for name in order if sections[name])
    if text:
        return text
    other = "impression" if order[0] == "findings" else "findings"
    return sections[other]


def report_caption(findings: Any, impression: Any, view: Any, template: str = DEFAULT_TEMPLATE,
                   text_source: str = "findings+impression") -> str:
    """``template`` filled with the view and the report text (an empty report: the view part alone)."""
    check_template(template, "caption template")
    view = clean_text(view) or "unknown"
    return clean_text(template.format(view=view, text=report_text(findings, impression, text_source)))


def record_caption(record: Mapping[str, Any], template: str = DEFAULT_TEMPLATE,
                   text_source: str = "findings+impression") -> str:
    """The caption of one row of a record table (columns ``findings``, ``impression``, ``view``)."""
    return report_caption(record.get("findings", ""), record.get("impression", ""), record.get("view", ""),
                          template, text_source)


# ----------------------------------------------------------------------------------- tokenizer
EOW = "</w>"   # CLIP's end-of-word suffix


def learn_bpe(word_counts: Mapping[str, int], num_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Byte-pair merges of CLIP's kind (the last symbol of a word carries ``</w>``), deterministic.

    ``word_counts``: pre-tokenized words (byte-level symbols) and their counts. The most frequent
    adjacent pair is merged first, ties going to the smallest pair in string order; merging stops
    at ``num_merges`` or when no pair occurs ``min_count`` times. (The ``tokenizers`` trainer
    breaks count ties by ids given in hash-map order, so two runs on one corpus can differ:
    huggingface/tokenizers#1794.) Pair counts are updated only in the words a merge touches.
    """
    import heapq
    from collections import defaultdict

    words = [list(w[:-1]) + [w[-1] + EOW] for w in sorted(word_counts) if w]
    counts = [int(word_counts[w]) for w in sorted(word_counts) if w]
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg:
            continue                                  # a stale entry: the count has changed since
        if -neg < min_count:
            break
        merges.append(pair)
        a, b = pair
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            w, c = words[i], counts[i]
            for old in zip(w, w[1:]):
                pairs[old] -= c
                touched.add(old)
            merged, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    merged.append(a + b)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            words[i] = merged
            for new in zip(merged, merged[1:]):
                pairs[new] += c
                where[new].add(i)
                touched.add(new)
        for p in touched:
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
                where.pop(p, None)
    return merges


def train_caption_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 77):
    """A CLIP BPE tokenizer (``CLIPTokenizer``) trained on ``texts``, limited to ``max_length`` tokens.

    CLIP's normalisation and pre-tokenisation (lower case, byte-level symbols), and CLIP's
    vocabulary layout: the special tokens, every byte symbol alone and word-final (seen in the
    corpus or not, so no character is ever unknown), then one token per merge. The same texts
    give the same tokenizer. Saved with ``save_pretrained`` it loads where a pipeline expects
    SD's tokenizer.
    """
    from collections import Counter

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    corpus = [clean_text(t) for t in texts]
    corpus = [t for t in corpus if t]
    if not corpus:
        raise ValueError("tokenizer training: the report corpus is empty")
    alphabet = sorted(ByteLevel.alphabet())
    base = CLIPTokenizer()
    specials = [base.bos_token, base.eos_token]
    if int(vocab_size) < len(specials) + 2 * len(alphabet) + 1:
        raise ValueError(f"tokenizer vocab_size {vocab_size}: expected at least {len(specials) + 2 * len(alphabet) + 1} "
                         f"(the special tokens, every byte alone and word-final, some merges)")
    backend = base.backend_tokenizer
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    merges = learn_bpe(words, int(vocab_size) - len(specials) - 2 * len(alphabet))
    symbols = specials + alphabet + [a + EOW for a in alphabet] + ["".join(m) for m in merges]
    vocab = {}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = int(max_length)
    return tokenizer


def _backend(tokenizer):
    """The tokenizers backend with neither truncation nor padding: counts are true lengths.

    transformers leaves the settings of its last call on the backend (and sets them again on
    every call), so they are cleared here rather than trusted.
    """
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def _encode(tokenizer, text: str):
    # The backend directly: no "sequence too long" warning, and offsets into the original text.
    return _backend(tokenizer).encode(text)


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` including the start and end tokens."""
    return len(_encode(tokenizer, text).ids)


def fit_caption(caption: str, tokenizer) -> tuple[str, bool]:
    """``(caption, truncated)``: the longest prefix ending on a token boundary that fits the limit."""
    limit = int(tokenizer.model_max_length)
    enc = _encode(tokenizer, caption)
    if len(enc.ids) <= limit:
        return caption, False
    content = [i for i, (s, e) in enumerate(enc.offsets) if e > s]   # drop start/end tokens
    keep = limit - (len(enc.ids) - len(content))
    # A character split over several byte tokens is kept whole or not at all.
    while keep > 0:
        cut = caption[:enc.offsets[content[keep - 1]][1]].rstrip()
        if token_count(tokenizer, cut) <= limit:
            return cut, True
        keep -= 1
    return "", True


def caption_stats(captions: Sequence[str], tokenizer) -> dict[str, Any]:
    """How many captions exceed the token limit: counts, share and token-length summary."""
    limit = int(tokenizer.model_max_length)
    lengths = [len(e.ids) for e in _backend(tokenizer).encode_batch(list(captions))] if captions else []
    truncated = sum(n > limit for n in lengths)
    return {"n": len(lengths), "truncated": truncated,
            "share_truncated": truncated / len(lengths) if lengths else 0.0,
            "token_limit": limit,
            "mean_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
            "max_tokens": max(lengths) if lengths else 0}


def fit_captions(captions: Sequence[str], tokenizer) -> tuple[list[str], dict[str, Any]]:
    """Every caption fitted to the limit, and :func:`caption_stats` of the originals."""
    return [fit_caption(c, tokenizer)[0] for c in captions], caption_stats(captions, tokenizer)
