"""06's lateral table: only sets holding laterals are judged on them, against the real laterals, a
lateral copied from a training study is flagged by the audit, and a set too small is named, not scored."""

import shutil

import pandas as pd
import pytest
import torch

from support.data.adapters import load_dataset
from support.data.schema import LATERAL_VIEWS
from support.eval.evaluate import EvalConfig
from support.eval.reference_encoder import ReferenceEncoderConfig
from support.eval.sets import real_reference_encoder
from support.eval.views import evaluate_view, sets_with_view
from support.phantom import PhantomConfig, generate_phantom

torch.set_num_threads(1)


def _phantom(root, lateral_share, n=60, seed=3):
    generate_phantom(root, PhantomConfig(n_patients=n, image_size=32, seed=seed, lateral_share=lateral_share,
                                         text_share=0.0), workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("views")
    real = _phantom(base / "real", 0.9)
    records, _ = load_dataset("mimic-cxr-jpg", real)
    encoder = real_reference_encoder(records, base / "reference", ReferenceEncoderConfig(
        image_size=32, width=8, blocks=(1,), epochs=1, batch_size=16, device="cpu"), views=LATERAL_VIEWS)
    return base, real, records, encoder


def test_only_sets_with_laterals_are_judged_and_copies_of_training_laterals_are_flagged(world):
    base, real, records, encoder = world
    frontal_only = _phantom(base / "frontal-only", 0.0, n=12, seed=4)
    assert list(sets_with_view({"pairs": real, "frontal-only": frontal_only})) == ["pairs"]

    config = EvalConfig(seed=0, kid_subset_size=10, ms_ssim_pairs=20)
    # the real dataset itself as a "synthetic" set: its training laterals are copies of training studies
    table, details, skipped = evaluate_view({"copies": real}, records, encoder, config, 32)
    assert skipped == {} and list(table.index) == ["copies", "real (validate split)"]
    laterals = records[records["view"].isin(LATERAL_VIEWS)]
    assert table.loc["copies", "n_synthetic"] == len(laterals)
    assert table.loc["copies", "n_real"] == int((laterals["split"] == "test").sum())
    train_share = float((laterals["split"] == "train").mean())
    assert table.loc["copies", "privacy_share_flagged"] >= 0.9 * train_share      # the copies are caught
    assert table.loc["real (validate split)", "privacy_share_flagged"] < 0.5 * train_share
    assert len(details["train"]) == int((laterals["split"] == "train").sum())


def test_a_set_with_too_few_laterals_is_named_not_scored(world, tmp_path):
    base, real, records, encoder = world
    few = tmp_path / "few"
    shutil.copytree(real, few)
    meta = pd.read_csv(few / "mimic-cxr-2.0.0-metadata.csv")
    lateral_rows = meta.index[meta["ViewPosition"].isin(LATERAL_VIEWS)]
    meta.loc[lateral_rows[3:], "ViewPosition"] = "PA"            # three laterals left
    meta.to_csv(few / "mimic-cxr-2.0.0-metadata.csv", index=False)
    table, _, skipped = evaluate_view({"few": few}, records, encoder, EvalConfig(seed=0, kid_subset_size=10), 32)
    assert skipped == {"few": "too few samples: 3 LATERAL/LL images, more than k = 5 needed"}
    assert "few" not in table.index
    no_real = records[~(records["view"].isin(LATERAL_VIEWS) & (records["split"] == "test"))]
    table, _, skipped = evaluate_view({"few": few}, no_real, encoder, EvalConfig(seed=0, kid_subset_size=10), 32)
    assert table.empty and skipped["few"].startswith("too few samples: 0 real LATERAL/LL test images")
