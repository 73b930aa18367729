"""The named downstream tasks of 07 and 09 on a small phantom: each task reads the labels, masks or
boxes it claims, and the judge scores them or says why it cannot."""

import numpy as np
import pandas as pd
import pytest
import torch

from support.data.adapters import load_dataset
from support.data.schema import FRONTAL_VIEWS
from support.downstream import build_encoder
from support.downstream.protocols import DownstreamConfig
from support.downstream.suite import (HEADLINE, TASKS, JudgeConfig, covidx_classes, judge, relabel_boxes,
                                      source_table, task_data)
from support.phantom import PhantomConfig, generate_phantom

torch.set_num_threads(1)


def test_covidx_classes_follow_the_source_or_the_findings():
    nan = np.nan
    rows = pd.DataFrame({"source_labels": [["COVID-19"], [], [], [], [], ["normal"], ["positive"], ["negative"]],
                         "Pneumonia": [nan, 1, nan, nan, 0, nan, nan, nan],
                         "No Finding": [nan, nan, 1, nan, nan, nan, nan, nan],
                         "Cardiomegaly": [nan, nan, nan, 1, nan, nan, nan, nan]})
    assert covidx_classes(rows).tolist() == ["covid-19", "pneumonia", "normal", "other", "", "normal", "covid-19", ""]


def test_boxes_are_renamed_to_the_tasks_class_and_others_dropped():
    rows = pd.DataFrame({"boxes": [[{"label": "Pneumonia", "x0": 0.1}, {"label": "Support Devices", "x0": 0.2}],
                                   [{"label": "Lung Opacity", "x0": 0.3}], None]})
    out = relabel_boxes(rows, ("Lung Opacity", "Pneumonia"), "opacity")["boxes"].tolist()
    assert out == [[{"label": "opacity", "x0": 0.1}], [{"label": "opacity", "x0": 0.3}], []]


@pytest.fixture(scope="module")
def frontal(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=40, image_size=48, seed=11, lateral_share=0.0, text_share=0.0,
                                         prevalence={"Pneumonia": 0.35, "Support Devices": 0.4, "Cardiomegaly": 0.3,
                                                     "Pneumothorax": 0.2}),
                     workers=1, progress=False)
    records = load_dataset("mimic-cxr-jpg", root)[0]
    return records[records["view"].isin(FRONTAL_VIEWS)].reset_index(drop=True)


def test_every_task_reads_what_it_claims(frontal):
    for name in TASKS:
        task, build = task_data(name, frontal, 32, ["Cardiomegaly"], (16, 8, 8, 8), 32)
        data = build(frontal)
        item = data[0]
        assert item["image"].shape == (1, 32, 32), name
    _, build = task_data("opacity", frontal, 32)
    boxes = build(frontal)
    truth = frontal["boxes"].map(lambda bs: sum(b["label"] in ("Pneumonia", "Consolidation") for b in bs))
    assert sum(len(boxes[i]["boxes"]) for i in range(len(boxes))) == truth.sum() > 0
    assert all(boxes[i]["box_labels"] == ["opacity"] * len(boxes[i]["boxes"]) for i in range(len(boxes)))
    _, build = task_data("foreign_objects", frontal, 48)     # the native size: no thin box falls under a pixel
    objects = build(frontal)
    has_device = frontal["boxes"].map(lambda bs: any(b["label"] == "Support Devices" for b in bs))
    assert [len(objects[i]["boxes"]) > 0 for i in range(len(objects))] == has_device.tolist()
    _, build = task_data("opacity_masks", frontal, 32)
    masks = build(frontal)
    assert [bool(masks[i]["mask"].any()) for i in range(len(masks))] == (truth > 0).tolist()
    task, build = task_data("covidx", frontal, 32)
    classes = build(frontal)
    assert task.classes == ("normal", "pneumonia", "other")
    assert sorted({classes[i]["covidx"] for i in range(len(classes))}) == ["normal", "other", "pneumonia"]
    with pytest.raises(ValueError, match="no finding the data can score"):
        task_data("chexpert5", frontal, 32, [])


def test_the_judge_scores_09s_tasks_or_says_why(frontal, capsys):
    train, test = frontal[frontal["split"] != "test"], frontal[frontal["split"] == "test"]
    encoders = {"random": build_encoder("resnet18")}
    config = JudgeConfig(tasks=("covidx", "opacity", "opacity_masks", "foreign_objects"), protocols=("linear",),
                         fractions=(0.5, 1.0), dense_fractions=(1.0,), image_size=32, decoder_channels=(16, 8, 8, 8),
                         detector_channels=32, downstream=DownstreamConfig(n_boot=10, min_test=2))
    long = judge(encoders, train, test, config, progress=False)
    scored = long[long["metric"] == long["task"].map(HEADLINE)]
    assert set(scored["task"]) <= set(config.tasks) and "covidx" in set(scored["task"])
    fractions = scored.groupby("task")["fraction"].agg(lambda f: sorted(set(f)))
    assert all(fractions[t] == ([0.5, 1.0] if t == "covidx" else [1.0]) for t in fractions.index), fractions
    for r in scored.itertuples():
        assert (np.isfinite(r.value) and 0 <= r.value <= 1) or r.reason, r
    missing = set(config.tasks) - set(scored["task"])
    printed = capsys.readouterr().out
    assert all(f"random / {t} / linear: not scored" in printed for t in missing)
    wide = source_table(long, "linear")
    assert list(wide.index) == ["random"] and {t for t, _ in wide.columns} == set(scored["task"])
