"""The reference encoder: masked BCE, training with held-out AUROC, caching per dataset
fingerprint, embeddings; and conditional fidelity scored with it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from support.data.schema import CHEXPERT_LABELS
from support.eval import reference_encoder as ref
from support.eval.conditional import conditional_fidelity
from support.eval.features import FeatureEncoder, embed_set
from test_eval_helpers import RENDERED, FindingsDataset, render

torch.set_num_threads(1)

CONFIG = ref.ReferenceEncoderConfig(width=8, blocks=(1, 1, 1), image_size=32, epochs=6, batch_size=32,
                                    lr=3e-3, device="cpu", seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = FindingsDataset(320, seed=1)
    cache = tmp_path_factory.mktemp("reference-cache")
    encoder = ref.reference_encoder_for(data, cache, CONFIG, groups=data.subjects, name="findings")
    return data, cache, encoder


def test_masked_bce_ignores_unknown_and_uncertain_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    labels = torch.tensor([[1.0, float("nan"), -1.0]])
    from support.downstream import masked_bce

    loss = masked_bce(logits, labels)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(-2.0)).item())
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 2] == 0 and logits.grad[0, 0] != 0
    assert masked_bce(logits, torch.full((1, 3), float("nan"))).item() == 0.0


def test_split_by_patient_keeps_patients_whole():
    groups = [f"p{i // 3}" for i in range(60)]
    train, val = ref.split_indices(60, 0.25, seed=0, groups=groups)
    assert len(set(train) | set(val)) == 60
    assert not {groups[i] for i in train} & {groups[i] for i in val}


def test_training_learns_rendered_findings_and_reports_held_out_auroc(trained):
    _, _, encoder = trained
    auroc = encoder.val_auroc
    assert set(auroc) == set(CHEXPERT_LABELS)
    for finding in RENDERED:
        assert auroc[finding] > 0.85, (finding, auroc[finding])
    assert np.isnan(auroc["Edema"])  # never labelled: undefined, not invented
    assert encoder.info["n_val"] > 0 and encoder.info["n_train"] + encoder.info["n_val"] == 320


def test_encoder_is_a_feature_encoder_with_penultimate_features(trained):
    data, _, encoder = trained
    assert isinstance(encoder, FeatureEncoder)
    feats = embed_set(encoder, data, batch_size=50, name="findings")
    assert feats.shape == (320, 8 * 4) and np.isfinite(feats).all()
    # other sizes and uint8 input are resized/scaled to the trained input
    big = torch.nn.functional.interpolate(data[0]["image"][None], size=64, mode="bilinear")
    assert encoder.embed(big).shape == (1, 32)
    assert encoder.predict_proba((data[0]["image"][None] * 255).round().to(torch.uint8)).shape == (1, 14)


def test_cache_is_reused_for_the_same_fingerprint_and_config(trained, monkeypatch):
    data, cache, encoder = trained
    dirs = list(cache.iterdir())
    assert len(dirs) == 1 and {p.name for p in dirs[0].iterdir()} == {"model.safetensors", "config.json"}
    meta = json.loads((dirs[0] / "config.json").read_text())
    assert meta["fingerprint"] == ref.dataset_fingerprint(data) and meta["val_auroc"]["Edema"] is None
    assert meta["val_auroc"]["Cardiomegaly"] == pytest.approx(encoder.val_auroc["Cardiomegaly"])

    def no_training(*a, **k):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(ref, "train_reference_encoder", no_training)
    again = ref.reference_encoder_for(data, cache, CONFIG, name="findings")
    x = torch.stack([data[i]["image"] for i in range(8)])
    assert torch.allclose(again.embed(x), encoder.embed(x), atol=1e-6)
    assert again.val_auroc.keys() == encoder.val_auroc.keys() and np.isnan(again.val_auroc["Edema"])
    # a different training config is a different cache entry
    with pytest.raises(AssertionError, match="trained again"):
        ref.reference_encoder_for(data, cache, dataclasses.replace(CONFIG, width=4), name="findings")
    # so is a different dataset (fingerprint of its content)
    with pytest.raises(AssertionError, match="trained again"):
        ref.reference_encoder_for(FindingsDataset(10, seed=2), cache, CONFIG)


def test_bad_items_name_the_dataset_index_and_field():
    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(1, 8, 8), "labels": torch.zeros(3)}

    with pytest.raises(ValueError, match=r"bad\[\d\]\.labels: expected shape \(14,\)"):
        ref.train_reference_encoder(Bad(), dataclasses.replace(CONFIG, epochs=1), name="bad")

    class Scaled(Bad):
        def __getitem__(self, i):
            return {"image": torch.full((1, 8, 8), -1.0), "labels": torch.tensor([float(i % 2)] * 14)}

    with pytest.raises(ValueError, match=r"scaled\[\d\]\.image: float pixels must lie in \[0, 1\]"):
        ref.train_reference_encoder(Scaled(), dataclasses.replace(CONFIG, epochs=1), name="scaled")


def test_conditional_fidelity_rewards_images_that_show_the_requested_findings(trained):
    _, _, encoder = trained
    rng = np.random.default_rng(5)
    requested = (rng.random((120, 3)) < 0.5).astype(float)
    faithful = np.stack([render(rng, dict(zip(RENDERED, map(bool, r)))) for r in requested])
    ignoring = np.stack([render(rng, {f: False for f in RENDERED}) for _ in requested])
    good = conditional_fidelity(encoder, faithful, requested, label_names=RENDERED)
    bad = conditional_fidelity(encoder, ignoring, requested, label_names=RENDERED)
    assert set(good) == set(RENDERED)
    assert min(good.values()) > 0.85
    assert max(abs(v - 0.5) for v in bad.values()) < 0.2
    import pandas as pd
    as_frame = conditional_fidelity(encoder, faithful, pd.DataFrame(requested, columns=RENDERED))
    assert as_frame == pytest.approx(good)
    with pytest.raises(KeyError, match="does not predict"):
        conditional_fidelity(encoder, faithful, requested, label_names=("Cardiomegaly", "Effusion?", "Pneumothorax"))
    # nine images asked for the first finding: too few to rank, NaN rather than a number
    few = requested.copy()
    few[:, 0] = 0.0
    few[:9, 0] = 1.0
    guarded = conditional_fidelity(encoder, faithful, few, label_names=RENDERED)
    assert np.isnan(guarded[RENDERED[0]]) and guarded[RENDERED[1]] == pytest.approx(good[RENDERED[1]])
