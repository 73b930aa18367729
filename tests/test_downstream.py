"""The downstream harness: encoders by name, label fractions by patient, the three protocols, the
four tasks' metrics with bootstrap intervals, and the guards against results that cannot be right.

On a small phantom whose only findings are Cardiomegaly and Pleural Effusion, an encoder trained
on its labels beats a freshly initialised one of the same architecture when a quarter of the
labels is available: linear-probe AUROC (the linear head trained to convergence), and, with a
short schedule of 15 updates for the frozen-encoder heads, segmentation Dice of the enlarged heart
and detection mAP of its box. (Given many more updates, a decoder learns the enlarged heart from
random features too: pretraining shows where labels and updates are scarce.)
"""

import dataclasses

import numpy as np
import pytest
import torch

from support.core.config import LoopConfig
from support.data.adapters import load_dataset
from support.data.datasets import BoxDataset, ImageDataset, MaskDataset
from support.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS
from support.downstream import (COLUMNS, Detection, DownstreamConfig, MultiClassClassification,
                                MultiLabelClassification, ReferenceConfig, Segmentation, TimmConfig, bootstrap_ci,
                                build_encoder, cosine_neighbours, evaluate, knn_vote, loop_for, patient_subset,
                                register_encoder, save_encoder)
from support.downstream.encoders import ENCODERS
from support.eval.reference_encoder import ReferenceEncoderConfig, split_indices, train_reference_encoder
from support.params import ParameterError
from support.phantom import PhantomConfig, generate_phantom
from test_eval_helpers import RENDERED, FindingsDataset

torch.set_num_threads(1)

SIZE = 32
FINDINGS = ["Cardiomegaly", "Pleural Effusion"]
SCARCE = 0.25                      # the label-scarce regime where pretrained features matter
HEADS = LoopConfig(max_steps=None, epochs=15, batch_size=16, optimizer="adamw", learning_rate=3e-3,
                   lr_schedule="cosine", cpu=True)
CONFIG = DownstreamConfig(train=HEADS, n_boot=50)            # dense heads: 15 updates at a quarter of the labels
CONVERGED = dataclasses.replace(CONFIG, min_steps=200)      # linear heads on cached features: cheap to converge
SMALL_NET = ReferenceConfig(width=8, blocks=(1, 1, 1))


# ------------------------------------------------------------------------------------ phantom
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Frontal images of 60 phantom patients, split by patient 60/40 into train and test."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=60, image_size=64, seed=3, lateral_share=0.0, text_share=0.0,
                                         prevalence={"Cardiomegaly": 0.5, "Pleural Effusion": 0.4}),
                     workers=1, progress=False)
    records = load_dataset("mimic-cxr-jpg", root)[0]
    frontal = records[records["view"].isin(FRONTAL_VIEWS)].reset_index(drop=True)
    train, test = split_indices(len(frontal), 0.4, seed=0, groups=list(frontal["subject_id"]))
    return frontal.iloc[train].reset_index(drop=True), frontal.iloc[test].reset_index(drop=True)


@pytest.fixture(scope="module")
def encoders(phantom):
    """The reference encoder trained on the phantom's training labels, and a random one like it."""
    train, _ = phantom
    recipe = ReferenceEncoderConfig(width=SMALL_NET.width, blocks=SMALL_NET.blocks, image_size=SIZE, epochs=30,
                                    batch_size=16, lr=3e-3, device="cpu")
    trained = train_reference_encoder(ImageDataset(train, size=SIZE), recipe, groups=list(train["subject_id"]),
                                      name="phantom train")
    return {"trained": trained.model, "random": random_net(1)}


def random_net(seed: int = 0):
    """A freshly initialised small reference network (seeded: tests must not depend on their order)."""
    torch.manual_seed(seed)
    return build_encoder("reference", SMALL_NET)


