"""DINO pretraining: lightly's head and loss are the ones used, the teacher follows the momentum
schedule, the prototypes stay fixed in epoch 0, a resumed run ends where an uninterrupted one
does, crops are seeded and grayscale-aware, and the exported encoder is a downstream encoder."""

import types

import pytest
import torch

from sabotage import Sabotaged
from support.core import trainer
from support.ddpm.data import SyntheticDiscs
from support.io import load_state_dict
from support.ssl.config import dino_config
from support.ssl.data import MultiCropImages, dino_transform
from support.downstream.encoders import load_encoder_folder
from support.ssl.train import DINOTask, train_dino

torch.set_num_threads(1)


class Discs(torch.utils.data.Dataset):
    """Bright discs at random places, as images in [0, 1]."""

    def __init__(self, n=16, size=32, seed=0):
        self.images = (SyntheticDiscs(n, size, seed=seed).images + 1) / 2

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


CONFIG = dino_config("test", {"train": {"momentum_start": 0.9}})     # 2 epochs of 4 updates


def test_the_published_head_and_loss_are_lightlys():
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead

    config = dino_config("full")
    task = DINOTask(config, Discs())
    task.ctx = types.SimpleNamespace(device=torch.device("cpu"))
    task.setup()
    assert isinstance(task.criterion, DINOLoss) and isinstance(task.student.head, DINOProjectionHead)
    linears = [m for m in task.student.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 512), (512, 512), (512, 64), (64, 2048)]
    assert task.student.backbone.feature_dim == 384 and task.student.head.freeze_last_layer == 1
    assert (task.criterion.student_temp, task.criterion.center_momentum) == (0.1, 0.9)
    assert task.criterion.teacher_temp == 0.04 and task.criterion.warmup_teacher_temp_epochs == 5
    assert (config.crops.global_size, config.crops.local_size, config.crops.local_views) == (224, 96, 6)
    assert (config.train.optimizer, config.train.learning_rate, config.train.batch_size, config.train.epochs) == \
        ("adam", 1e-3, 32, 500)
    assert all(not p.requires_grad for p in task.teacher.parameters())


