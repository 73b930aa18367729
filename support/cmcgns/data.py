"""Image-report pairs for CM-CGNS: the frontal images of studies with a report, their reports
cleaned into sentences and tokenised, batched with padding."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from support.cmcgns.text import encode_report, report_sentences
from support.data.datasets import ImageDataset
from support.data.schema import FRONTAL_VIEWS


class ReportPairs(ImageDataset):
    """Items: ``image`` (1, S, S) in [0, 1], ``input_ids`` and ``sentence_index`` (lists, see
    :func:`~support.cmcgns.text.encode_report`) beside the ids. Frontal views only; an image whose
    study has no report, or a report that cleans to nothing, is left out and counted in
    ``summary``; ``dropped_sentences`` counts the one-word sentences removed from kept reports."""

    kind = "image-report pairs"

    def __init__(self, records: pd.DataFrame, tokenizer, max_tokens: int, size: int, **kwargs: Any):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.dropped_sentences = 0
        super().__init__(records, size=size, value_range=(0.0, 1.0), channels=1, views=FRONTAL_VIEWS, **kwargs)

    def _select(self, records: pd.DataFrame) -> pd.DataFrame:
        records = super()._select(records)
        cleaned = [report_sentences(r.get("findings"), r.get("impression")) for _, r in records.iterrows()]
        raw = records.get("findings", pd.Series("", index=records.index)).fillna("").astype(str).str.strip() + \
            records.get("impression", pd.Series("", index=records.index)).fillna("").astype(str).str.strip()
        no_report = (raw == "").to_numpy()
        empty = [not s for s, _ in cleaned]
        self.summary.exclude("study without a report", int(no_report.sum()))
        self.summary.exclude("report that cleans to under 3 words", int(sum(e and not n for e, n in zip(empty, no_report))))
        keep = [not e for e in empty]
        self.sentences = [s for (s, _), k in zip(cleaned, keep) if k]
        self.dropped_sentences = sum(d for (_, d), k in zip(cleaned, keep) if k)
        return records[keep].reset_index(drop=True)

    def _item(self, i: int) -> dict[str, Any]:
        item = super()._item(i)
        ids, index = encode_report(self.tokenizer, self.sentences[i], self.max_tokens)
        return {"image": item["image"], "input_ids": ids, "sentence_index": index, "image_id": item["image_id"]}


def collate_pairs(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Images stacked; token ids padded with ``pad_id`` (attention mask 0), sentence index with -1."""
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    index = torch.full((len(items), length), -1, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = torch.tensor(it["input_ids"])
        index[row, :n] = torch.tensor(it["sentence_index"])
        attention[row, :n] = 1
    return {"image": torch.stack([it["image"] for it in items]), "input_ids": ids, "attention_mask": attention,
            "sentence_index": index}