def _compare(encoders, task, train, test, metric, config=CONFIG):
    tables = {name: evaluate(encoder, task, "linear", (SCARCE,), train, test, config)
              for name, encoder in encoders.items()}
    for name, table in tables.items():
        assert list(table.columns) == COLUMNS
        # a random encoder's AUROC may scatter so widely that it is no result: said, never a number
        wide = table["reason"].str.startswith("too few samples: the 95% interval") | table["reason"].str.startswith(
            "mean undefined")
        assert (table["reason"] == "").all() if name == "trained" else (table["reason"].eq("") | wide).all()
        scored = table[table["reason"] == ""]
        assert (scored["ci_low"] <= scored["value"]).all() and (scored["value"] <= scored["ci_high"]).all()
        assert np.isnan(table.loc[wide, "value"]).all()
        assert (table["n_train"] < len(train)).all() and (table["n_test"] > 0).all()
    value = {name: float(t.loc[t["metric"] == metric, "value"].iloc[0]) for name, t in tables.items()}
    return value, tables


def test_linear_probe_auroc_is_higher_for_a_trained_encoder(phantom, encoders):
    train, test = phantom
    value, tables = _compare(encoders, MultiLabelClassification(FINDINGS), ImageDataset(train, size=SIZE),
                             ImageDataset(test, size=SIZE), "auroc", CONVERGED)
    assert set(tables["trained"]["metric"]) == {"auroc", "auroc:Cardiomegaly", "auroc:Pleural Effusion",
                                                "f1:Cardiomegaly", "f1:Pleural Effusion"}
    f1 = tables["trained"].set_index("metric").loc[["f1:Cardiomegaly", "f1:Pleural Effusion"], "value"]
    assert ((0 <= f1) & (f1 <= 1)).all()
    # the random encoder: clearly below, or so scattered that its AUROC is "too few samples"
    assert value["trained"] > 0.75 and not value["random"] + 0.15 >= value["trained"], value


def test_segmentation_dice_is_higher_for_a_trained_encoder(phantom, encoders):
    train, test = phantom

    def masks(records):  # the enlarged heart: an empty mask on a normal film
        return MaskDataset(records, size=SIZE, labels=["Cardiomegaly"], unannotated="empty")

    value, _ = _compare(encoders, Segmentation(decoder_channels=(8, 8, 8)), masks(train), masks(test), "dice")
    assert value["trained"] > 0.4 and value["trained"] > value["random"] + 0.2, value


def test_detection_map_is_higher_for_a_trained_encoder(phantom, encoders):
    train, test = phantom
    task = Detection(["Cardiomegaly"], channels=32, head_convs=1, detections_per_image=5)
    value, _ = _compare(encoders, task, BoxDataset(train, size=SIZE), BoxDataset(test, size=SIZE), "map@0.40:0.75")
    assert value["trained"] > 0.4 and value["trained"] > value["random"] + 0.2, value


# ------------------------------------------------------------------------------------ fractions
def test_fractions_are_drawn_by_patient_and_keep_rare_findings():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(400)], 3)         # three images per patient
    labels = np.full((1200, 3), np.nan)
    labels[:, 0] = rng.random(1200) < 0.3
    labels[:, 1] = 0.0
    labels[rng.choice(1200, 6, replace=False), 1] = 1.0           # rare: six images
    labels[:, 2] = np.where(rng.random(1200) < 0.5, np.nan, 0.0)
    for fraction in (0.01, 0.1):
        chosen = patient_subset(labels, groups, fraction, seed=3)
        patients = set(groups[chosen])
        assert set(np.flatnonzero(np.isin(groups, list(patients)))) == set(chosen)   # no patient split
        assert labels[chosen, 1].sum() >= 1                                         # the rare finding survives
        assert len(patients) == pytest.approx(400 * fraction, abs=3)
    assert np.array_equal(patient_subset(labels, groups, 0.1, seed=3), patient_subset(labels, groups, 0.1, seed=3))
    assert not np.array_equal(patient_subset(labels, groups, 0.1, seed=3), patient_subset(labels, groups, 0.1, seed=4))
    assert np.array_equal(patient_subset(labels, groups, 1.0), np.arange(1200))
    with pytest.raises(ValueError, match="one patient id per row"):
        patient_subset(labels, groups[:10], 0.1)


