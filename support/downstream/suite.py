"""Named downstream tasks over a record table, and one judge for every pretraining method: each
encoder x task x protocol x label fraction through :func:`~support.downstream.protocols.evaluate`,
one long table, its wide form (rows = encoder, columns = task x fraction, cells = headline metric
with its 95 % interval) and a figure. 07 (DINO) and 09 (CM-CGNS) judge with it.

Tasks, on the frontal images of the data (split by patient as the dataset says):

| task | kind | headline | labels on the phantom / on the real datasets |
|---|---|---|---|
| ``pneumonia`` | binary (AUROC, F1) | AUROC | Pneumonia, "No Finding" counting as negative (RSNA's Target) |
| ``findings`` | multi-label | mean AUROC | the findings the data can score |
| ``chexpert5`` | multi-label | mean AUROC | Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion (those scorable) |
| ``covidx`` | 3 classes | accuracy | normal / pneumonia / other (COVIDx: normal / pneumonia / COVID-19) |
| ``lungs`` | segmentation | Dice | the phantom's lung-field masks |
| ``pneumothorax`` | segmentation | Dice | pneumothorax masks (SIIM), images without one as empty |
| ``opacity_masks`` | segmentation | Dice | opacity boxes filled as masks (RSNA) |
| ``opacity`` | detection | mAP@[0.40:0.75] | opacity boxes: Pneumonia and Consolidation (RSNA: Lung Opacity) |
| ``foreign_objects`` | detection | mAP@[0.40:0.75] | support devices and markers (Object-CXR: foreign objects) |
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch

from support.params import Check, Checked

from .protocols import DownstreamConfig, evaluate
from .tasks import Detection, MultiClassClassification, MultiLabelClassification, Segmentation

CHEXPERT5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
OPACITY_BOXES: tuple[str, ...] = ("Lung Opacity", "Pneumonia", "Consolidation")
FOREIGN_OBJECT_BOXES: tuple[str, ...] = ("foreign object", "Support Devices")
COVIDX_CLASSES: tuple[str, ...] = ("normal", "pneumonia", "other")
HEADLINE = {"pneumonia": "auroc:Pneumonia", "findings": "auroc", "chexpert5": "auroc", "covidx": "accuracy",
            "lungs": "dice", "pneumothorax": "dice", "opacity_masks": "dice", "opacity": "map@0.40:0.75",
            "foreign_objects": "map@0.40:0.75"}
TASKS: tuple[str, ...] = tuple(HEADLINE)


@dataclasses.dataclass
class JudgeConfig(Checked):
    """Which tasks, protocols and label fractions judge the encoders, and how heads are trained."""

    title = "downstream judgement parameters"

    tasks: tuple[str, ...] = ("pneumonia", "findings", "lungs", "pneumothorax")
    protocols: tuple[str, ...] = ("linear", "finetune")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    dense_fractions: tuple[float, ...] = ()     # segmentation and detection (minutes per head on CPU); empty: fractions
    image_size: int = 224
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)   # segmentation: smp's U-Net decoder widths
    detector_channels: int = 64     # detection: the FCOS head's width (a multiple of 32)
    resident_mb: int = 2048         # task data under this size stays in memory: every source reads it again
    downstream: DownstreamConfig = dataclasses.field(default_factory=DownstreamConfig)

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield bool(self.tasks) and set(self.tasks) <= set(TASKS), "tasks", f"one or more of {list(TASKS)}"
        yield bool(self.protocols) and set(self.protocols) <= {"linear", "finetune", "knn"}, "protocols", \
            "one or more of linear, finetune, knn"
        yield bool(self.fractions) and all(0 < f <= 1 for f in self.fractions), "fractions", "values in (0, 1]"
        yield all(0 < f <= 1 for f in self.dense_fractions), "dense_fractions", "values in (0, 1], or empty"
        yield self.image_size >= 8, "image_size", "at least 8 pixels"
        yield bool(self.decoder_channels) and all(c > 0 for c in self.decoder_channels), "decoder_channels", \
            "one or more positive widths"
        yield self.detector_channels > 0 and self.detector_channels % 32 == 0, "detector_channels", \
            "a positive multiple of 32"
        yield self.resident_mb >= 0, "resident_mb", "0 (never) or more"


class Resident(torch.utils.data.Dataset):
    """A dataset whose items are kept after their first read: heads train for many epochs and every
    source is judged on the same images, so each file is decoded once. Other attributes (``records``)
    are the dataset's."""

    def __init__(self, dataset):
        self.dataset, self.items = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]

    def __getattr__(self, name: str):
        if name in ("dataset", "items"):    # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class WithColumn(torch.utils.data.Dataset):
    """A record dataset whose items also carry one column of its records (a class name)."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return {**item, self.column: self.dataset.records[self.column].iat[item.get("index", index)]}

    def __getattr__(self, name: str):
        if name in ("dataset", "column"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ------------------------------------------------------------------------------------ labels
def pneumonia_labels(records: pd.DataFrame) -> pd.DataFrame:
    """Pneumonia vs no pneumonia: a report with no finding at all says "no pneumonia" as plainly as
    a negated mention does, so "No Finding" = 1 fills an unmentioned Pneumonia with 0. Other
    unmentioned or uncertain labels stay unknown and are left out of training and scoring."""
    label = records["Pneumonia"].copy()
    if "No Finding" in records.columns:
        label = label.mask(label.isna() & records["No Finding"].eq(1), 0.0)
    return records.assign(Pneumonia=label)


def scorable_findings(train: pd.DataFrame, test: pd.DataFrame, candidates: Sequence[str],
                      min_test: int) -> tuple[list[str], dict[str, str]]:
    """The candidate findings a multi-label head can learn and be scored on: a positive training
    label, and at least ``min_test`` definite test labels holding enough of both classes
    (:data:`~support.downstream.metrics.MIN_PER_CLASS`). Returns (kept,
    {left-out finding: why}); the mean AUROC is over the kept findings, every one of them."""
    from .metrics import too_few_of_a_class

    kept, dropped = [], {}
    for name in candidates:
        if name not in train.columns:
            dropped[name] = "not a column of the data"
            continue
        y = test[name][test[name].isin([0, 1])]
        if not train[name].eq(1).any():
            dropped[name] = "no positive training label"
        elif len(y) < min_test:
            dropped[name] = f"too few samples: {len(y)} definite test labels, fewer than {min_test}"
        elif y.nunique() < 2:
            dropped[name] = "one class only among the test labels"
        elif too_few_of_a_class(y.to_numpy()):
            dropped[name] = too_few_of_a_class(y.to_numpy())
        else:
            kept.append(name)
    return kept, dropped


def covidx_classes(records: pd.DataFrame) -> pd.Series:
    """COVIDx's 3 classes of each record. A COVIDx record keeps its own (normal, pneumonia,
    COVID-19, from ``source_labels``; a later release's "positive" is COVID-19, its "negative"
    says too little and falls back to the findings); elsewhere the phantom's equivalent: ``normal`` ("No
    Finding"), ``pneumonia`` (Pneumonia positive) or ``other`` (another finding positive); a record
    that is none of these definitely is left unlabelled ("")."""
    from support.data.schema import CHEXPERT_LABELS

    def one(rec) -> str:
        own = [s.lower() for s in (rec.get("source_labels") or []) if isinstance(s, str)]
        if "positive" in own:           # COVIDx 9B and later: COVID-19 positive / negative only
            return "covid-19"
        for name in ("covid-19", "pneumonia", "normal"):
            if name in own:
                return name
        if rec.get("Pneumonia") == 1:
            return "pneumonia"
        if rec.get("No Finding") == 1:
            return "normal"
        if any(rec.get(c) == 1 for c in CHEXPERT_LABELS if c not in ("No Finding", "Pneumonia")):
            return "other"
        return ""
    return records.apply(one, axis=1) if len(records) else pd.Series([], dtype=str)


def relabel_boxes(records: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
    """Records whose boxes of any of ``labels`` are renamed ``name`` (one class for a detector)."""
    wanted = set(labels)
    return records.assign(boxes=records["boxes"].map(
        lambda boxes: [{**b, "label": name} for b in (boxes or []) if b.get("label") in wanted]))


# ------------------------------------------------------------------------------------ tasks
def task_data(name: str, records: pd.DataFrame, size: int, findings: Sequence[str] = (),
              decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), detector_channels: int = 64
              ) -> tuple[object, Callable[[pd.DataFrame], torch.utils.data.Dataset]]:
    """(harness task, dataset builder over a record table) of one task name. ``findings``: the
    multi-label task's findings (``findings`` and ``chexpert5``: see :func:`scorable_findings`)."""
    from support.data.datasets import BoxDataset, ImageDataset, MaskDataset
    from support.data.schema import ANATOMY_MASKS

    if name == "pneumonia":
        return MultiLabelClassification(["Pneumonia"]), lambda rows: ImageDataset(pneumonia_labels(rows), size=size)
    if name in ("findings", "chexpert5"):
        if not findings:
            raise ValueError(f"task {name!r}: no finding the data can score")
        return MultiLabelClassification(list(findings)), lambda rows: ImageDataset(rows, size=size)
    if name == "covidx":
        def classes(rows):
            rows = rows.assign(covidx=covidx_classes(rows))
            return WithColumn(ImageDataset(rows[rows["covidx"] != ""], size=size), "covidx")
        present = set(covidx_classes(records))
        names = ("normal", "pneumonia", "covid-19") if "covid-19" in present else COVIDX_CLASSES
        return MultiClassClassification(names, key="covidx"), classes
    if name == "lungs":
        def lungs(rows):
            data = MaskDataset(rows, size=size, labels=[ANATOMY_MASKS[0]])
            if not len(data):
                raise ValueError(f"none of {len(rows)} images has a {ANATOMY_MASKS[0]!r} mask (a phantom written "
                                 "before anatomy masks existed: run 00_data again)")
            return data
        return Segmentation(decoder_channels), lungs
    if name == "pneumothorax":
        return Segmentation(decoder_channels), lambda rows: MaskDataset(rows, size=size, labels=["Pneumothorax"],
                                                                         unannotated="empty")
    if name == "opacity_masks":
        return Segmentation(decoder_channels), lambda rows: MaskDataset(
            relabel_boxes(rows, OPACITY_BOXES, "opacity"), size=size, labels=["opacity"], boxes_as_masks=True)
    if name in ("opacity", "foreign_objects"):
        labels, cls = (OPACITY_BOXES, "opacity") if name == "opacity" else (FOREIGN_OBJECT_BOXES, "foreign object")
        return Detection([cls], channels=detector_channels), lambda rows: BoxDataset(
            relabel_boxes(rows, labels, cls), size=size, classes=[cls])
    raise ValueError(f"task {name!r}: expected one of {list(TASKS)}")


