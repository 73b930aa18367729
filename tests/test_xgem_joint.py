"""XGeM's joint stage on frozen backbones: the joint layers start as the identity (the joint model is
the independent one until trained), only the environment encoders and joint layers learn, the
other modality's token reaches each model once trained, and a resume repeats the run bit for bit."""

import pytest
import torch
import torch.nn.functional as F

from sabotage import Sabotaged
from support.core import trainer
from support.io import load_state_dict
from support.xgem.config import xgem_config
from support.xgem.diffusion import predict_noise, train_denoiser
from support.xgem.joint import (PAIRS, JointStage, JointTask, build_joint_model, condition_of,
                                load_backbones, load_joint, train_joint)
from test_xgem_diffusion import C, D, E, S, encoded

torch.set_num_threads(1)
CONFIG = xgem_config("test")


@pytest.fixture(scope="module")
def stage4(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage4")
    enc = encoded(12, has_lateral=[True] * 10 + [False] * 2, has_report=[True] * 11 + [False])
    for m in ("frontal", "lateral", "report"):
        train_denoiser(CONFIG, m, enc, root / m, progress=False)
    return root, enc


def test_pairs_and_their_condition():
    assert PAIRS == (("frontal", "lateral"), ("frontal", "report"), ("lateral", "report"))
    assert [condition_of(p) for p in PAIRS] == ["report", "lateral", "frontal"]


def test_joint_layers_start_as_the_identity(stage4):
    root, enc = stage4
    plain = load_backbones(root)
    model = build_joint_model(CONFIG, load_backbones(root), D).eval()
    noisy = {"frontal": torch.randn(3, C, S, S), "report": torch.randn(3, D)}
    t, ctx = torch.tensor([10, 500, 900]), F.normalize(torch.randn(3, E), dim=-1)
    preds, tokens = model.pair_noise(("frontal", "report"), noisy, t, ctx)
    for m in ("frontal", "report"):
        torch.testing.assert_close(preds[m], predict_noise(plain[m].eval(), noisy[m], t, ctx, None))
        assert tokens[m].shape == (3, E) and torch.allclose(tokens[m].norm(dim=-1), torch.ones(3))
    trained = model.trained_state()
    assert trained and all(k.startswith(("environment.", "joint.")) for k in trained)
    assert not any(p.requires_grad for p in model.backbones["frontal"].conv_in.parameters())


@pytest.fixture(scope="module")
def joint_run(stage4, tmp_path_factory):
    root, enc = stage4
    out = tmp_path_factory.mktemp("joint")
    history = train_joint(CONFIG, enc, root, out, progress=False)
    return out, history


def test_only_the_joint_parts_learn_and_the_other_token_then_matters(stage4, joint_run):
    root, enc = stage4
    out, history = joint_run
    assert history["n_studies"] == 10 and history["left_out"] == {"no lateral or no report": 2}
    assert history["trained_parameters"] > 0 and history["frozen_parameters"] > history["trained_parameters"]
    assert all(torch.isfinite(torch.tensor(history["loss/infonce"])))
    model = load_joint(CONFIG, root, out, D).eval()
    backbones = load_backbones(root)                      # stage 4's files are untouched
    for m in backbones:
        a, b = backbones[m].state_dict(), model.backbones[m].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # push the joint layers off zero: the environment token now changes the prediction
    for layer in model.joint["frontal"]:
        torch.nn.init.normal_(layer.to_out.weight, std=0.1)
    x, t, ctx = torch.randn(2, C, S, S), torch.tensor([100, 700]), F.normalize(torch.randn(2, E), dim=-1)
    env1, env2 = F.normalize(torch.randn(2, 1, E), dim=-1), F.normalize(torch.randn(2, 1, E), dim=-1)
    m = model.backbones["frontal"]
    assert not torch.allclose(predict_noise(m, x, t, ctx, env1), predict_noise(m, x, t, ctx, env2))
    torch.testing.assert_close(predict_noise(m, x, t, ctx, None), predict_noise(backbones["frontal"].eval(), x, t, ctx, None))


def test_joint_resume_after_a_crash_is_bit_identical(stage4, joint_run, tmp_path):
    root, enc = stage4
    out_a, history_a = joint_run
    task = JointTask(CONFIG, enc, root, tmp_path)
    task.train_set = Sabotaged(task.train_set, after=4 * 2 + 2, mode="crash", key="frontal_mean")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(task, JointStage(CONFIG.joint, CONFIG.diffusion, CONFIG.loops.joint), tmp_path, progress=False)
    history_b = train_joint(CONFIG, enc, root, tmp_path, progress=False)
    assert history_b["loss"] == history_a["loss"]
    a, b = load_state_dict(out_a / "joint.safetensors"), load_state_dict(tmp_path / "joint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_joint_weights_of_another_model_are_refused(stage4, joint_run, tmp_path):
    root, enc = stage4
    out, _ = joint_run
    wider = xgem_config("test", {"joint": {"env_width": 32}})
    with pytest.raises(ValueError, match="joint weights do not match this model"):
        load_joint(wider, root, out, D)
    assert not (tmp_path / "joint.safetensors").exists()