def test_evaluate_reports_each_fraction_by_patient():
    train, test = FindingsDataset(120, seed=31), FindingsDataset(80, seed=32, hide=0.0)
    config = dataclasses.replace(CONFIG, train=dataclasses.replace(HEADS, epochs=5), n_boot=50)
    table = evaluate(random_net(), MultiLabelClassification(RENDERED), "linear",
                     (0.1, 1.0), train, test, config)
    # per fraction: AUROC and F1 per finding, and the mean AUROC
    assert sorted(set(table["fraction"])) == [0.1, 1.0] and len(table) == 2 * (2 * len(RENDERED) + 1)
    per = table.groupby("fraction")[["n_train", "n_patients"]].first()
    assert per.loc[1.0, "n_train"] == 120 and per.loc[1.0, "n_patients"] == 60
    assert per.loc[0.1, "n_train"] == 2 * per.loc[0.1, "n_patients"] < 120     # two studies per patient, kept together


# ------------------------------------------------------------------------------------ statistics
def test_bootstrap_interval_contains_the_estimate_narrows_with_n_and_is_seeded():
    def accuracy_ci(n):
        correct = np.random.default_rng(0).random(n) < 0.7
        return correct.mean(), bootstrap_ci(lambda idx: correct[idx].mean(), n, n_boot=300, seed=1)

    (small, (lo_s, hi_s)), (large, (lo_l, hi_l)) = accuracy_ci(50), accuracy_ci(2000)
    assert lo_s <= small <= hi_s and lo_l <= large <= hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)
    assert accuracy_ci(50)[1] == (lo_s, hi_s)
    assert all(np.isnan(bootstrap_ci(lambda idx: np.nan, 10, n_boot=20)))
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci(lambda idx: 1.0, 1)


def test_knn_votes_by_cosine_similarity():
    bank = np.array([[1.0, 0.0], [10.0, 0.5], [0.0, 1.0], [0.2, 3.0]])     # two directions, any length
    weights, idx = cosine_neighbours(bank, np.array([[5.0, 0.1]]), k=2)
    assert set(idx[0]) == {0, 1} and weights.shape == (1, 2) and (weights > 0).all()
    scores = knn_vote(bank, np.array([1.0, 1.0, 0.0, 0.0]), np.array([[3.0, 0.0], [0.0, 0.1]]), k=2)
    assert scores == pytest.approx([1.0, 0.0])
    probabilities = knn_vote(bank, np.eye(2)[[0, 0, 1, 1]], np.array([[0.1, 2.0]]), k=3)
    assert probabilities.sum() == pytest.approx(1.0) and probabilities[0, 1] > probabilities[0, 0]
    with pytest.raises(ValueError, match="k=5 neighbours asked from 4"):
        cosine_neighbours(bank, bank, k=5)


def test_knn_protocol_and_multiclass_accuracy():
    class WithClass(FindingsDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "class": "cardiomegaly" if self.requested[i, 0] else "normal"}

    train, test = WithClass(160, seed=41), WithClass(60, seed=42)
    encoder = random_net()
    knn = evaluate(encoder, MultiClassClassification(["normal", "cardiomegaly"]), "knn", (1.0,), train, test,
                   dataclasses.replace(CONFIG, k=5))
    assert list(knn["metric"]) == ["accuracy"] and knn["value"].iloc[0] > 0.6
    labels = evaluate(encoder, MultiLabelClassification(RENDERED), "knn", (1.0,), train, test,
                      dataclasses.replace(CONFIG, k=5))
    assert labels.set_index("metric").loc["auroc:Cardiomegaly", "value"] > 0.6