def judge(encoders: Mapping[str, object], train: pd.DataFrame, test: pd.DataFrame, config: JudgeConfig,
          findings: Sequence[str] = (), chexpert: Sequence[str] = (), progress: bool = True) -> pd.DataFrame:
    """Every encoder on every task, protocol and fraction; one long table with a ``source`` and a
    ``task`` column beside the harness's columns. A task the data cannot score (no test positive,
    no mask, no box) is left out with a printed reason, never filled with a number."""
    from tqdm.auto import tqdm

    config = config.validate()
    resident = (len(train) + len(test)) * config.image_size ** 2 * 8 <= config.resident_mb * 2 ** 20  # image + mask
    data = {}
    rows = []
    plan = [(s, t, p) for s in encoders for t in config.tasks for p in config.protocols]
    for source, task_name, protocol in tqdm(plan, desc="downstream", unit="run", disable=not progress):
        if protocol == "knn" and task_name in ("lungs", "pneumothorax", "opacity_masks", "opacity", "foreign_objects"):
            continue                                    # kNN votes on pooled features: classification only
        try:
            task, dataset = task_data(task_name, train, config.image_size,
                                      chexpert if task_name == "chexpert5" else findings,
                                      config.decoder_channels, config.detector_channels)
            if task_name not in data:
                data[task_name] = [Resident(dataset(rows)) if resident else dataset(rows) for rows in (train, test)]
            fractions = config.dense_fractions if task.dense and config.dense_fractions else config.fractions
            table = evaluate(encoders[source], task, protocol, fractions, *data[task_name], config.downstream)
        except ValueError as exc:       # the data cannot score this task: say so, report nothing
            print(f"{source} / {task_name} / {protocol}: not scored: {exc}")
            continue
        rows.append(table.assign(source=source, task=task_name))
    if not rows:
        raise ValueError("no task could be scored on this data")
    return pd.concat(rows, ignore_index=True)


