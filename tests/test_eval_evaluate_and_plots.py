"""evaluate_set: one flat row of every metric per synthetic set; and the evaluation figures."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from support.eval import plots  # noqa: E402
from support.eval.evaluate import EvalConfig, evaluate_set, prepare_real  # noqa: E402
from support.eval.features import embed_set  # noqa: E402
from support.eval.privacy import build_privacy_index  # noqa: E402
from support.eval.reference_encoder import ReferenceEncoderConfig, reference_encoder_for  # noqa: E402
from test_eval_helpers import RENDERED, FindingsDataset  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    train = FindingsDataset(240, seed=31)
    config = ReferenceEncoderConfig(width=8, blocks=(1, 1, 1), image_size=32, epochs=6, lr=3e-3, device="cpu")
    encoder = reference_encoder_for(train, tmp_path_factory.mktemp("ref"), config, groups=train.subjects)
    real_test = FindingsDataset(150, seed=32)
    eval_config = EvalConfig(kid_subsets=20, kid_subset_size=100, ms_ssim_pairs=60, batch_size=64)
    real = prepare_real(real_test, encoder, eval_config)
    index = build_privacy_index(embed_set(encoder, train), train, train.subjects, quantile=0.95)
    good = FindingsDataset(150, seed=33)
    copies = np.stack([train.images[i] for i in range(150)])              # a memorising generator
    noise = np.random.default_rng(0).random((150, 32, 32), dtype=np.float32)
    kw = dict(config=eval_config, privacy_index=index)
    rows = [evaluate_set(good, real, encoder, name="good", requested_labels=good.requested,
                         label_names=RENDERED, **kw),
            evaluate_set(copies, real, encoder, name="copies", **kw),
            evaluate_set(noise, real, encoder, name="noise", **kw)]
    return encoder, real, pd.DataFrame(rows)


def test_rows_are_flat_and_complete(evaluation):
    _, _, table = evaluation
    expected = {"set", "n_synthetic", "n_real", "feature_space", "fd", "kid_mean", "kid_std", "precision", "recall",
                "density", "coverage", "ms_ssim", "ms_ssim_real", "turing_auroc", "turing_auroc_std",
                "privacy_share_flagged", "privacy_n_flagged"}
    assert expected <= set(table.columns)
    good = table.set_index("set").loc["good"]
    assert {f"cond_auroc/{f}" for f in RENDERED} <= set(table.columns) and good["cond_auroc_mean"] > 0.85
    assert all(np.isscalar(v) for v in table.iloc[0].to_dict().values())


def test_metrics_rank_a_good_set_above_noise(evaluation):
    _, real, table = evaluation
    t = table.set_index("set")
    assert t.loc["good", "fd"] < 0.2 * t.loc["noise", "fd"]
    assert t.loc["good", "kid_mean"] < t.loc["noise", "kid_mean"]
    assert t.loc["good", "precision"] > 0.7 and t.loc["noise", "precision"] < 0.1
    assert t.loc["good", "coverage"] > 0.7 and t.loc["noise", "coverage"] < 0.1
    assert t.loc["good", "turing_auroc"] < 0.7 and t.loc["noise", "turing_auroc"] > 0.95
    assert t.loc["good", "ms_ssim_real"] == pytest.approx(real.ms_ssim["ms_ssim_mean"])
    # the memorising generator looks perfect on fidelity but fails the privacy audit
    assert t.loc["copies", "privacy_share_flagged"] > 0.9
    assert t.loc["good", "privacy_share_flagged"] < 0.1


def test_inception_fid_joins_the_row_and_reuses_real_statistics(evaluation, tmp_path):
    pytest.importorskip("torch_fidelity")
    from support.eval.inception import InceptionFID
    from test_eval_helpers import random_inception_state

    encoder, real, _ = evaluation
    torch.save(random_inception_state(), tmp_path / "inception.pth")
    fid = InceptionFID(tmp_path / "inception.pth", device="cpu", feature_dim=64, batch_size=50)
    cfg = EvalConfig(kid_subsets=5, kid_subset_size=50, ms_ssim_pairs=10, max_images=20)
    real_small = prepare_real(real.images, encoder, cfg)
    same = evaluate_set(real_small.images, real_small, encoder, name="real again", config=cfg, inception=fid)
    assert int(fid.metric.real_features_num_samples) == 20
    noise = np.random.default_rng(1).random((40, 32, 32), dtype=np.float32)
    other = evaluate_set(noise, real_small, encoder, name="noise", config=cfg, inception=fid)
    assert int(fid.metric.real_features_num_samples) == 20     # computed once, reused
    assert other["n_synthetic"] == 20                          # capped by max_images
    assert abs(same["fid_inception"]) < 1e-3 * other["fid_inception"]


def test_encoder_mismatch_is_an_error(evaluation):
    encoder, real, _ = evaluation

    class Other:
        name = "other"

        def embed(self, images):
            return images.flatten(1)

    with pytest.raises(ValueError, match="embedded with"):
        evaluate_set(np.zeros((10, 32, 32), np.float32), real, Other())


def test_a_set_too_small_for_the_neighbours_is_named(evaluation):
    encoder, real, _ = evaluation
    with pytest.raises(ValueError, match=r"synthetic set 'tiny': 5 image\(s\).*k = 5"):
        evaluate_set(np.zeros((5, 32, 32), np.float32), real, encoder, name="tiny")


def test_precision_recall_figure(evaluation, tmp_path):
    _, _, table = evaluation
    fig = plots.plot_precision_recall(table)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0 or p.get_width() > 0]
    assert len([p for p in ax.patches]) >= 12 - 2  # 3 sets x 4 metrics (zero-height bars may be dropped)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["good", "copies", "noise"]
    assert len(bars) > 0
    fig.savefig(tmp_path / "prdc.png")
    with pytest.raises(KeyError, match="coverage"):
        plots.plot_precision_recall(table.drop(columns="coverage"))


def test_auroc_and_utility_figures(tmp_path):
    rows = []
    for regime in ("real", "synthetic", "synthetic->real"):
        for fraction in (0.01, 0.1, 1.0):
            for finding in ("Cardiomegaly", "Pneumothorax"):
                a = 0.6 + 0.3 * fraction
                rows.append({"regime": regime, "fraction": fraction, "finding": finding, "auroc": a,
                             "ci_low": a - 0.05, "ci_high": a + 0.05})
    df = pd.DataFrame(rows)
    fig = plots.plot_utility_curves(df)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Cardiomegaly", "Pneumothorax"]
    assert len([ln for ln in panels[0].get_lines() if len(ln.get_xdata()) == 3]) == 3  # one line per regime
    assert list(panels[0].get_lines()[0].get_xdata()) == [1.0, 10.0, 100.0]
    fig.savefig(tmp_path / "utility.png")

    one = df[(df["fraction"] == 1.0)]
    fig = plots.plot_finding_auroc(one, group_column="regime")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Cardiomegaly", "Pneumothorax"]
    assert len(ax.containers) == 3  # one errorbar container per regime
    fig.savefig(tmp_path / "auroc.png")
    assert (tmp_path / "auroc.png").stat().st_size > 1000