# ------------------------------------------------------------------------------------ registry
def test_registry_builds_by_name_and_round_trips_local_weights(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("reference", {"width": 8, "blocks": [1, 1, 1]})
    x = torch.rand(3, 1, SIZE, SIZE)
    maps = encoder.feature_maps(x)
    assert [m.shape[1] for m in maps] == list(encoder.feature_channels) == [8, 16, 32]
    assert [SIZE // m.shape[-1] for m in maps] == list(encoder.feature_strides)
    assert encoder.features(x).shape == (3, encoder.feature_dim)

    saved = save_encoder(encoder.eval(), tmp_path / "encoder.safetensors")
    again = build_encoder("reference", SMALL_NET, weights=saved).eval()
    assert torch.allclose(again.features(x), encoder.features(x))
    torch.save({f"backbone.{k}": v for k, v in encoder.state_dict().items()}, tmp_path / "whole.pt")
    picked = build_encoder("reference", SMALL_NET, weights=tmp_path / "whole.pt", prefix="backbone.").eval()
    assert torch.allclose(picked.features(x), encoder.features(x))
    with pytest.raises(ValueError, match="weights are missing"):
        build_encoder("reference", ReferenceConfig(width=8, blocks=(1, 1, 1, 1)), weights=saved)
    with pytest.raises(KeyError, match="expected one of"):
        build_encoder("no-such-encoder")
    with pytest.raises(ParameterError, match="blocks"):
        build_encoder("reference", ReferenceConfig(blocks=()))

    resnet = build_encoder("resnet18")
    assert resnet.features(x).shape == (3, 512) and len(resnet.feature_maps(x)) == 5
    timm_net = build_encoder("timm", TimmConfig(model_name="resnet10t"))
    assert timm_net.features(x).shape == (3, timm_net.feature_dim)
    assert [m.shape[1] for m in timm_net.feature_maps(x)] == list(timm_net.feature_channels)
    save_encoder(timm_net, tmp_path / "timm.safetensors")
    torch.save(timm_net.model.state_dict(), tmp_path / "timm-own.pth")   # timm's own weight names load too
    reloaded = build_encoder("timm", TimmConfig(model_name="resnet10t"), weights=tmp_path / "timm-own.pth").eval()
    assert torch.allclose(reloaded.features(x), timm_net.eval().features(x))


def test_a_system_registers_its_encoder_in_one_line():
    @dataclasses.dataclass
    class TinyConfig:
        width: int = 4

    class Tiny(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, config.width, 3, padding=1)
            self.feature_dim = config.width

        def features(self, x):
            return self.conv(x).mean(dim=(2, 3))

    register_encoder("tiny-test", TinyConfig)(Tiny)
    try:
        assert build_encoder("tiny-test", {"width": 6}).features(torch.rand(2, 1, 8, 8)).shape == (2, 6)
    finally:
        ENCODERS.pop("tiny-test")


# ------------------------------------------------------------------------------------ training
def test_fine_tune_trains_a_copy_and_tiny_sets_still_train():
    train, test = FindingsDataset(40, seed=51), FindingsDataset(30, seed=52, hide=0.0)
    encoder = random_net()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    config = dataclasses.replace(CONFIG, train=dataclasses.replace(HEADS, epochs=2, batch_size=64), n_boot=20)
    table = evaluate(encoder, MultiLabelClassification(RENDERED), "finetune", (1.0,), train, test, config)
    assert (np.isfinite(table["value"]) | table["reason"].str.startswith(("too few samples", "mean undefined"))).all()
    assert np.isfinite(table["value"]).any()
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())   # the caller's encoder untouched
    assert loop_for(HEADS, 5).batch_size == 5
    assert loop_for(HEADS, 40, min_steps=60).epochs == 60 // (40 // 16)


# ------------------------------------------------------------------------------------ guards
def _unlabelled(dataset):
    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return {**dataset[i], "labels": torch.full((len(CHEXPERT_LABELS),), float("nan"))}

    return Unlabelled()


def test_a_training_subset_without_definite_labels_is_refused():
    train, test = FindingsDataset(40, seed=61), FindingsDataset(30, seed=62, hide=0.0)
    with pytest.raises(ValueError, match="no definite .0/1. label"):
        evaluate(random_net(), MultiLabelClassification(RENDERED), "linear", (1.0,),
                 _unlabelled(train), test, CONFIG)
    recipe = ReferenceEncoderConfig(width=8, blocks=(1, 1, 1), image_size=SIZE, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="no definite .0/1. label"):
        train_reference_encoder(_unlabelled(train), recipe, name="unlabelled")


def test_a_finding_with_too_few_of_a_class_is_not_scored():
    from support.downstream.metrics import MIN_PER_CLASS, auroc_rows, f1_rows

    rng = np.random.default_rng(0)
    scores = rng.random((40, 1))
    common = {"n_boot": 50, "seed": 0, "confidence": 0.95, "min_test": 10}
    for positives, scored in ((MIN_PER_CLASS - 2, False), (MIN_PER_CLASS, True), (40 - MIN_PER_CLASS + 1, False)):
        labels = np.zeros((40, 1))
        labels[:positives] = 1
        auroc = auroc_rows(labels, scores, ["A"], **common)[0]
        assert np.isfinite(auroc["value"]) == scored, positives
        if not scored:
            assert auroc["reason"].startswith("too few samples: ") and f"{MIN_PER_CLASS} of each class" in auroc["reason"]
        f1 = f1_rows(labels, scores, ["A"], threshold=0.5, **common)[0]
        assert np.isfinite(f1["value"]) == (positives >= MIN_PER_CLASS)    # F1 needs positives, not negatives
    assert "3 positives among 40" in auroc_rows(np.r_[np.ones(3), np.zeros(37)][:, None], scores, ["A"],
                                                **common)[0]["reason"]


def test_findings_that_cannot_be_scored_are_nan_with_a_reason():
    train, test = FindingsDataset(60, seed=71), FindingsDataset(30, seed=72, hide=0.0)
    encoder = random_net()
    # a test set where no finding has both classes cannot score AUROC at all
    with pytest.raises(ValueError, match="AUROC is undefined"):
        evaluate(encoder, MultiLabelClassification(["No Finding"]), "knn", (1.0,), train,
                 FindingsDataset(20, seed=73, prevalence=0.0, hide=0.0), CONFIG)
    # in a mostly sick test set "No Finding" is all negative: NaN with its reason, while Cardiomegaly is scored
    mostly_sick = FindingsDataset(60, seed=75, prevalence=0.8, hide=0.0)
    assert not np.stack(mostly_sick.labels)[:, CHEXPERT_LABELS.index("No Finding")].any()
    table = evaluate(encoder, MultiLabelClassification(list(RENDERED) + ["No Finding"]), "knn", (1.0,), train,
                     mostly_sick, dataclasses.replace(CONFIG, k=5)).set_index("metric")
    assert np.isnan(table.loc["auroc:No Finding", "value"])
    assert "one class only" in table.loc["auroc:No Finding", "reason"]
    assert np.isfinite(table.loc["auroc:Cardiomegaly", "value"])
    assert np.isnan(table.loc["auroc", "value"])          # a mean over fewer findings would not compare
    assert table.loc["auroc", "reason"].startswith("mean undefined") and "'No Finding'" in table.loc["auroc", "reason"]
    # too few test samples, and more neighbours than training images
    few = evaluate(encoder, MultiLabelClassification(RENDERED), "knn", (1.0,), train, test,
                   dataclasses.replace(CONFIG, k=5, min_test=40))
    assert few["value"].isna().all()
    assert list(few["reason"][:3]) == ["too few samples: 30 test images with a definite label, at least 40 needed"] * 3
    many = evaluate(encoder, MultiLabelClassification(RENDERED), "knn", (1.0,), train, test,
                    dataclasses.replace(CONFIG, k=500)).set_index("metric")
    assert many["value"].isna().all() and "k=500" in many.loc["auroc:Cardiomegaly", "reason"]
    with pytest.raises(ValueError, match="needs a trained head"):
        evaluate(encoder, Segmentation(), "knn", (1.0,), train, test, CONFIG)


def test_dense_tasks_refuse_sets_without_masks_or_boxes(phantom):
    train, test = phantom
    encoder = random_net()
    normal = test[test["Cardiomegaly"] == 0]
    with pytest.raises(ValueError, match="none of its 25 masks has a foreground pixel; Dice is undefined"):
        evaluate(encoder, Segmentation(), "linear", (1.0,), MaskDataset(train, size=SIZE, labels=["Cardiomegaly"],
                 unannotated="empty"), MaskDataset(normal, size=SIZE, labels=["Cardiomegaly"], unannotated="empty"),
                 CONFIG)
    with pytest.raises(ValueError, match="has a box of .'Cardiomegaly'.; mAP is undefined"):
        evaluate(encoder, Detection(["Cardiomegaly"], channels=32), "linear", (1.0,), BoxDataset(train, size=SIZE),
                 BoxDataset(normal, size=SIZE), CONFIG)
    with pytest.raises(ValueError, match="learns nothing"):
        evaluate(encoder, Detection(["Cardiomegaly"], channels=32), "linear", (1.0,),
                 BoxDataset(train[train["Cardiomegaly"] == 0], size=SIZE), BoxDataset(test, size=SIZE), CONFIG)


def test_one_class_training_subsets_and_bad_settings_are_refused():
    class OneClass(FindingsDataset):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "class": "normal"}

    data = OneClass(20, seed=81)
    with pytest.raises(ValueError, match=r"hold \['normal'\] only"):
        evaluate(random_net(), MultiClassClassification(["normal", "cardiomegaly"]), "knn",
                 (1.0,), data, data, CONFIG)
    with pytest.raises(ValueError, match="protocol 'probe'"):
        evaluate(random_net(), MultiLabelClassification(RENDERED), "probe", (1.0,), data,
                 data, CONFIG)
    with pytest.raises(ParameterError, match="n_boot"):
        DownstreamConfig(n_boot=0).validate()
    positive = next(i for i, lab in enumerate(data.labels)
                    if any(lab[CHEXPERT_LABELS.index(f)] == 1 for f in RENDERED))
    with pytest.raises(ValueError, match="at least 2 training items"):
        evaluate(random_net(), MultiLabelClassification(RENDERED), "linear", (1.0,),
                 torch.utils.data.Subset(data, [positive]), FindingsDataset(20, seed=82, hide=0.0), CONFIG)


def test_f1_is_per_finding_with_an_interval_and_undefined_without_a_positive():
    from support.downstream.metrics import f1_rows

    labels = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, np.nan]] * 5)
    scores = np.array([[0.9, 0.9], [0.2, 0.1], [0.1, 0.2], [0.8, 0.3]] * 5)
    rows = {r["metric"]: r for r in f1_rows(labels, scores, ["A", "B"], threshold=0.5, n_boot=200, seed=0,
                                            confidence=0.95, min_test=10)}
    assert rows["f1:A"]["value"] == pytest.approx(2 * 5 / (10 + 10))          # tp 5, predicted 10, true 10
    assert rows["f1:A"]["ci_low"] <= rows["f1:A"]["value"] <= rows["f1:A"]["ci_high"]
    assert np.isnan(rows["f1:B"]["value"]) and "no positive" in rows["f1:B"]["reason"]
    few = f1_rows(labels[:4], scores[:4], ["A"], threshold=0.5, n_boot=10, seed=0, confidence=0.95, min_test=10)
    assert few[0]["reason"].startswith("too few samples")
