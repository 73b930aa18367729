"""I-SynMed's comparison: the same DINO pretraining on each source (synthetic sets, the real training
split, nothing at all), every encoder judged by the downstream harness on the same real tasks.

Tasks (on the real data's frontal images, split by patient as the dataset says):
- ``pneumonia``: pneumonia vs no pneumonia (AUROC and F1); as in I-SynMed's pneumonia-vs-normal
  data, an image labelled "No Finding" counts as a negative;
- ``findings``: the findings the data can score (per-finding AUROC and their mean; see
  :func:`scorable_findings`);
- ``lungs``: lung-field segmentation (Dice), the task DINO backbones are usually judged on;
- ``pneumothorax``: pneumothorax segmentation (Dice), images without one as empty masks.

The result is one long table (source x task x protocol x fraction x metric, with 95 % intervals)
and its wide form, the table I-SynMed implies: rows = pretraining source, columns = task x label
fraction, cells = the task's headline metric with its interval.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from support.downstream import DownstreamConfig, MultiLabelClassification, Segmentation, evaluate
from support.params import Check, Checked

TASKS: tuple[str, ...] = ("pneumonia", "findings", "lungs", "pneumothorax")
HEADLINE = {"pneumonia": "auroc:Pneumonia", "findings": "auroc", "lungs": "dice", "pneumothorax": "dice"}


@dataclasses.dataclass
class JudgeConfig(Checked):
    """Which tasks, protocols and label fractions judge the encoders, and how heads are trained."""

    title = "downstream judgement parameters"

    tasks: tuple[str, ...] = TASKS
    protocols: tuple[str, ...] = ("linear", "finetune")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    image_size: int = 224
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)   # segmentation: smp's U-Net decoder widths
    resident_mb: int = 2048         # task data under this size stays in memory: every source reads it again
    downstream: DownstreamConfig = dataclasses.field(default_factory=DownstreamConfig)

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield bool(self.tasks) and set(self.tasks) <= set(TASKS), "tasks", f"one or more of {list(TASKS)}"
        yield bool(self.protocols) and set(self.protocols) <= {"linear", "finetune", "knn"}, "protocols", \
            "one or more of linear, finetune, knn"
        yield bool(self.fractions) and all(0 < f <= 1 for f in self.fractions), "fractions", "values in (0, 1]"
        yield self.image_size >= 8, "image_size", "at least 8 pixels"
        yield bool(self.decoder_channels) and all(c > 0 for c in self.decoder_channels), "decoder_channels", \
            "one or more positive widths"
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
    from support.downstream.metrics import too_few_of_a_class

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


def task_data(name: str, records: pd.DataFrame, size: int, findings: Sequence[str],
              decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)):
    """(harness task, dataset builder) of one task name over a record table of frontal images."""
    from support.data.datasets import ImageDataset, MaskDataset
    from support.data.schema import ANATOMY_MASKS

    if name == "pneumonia":
        return MultiLabelClassification(["Pneumonia"]), lambda rows: ImageDataset(pneumonia_labels(rows), size=size)
    if name == "findings":
        return MultiLabelClassification(list(findings)), lambda rows: ImageDataset(rows, size=size)
    if name == "lungs":
        def lungs(rows):
            data = MaskDataset(rows, size=size, labels=[ANATOMY_MASKS[0]])
            if not len(data):
                raise ValueError(f"none of {len(rows)} images has a {ANATOMY_MASKS[0]!r} mask (a phantom written "
                                 "before anatomy masks existed: run 00_data again)")
            return data
        return Segmentation(decoder_channels), lungs
    if name == "pneumothorax":
        return Segmentation(decoder_channels), lambda rows: MaskDataset(rows, size=size, labels=["Pneumothorax"], unannotated="empty")
    raise ValueError(f"task {name!r}: expected one of {list(TASKS)}")


def judge(encoders: Mapping[str, object], train: pd.DataFrame, test: pd.DataFrame, config: JudgeConfig,
          findings: Sequence[str], progress: bool = True) -> pd.DataFrame:
    """Every encoder on every task, protocol and fraction; one long table with a ``source`` and a
    ``task`` column beside the harness's columns. A task the data cannot score (no test positive,
    no mask) is left out with a printed reason, never filled with a number."""
    from tqdm.auto import tqdm

    config = config.validate()
    resident = (len(train) + len(test)) * config.image_size ** 2 * 8 <= config.resident_mb * 2 ** 20  # image + mask
    data = {}
    rows = []
    plan = [(s, t, p) for s in encoders for t in config.tasks for p in config.protocols]
    for source, task_name, protocol in tqdm(plan, desc="downstream", unit="run", disable=not progress):
        task, dataset = task_data(task_name, train, config.image_size, findings, config.decoder_channels)
        try:
            if task_name not in data:
                data[task_name] = [Resident(dataset(rows)) if resident else dataset(rows) for rows in (train, test)]
            table = evaluate(encoders[source], task, protocol, config.fractions, *data[task_name], config.downstream)
        except ValueError as exc:       # the data cannot score this task: say so, report nothing
            print(f"{source} / {task_name} / {protocol}: not scored: {exc}")
            continue
        rows.append(table.assign(source=source, task=task_name))
    if not rows:
        raise ValueError("no task could be scored on this data")
    return pd.concat(rows, ignore_index=True)


def source_table(long: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Rows = pretraining source, columns = (task, label fraction), cells = the task's headline metric
    with its 95 % interval ("0.87 [0.80, 0.92]"), or the reason it is missing."""
    picked = long[(long["protocol"] == protocol) & (long["metric"] == long["task"].map(HEADLINE))]

    def cell(r) -> str:
        if r["reason"]:
            return r["reason"]
        return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    wide = picked.assign(cell=picked.apply(cell, axis=1)).pivot_table(
        index="source", columns=["task", "fraction"], values="cell", aggfunc="first")
    return wide.reindex(index=list(dict.fromkeys(long["source"])))


