"""XGeM's data: studies as frontal-lateral-report triplets, and what each stage trains on.

A study is kept when it has a frontal view; a missing lateral or an empty report is used as
Multi-Prompt training allows and counted. Images are zero-padded to a square (the paper's
preprocessing) in [-1, 1], the range of the image autoencoder.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from support.data.datasets import FrontalLateralReportDataset, ImageDataset
from support.data.schema import FRONTAL_VIEWS, LATERAL_VIEWS
from support.xgem.text import normalise_report

VALUE_RANGE = (-1.0, 1.0)


class Studies(FrontalLateralReportDataset):
    """One item per study: ``frontal`` and ``lateral`` (1, S, S) in [-1, 1] (the lateral -1 when
    absent), ``has_lateral``, ``report`` (normalised, "" when absent), ``has_report``, ``labels``.
    ``summary`` counts studies without a lateral and without a report; those without a frontal
    are left out."""

    kind = "XGeM studies"

    def __init__(self, records: pd.DataFrame, size: int, **kwargs: Any):
        super().__init__(records, size=size, value_range=VALUE_RANGE, fit="pad", channels=1,
                         text="findings+impression", require_report=False, **kwargs)

    def _select(self, records: pd.DataFrame) -> pd.DataFrame:
        studies = super()._select(records)
        studies["report"] = [normalise_report(r.get("findings"), r.get("impression")) for _, r in studies.iterrows()]
        empty = int((studies["report"] == "").sum())
        if empty:
            self.summary.note(f"{empty} stud{'y' if empty == 1 else 'ies'} without report text (image stages only)")
        return studies

    @property
    def has_report(self) -> pd.Series:
        return self.records["report"] != ""

    @property
    def has_lateral(self) -> pd.Series:
        return self.records["lateral_path"] != ""

    def _item(self, i: int) -> dict[str, Any]:
        item = super()._item(i)
        item["has_report"] = torch.tensor(item["report"] != "")
        return item


def view_images(records: pd.DataFrame, size: int, **kwargs: Any) -> ImageDataset:
    """Every frontal and lateral image (the image autoencoder is shared by both views)."""
    return ImageDataset(records, size=size, value_range=VALUE_RANGE, fit="pad", channels=1,
                        views=tuple(FRONTAL_VIEWS) + tuple(LATERAL_VIEWS), **kwargs)


class Reports(Dataset):
    """The non-empty normalised reports of ``studies`` (text stages); ``skipped`` counts the empty."""

    def __init__(self, studies: Studies):
        keep = studies.has_report
        self.texts = studies.records.loc[keep, "report"].tolist()
        self.study_ids = studies.records.loc[keep, "study_id"].astype(str).tolist()
        self.skipped = int((~keep).sum())

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"report": self.texts[i], "study_id": self.study_ids[i], "index": i}