def source_table(long: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Rows = encoder (pretraining source), columns = (task, label fraction), cells = the task's
    headline metric with its 95 % interval ("0.87 [0.80, 0.92]"), or the reason it is missing."""
    picked = long[(long["protocol"] == protocol) & (long["metric"] == long["task"].map(HEADLINE))]

    def cell(r) -> str:
        if r["reason"]:
            return r["reason"]
        return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    wide = picked.assign(cell=picked.apply(cell, axis=1)).pivot_table(
        index="source", columns=["task", "fraction"], values="cell", aggfunc="first")
    return wide.reindex(index=[s for s in dict.fromkeys(long["source"]) if s in wide.index])


def plot_sources(long: pd.DataFrame):
    """Headline metric against label fraction, one line per encoder, a panel per task and protocol.
    None when no headline metric was scored (the tables say why)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    picked = long[long["metric"] == long["task"].map(HEADLINE)].dropna(subset=["value"])
    if picked.empty:
        return None
    grid = sns.relplot(picked, x="fraction", y="value", hue="source", col="task", row="protocol", kind="line",
                       marker="o", height=2.6, aspect=1.1, facet_kws={"sharey": False})
    grid.set(xscale="log")
    grid.set_axis_labels("label fraction", "AUROC / accuracy / Dice / mAP")
    plt.tight_layout()
    return grid.figure


def headline(long: pd.DataFrame) -> dict[str, float | None]:
    """``"source|task|protocol|fraction" -> value`` of each task's headline metric (None: not scored)."""
    picked = long[long["metric"] == long["task"].map(HEADLINE)]
    return {f"{r.source}|{r.task}|{r.protocol}|{r.fraction:g}": (None if pd.isna(r.value) else round(float(r.value), 4))
            for r in picked.itertuples()}