def plot_sources(long: pd.DataFrame):
    """Headline metric against label fraction, one line per source, a panel per task and protocol.
    None when no headline metric was scored (the tables say why)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    picked = long[long["metric"] == long["task"].map(HEADLINE)].dropna(subset=["value"])
    if picked.empty:
        return None
    grid = sns.relplot(picked, x="fraction", y="value", hue="source", col="task", row="protocol", kind="line",
                       marker="o", height=2.6, aspect=1.1, facet_kws={"sharey": False})
    grid.set(xscale="log")
    grid.set_axis_labels("label fraction", "AUROC / Dice")
    plt.tight_layout()
    return grid.figure


def pretrain(sources: Mapping[str, object], config, models_dir, num_processes: int = 1) -> dict[str, object]:
    """One DINO run per source under the same ``config`` (the same number of updates for every
    source), its teacher backbone returned; a source of None is the starting network without
    pretraining (initialised at ``config.train.seed``, or ``config.init_weights``): what pretraining
    is measured against."""
    from pathlib import Path

    from support.downstream.encoders import load_encoder_folder
    from support.ssl.train import ENCODER_DIR, launch_dino, start_backbone, uniform_collapse

    encoders = {}
    for name, images in sources.items():
        if images is None:
            torch.manual_seed(config.train.seed)
            encoders[name] = start_backbone(config).eval()
            continue
        out = Path(models_dir) / f"dino-{name}"
        history = launch_dino(config, images, out, source=name, num_processes=num_processes)
        encoders[name] = load_encoder_folder(out / ENCODER_DIR)
        encoders[name].info["uniform_collapse"] = uniform_collapse(history["loss"], config.head.prototypes)
        if encoders[name].info["uniform_collapse"]:
            warnings.warn(f"DINO on {name!r} ended in uniform collapse (loss {history['loss'][-1]:.3f} = ln "
                          f"{config.head.prototypes}): its encoder stands for no pretraining, whatever it scores",
                          stacklevel=2)
    return encoders


def headline(long: pd.DataFrame) -> dict[str, float | None]:
    """``"source|task|protocol|fraction" -> value`` of each task's headline metric (None: not scored)."""
    picked = long[long["metric"] == long["task"].map(HEADLINE)]
    return {f"{r.source}|{r.task}|{r.protocol}|{r.fraction:g}": (None if pd.isna(r.value) else round(float(r.value), 4))
            for r in picked.itertuples()}