def test_the_small_data_recipe_reaches_lightlys_head():
    """quick's head: batch norm and prototypes of free norm; full keeps DINO's fixed-norm prototypes."""
    def head(profile):
        task = DINOTask(dino_config(profile), Discs())
        task.ctx = types.SimpleNamespace(device=torch.device("cpu"))
        task.setup()
        return task.student.head

    quick, full = head("quick"), head("full")
    assert quick.last_layer.weight_g.requires_grad and not full.last_layer.weight_g.requires_grad
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in quick.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in full.modules())
    assert quick.last_layer.weight_v.shape[0] == 64 and dino_config("quick").train.momentum_start == 0.99


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A test-profile run that records, after every update, the student, the teacher and the prototypes."""
    out = tmp_path_factory.mktemp("dino")
    task = DINOTask(CONFIG, Discs())
    seen = []

    def record(step, student):
        seen.append({"step": step, "epoch": (step - 1) // 4,
                     "student": {k: v.detach().clone() for k, v in task.student.state_dict().items()},
                     "teacher": {k: v.detach().clone() for k, v in task.teacher.state_dict().items()}})

    history = trainer.fit(task, CONFIG, out, on_update=record, progress=False)
    return out, history, task, seen


def test_teacher_weights_follow_the_momentum_schedule(run):
    from lightly.utils.scheduler import cosine_schedule

    _, history, task, seen = run
    assert history["max_steps"] == 8
    for before, after in zip(seen, seen[1:]):
        m = cosine_schedule(after["step"] - 1, 8, 0.9, 1.0)
        for name, teacher in after["teacher"].items():
            if teacher.is_floating_point() and "last_layer" not in name:
                expected = m * before["teacher"][name] + (1 - m) * after["student"][name]
                torch.testing.assert_close(teacher, expected, rtol=0, atol=1e-6, msg=name)
    assert task.teacher_momentum(1) == 0.9 and task.teacher_momentum(8) == 1.0
    assert 0.9 < task.teacher_momentum(4) < 1.0


def test_the_prototypes_stay_fixed_in_epoch_0_and_learn_after(run):
    _, _, task, seen = run
    name = next(k for k in seen[0]["student"] if k.startswith("head.last_layer") and k.endswith("weight_v"))
    epoch0 = [s["student"][name] for s in seen if s["epoch"] == 0]
    epoch1 = [s["student"][name] for s in seen if s["epoch"] == 1]
    assert len(epoch0) == 4 and all(torch.equal(w, epoch0[0]) for w in epoch0)
    assert not torch.equal(epoch1[-1], epoch0[0])
    assert not torch.equal(seen[3]["student"]["head.layers.0.weight"], seen[0]["student"]["head.layers.0.weight"])


def test_resume_after_a_crash_ends_in_the_same_teacher_and_centre(run, tmp_path):
    out_a, history_a, *_ = run
    # each update reads 4 items; the crash comes inside update 7, after checkpoint-6
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_dino(CONFIG, Sabotaged(Discs(), after=4 * 6, mode="crash", key="image"), tmp_path, progress=False)
    history_b = train_dino(CONFIG, Discs(), tmp_path, progress=False)
    assert history_b["loss"] == history_a["loss"]
    for name in ("teacher.safetensors", "loss.safetensors"):
        a = load_state_dict(out_a / "checkpoints" / "checkpoint-00000008" / name)
        b = load_state_dict(tmp_path / "checkpoints" / "checkpoint-00000008" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_exported_encoder_is_the_teacher_backbone_and_a_dense_encoder(run):
    from support.downstream import check_encoder

    out, _, task, *_ = run
    encoder = load_encoder_folder(out / "encoder")
    check_encoder(encoder, dense=True)
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(encoder.features(x), task.teacher.backbone.eval().features(x))
    assert [m.shape[-1] for m in encoder.feature_maps(x)] == [16, 8, 4, 2]
    assert encoder.info["method"] == "dino" and encoder.info["source"] == "images"


def test_the_exported_encoder_is_a_feature_space_for_06(run):
    from support.eval.evaluate import EvalConfig, feature_space_table
    from support.eval.features import PretrainedEncoderFeatures

    out, _, task, *_ = run
    space = PretrainedEncoderFeatures(out / "encoder", device="cpu")
    assert space.name == "dino:images"
    x = torch.rand(3, 1, 64, 64)                     # 06's size: resized to the 32 px the ViT was built for
    expected = task.teacher.backbone.eval().features(torch.nn.functional.interpolate(
        x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True))
    torch.testing.assert_close(space.embed(x), expected)
    real, same, other = Discs(24, seed=1).images, Discs(24, seed=2).images, 1 - Discs(24, seed=3).images
    table = feature_space_table({"same": same, "inverted": other}, Discs(24, seed=4).images, real, space,
                                EvalConfig(kid_subset_size=10, turing_folds=3, ms_ssim_pairs=10, ms_ssim_size=32))
    assert table["set"].tolist() == ["same", "inverted", "real (validate split)"]
    assert (table["feature_space"] == "dino:images").all()
    fd = table.set_index("set")["fd"]
    assert fd["inverted"] > fd["same"]              # discs on black vs holes in white: far apart here too


def test_crops_are_seeded_grayscale_and_never_flipped():
    import torchvision.transforms.v2 as T

    views = MultiCropImages(Discs(), CONFIG.crops, seed=5)
    first, again = views[3], views[3]
    assert len(first) == 2 + CONFIG.crops.local_views
    assert [tuple(v.shape) for v in first[:3]] == [(1, 32, 32), (1, 32, 32), (1, 16, 16)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))           # a function of (seed, epoch, item)
    views.set_epoch(1)
    assert not torch.equal(views[3][0], first[0])
    state = torch.get_rng_state()
    views[2]
    assert torch.equal(torch.get_rng_state(), state)                        # the global stream is untouched
    steps = [t for view in dino_transform(CONFIG.crops).transforms for t in view.transform.transforms]
    flips = [t for t in steps if isinstance(t, (T.RandomHorizontalFlip, T.RandomVerticalFlip))]
    assert flips and all(t.p == 0 for t in flips)
    jitter = [j for t in steps if isinstance(t, T.RandomApply) for j in t.transforms if isinstance(j, T.ColorJitter)]
    assert jitter and all(j.saturation is None and j.hue is None for j in jitter)


def test_the_judged_tasks_use_only_labels_the_data_can_score():
    import numpy as np
    import pandas as pd

    from support.downstream.suite import plot_sources, pneumonia_labels, scorable_findings

    nan = np.nan
    rows = pd.DataFrame({"Pneumonia": [1, nan, nan, 0, -1], "No Finding": [nan, 1, nan, nan, nan]})
    # a normal study is a pneumonia negative; an unmentioned or uncertain one stays unknown
    assert pneumonia_labels(rows)["Pneumonia"].tolist()[:4] == [1, 0, pytest.approx(nan, nan_ok=True), 0]
    assert pneumonia_labels(rows)["Pneumonia"].iloc[4] == -1

    train = pd.DataFrame({"A": [1, 0] * 10, "B": [0] * 20, "C": [1, 0] * 10, "D": [1] * 20, "F": [1, 0] * 10})
    test = pd.DataFrame({"A": [1, 0] * 10, "B": [1, 0] * 10, "C": [1, 0, nan, nan] * 3 + [nan] * 8, "D": [1] * 20,
                         "F": [1] * 9 + [0] * 11})
    kept, dropped = scorable_findings(train, test, ["A", "B", "C", "D", "E", "F"], min_test=10)
    assert kept == ["A"]
    assert dropped["B"] == "no positive training label"
    assert dropped["C"].startswith("too few samples: 6 definite")
    assert "9 positives" in dropped["F"]             # one short of the 10 each class needs
    assert dropped["D"].startswith("one class only") and "not a column" in dropped["E"]

    nothing = pd.DataFrame({"source": ["none"], "task": ["lungs"], "protocol": ["linear"], "fraction": [1.0],
                            "metric": ["dice"], "value": [nan], "ci_low": [nan], "ci_high": [nan],
                            "reason": ["too few samples"]})
    assert plot_sources(nothing) is None


def test_07s_overrides_reach_the_config_and_its_budget_is_shared():
    from support.ssl.config import notebook_config

    config = notebook_config("quick", seed=3, pretrain_steps=300,
                             overrides={"head": {"prototypes": 128}, "train": {"momentum_start": 0.99, "seed": 9}})
    assert config.head.prototypes == 128 and config.head.hidden_dim == 256      # the rest stays the preset's
    assert (config.train.momentum_start, config.train.max_steps, config.train.epochs) == (0.99, 300, None)
    assert config.train.seed == 3                                              # the notebook's seed wins
    assert notebook_config("quick").train.epochs == 6                          # no budget: the preset's epochs
    with pytest.raises(ValueError, match="dino_overrides"):
        notebook_config("quick", overrides={"head": {"protoypes": 128}})


def test_a_run_whose_loss_settles_at_ln_k_is_called_a_uniform_collapse():
    import math

    from support.ssl.train import uniform_collapse

    k = 512
    # the loss measured in a 300-update run at the published Adam lr 1e-3: up from 4.4 to ln 512
    assert uniform_collapse([4.37, 6.0, 6.22] + [math.log(k)] * 27, k)
    assert not uniform_collapse([6.2, 5.9, 5.5] + [5.0] * 27, k)       # learning: below ln K
    assert not uniform_collapse([4.37, 6.0, 6.22] + [math.log(k)] * 27, 4096)
    assert not uniform_collapse([], k)


def test_resident_task_data_decodes_each_item_once_and_keeps_the_records():
    from support.downstream.suite import Resident

    class Counting(Discs):
        records = "the table"

        def __init__(self):
            super().__init__(n=4, size=8)
            self.reads = 0

        def __getitem__(self, i):
            self.reads += 1
            return super().__getitem__(i)

    data = Counting()
    resident = Resident(data)
    for _ in range(3):      # three epochs
        items = [resident[i] for i in range(len(resident))]
    assert data.reads == 4 and len(resident) == 4
    assert torch.equal(items[2]["image"], data.images[2])
    assert resident.records == "the table"      # patient ids and labels are read from the table
    with pytest.raises(AttributeError):
        resident.missing


def test_an_imagenet_style_rgb_checkpoint_starts_the_gray_vit(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    from support.downstream.backbones import load_vit_weights
    from support.params import ParameterError
    from support.ssl.train import start_backbone

    b = CONFIG.backbone
    rgb = VisionTransformer(img_size=48, patch_size=b.patch_size, in_chans=3, num_classes=10, embed_dim=b.embed_dim,
                            depth=b.depth, num_heads=b.num_heads)                 # another grid, a classifier head
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, tmp_path / "vit.safetensors")
    config = dino_config("test", {"init_weights": str(tmp_path / "vit.safetensors")})
    vit = start_backbone(config)
    own = vit.model.state_dict()
    # RGB patch filters summed to one gray channel; the same blocks; the grid resampled to 32 px / 8
    assert torch.allclose(own["patch_embed.proj.weight"], rgb.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(own["blocks.3.mlp.fc2.weight"], rgb.blocks[3].mlp.fc2.weight)
    assert own["pos_embed"].shape[1] == 1 + (32 // 8) ** 2 and rgb.pos_embed.shape[1] == 1 + (48 // 8) ** 2
    assert not torch.equal(own["blocks.0.attn.qkv.weight"], start_backbone(CONFIG).model.state_dict()["blocks.0.attn.qkv.weight"])

    shallow = {k: v.contiguous() for k, v in rgb.state_dict().items() if not k.startswith("blocks.3.")}
    save_file(shallow, tmp_path / "shallow.safetensors")
    with pytest.raises(ValueError, match="weights are missing"):
        load_vit_weights(start_backbone(CONFIG), tmp_path / "shallow.safetensors")
    with pytest.raises(ParameterError, match="init_weights"):
        dino_config("test", {"init_weights": str(tmp_path / "absent.safetensors")}).validate()


def test_the_benchmark_times_both_loops_on_the_same_work():
    from support.benchmarks.dino import run as benchmark

    result = benchmark(profile="test", updates=2, warmup=1, repeats=1, device="cpu")
    assert result["ours_images_per_s"] > 0 and result["lightly_example_images_per_s"] > 0
    assert result["ratio_ours_over_lightly_example"] == pytest.approx(
        result["ours_images_per_s"] / result["lightly_example_images_per_s"])
    assert result["crops"] == "2 x 32 px + 2 x 16 px" and result["batch_size"] == 4


def test_a_source_smaller_than_one_batch_is_named_and_the_others_still_train(tmp_path):
    from support.ssl.evaluate import pretrain

    batch = CONFIG.train.batch_size
    with pytest.warns(UserWarning, match="'tiny' skipped"):
        encoders, skipped = pretrain({"tiny": Discs(batch - 1), "discs": Discs(), "none": None}, CONFIG, tmp_path)
    assert set(encoders) == {"discs", "none"} and list(skipped) == ["tiny"]
    assert f"{batch - 1} items give no full batch of {batch}" in skipped["tiny"]
    assert not (tmp_path / "dino-tiny").exists() and (tmp_path / "dino-discs" / "encoder").is_dir()
    with pytest.raises(ValueError, match="every source is smaller than one batch"), pytest.warns(UserWarning):
        pretrain({"tiny": Discs(batch - 1), "none": None}, CONFIG, tmp_path / "again")
