"""XGeM end to end on a small phantom (``test`` profile): the five stages in one folder, the
system loaded back, and all 12 directions from one function, each returning outputs of the right
kind and shape; missing inputs are named."""

import pytest
import torch

from support.xgem.config import xgem_config
from support.xgem.generate import DIRECTIONS, direction_name, generate, parse_direction
from support.xgem.train import STAGES, encoded_studies, load_xgem

torch.set_num_threads(1)
CONFIG = xgem_config("test")


def test_the_twelve_directions_are_parsed_as_published():
    assert len(DIRECTIONS) == 12 and len(set(DIRECTIONS)) == 12
    pairs = {parse_direction(d) for d in DIRECTIONS}
    assert (("report",), ("frontal", "lateral")) in pairs and (("frontal", "lateral"), ("report",)) in pairs
    assert sum(len(o) == 2 for _, o in pairs) == 3 and sum(len(i) == 2 for i, _ in pairs) == 3
    assert all(direction_name(*parse_direction(d)) == d for d in DIRECTIONS)
    for bad in ("F->F", "X->L", "F-L", "F+F->T"):
        with pytest.raises(ValueError, match="direction"):
            parse_direction(bad)


@pytest.fixture(scope="module")
def system(tiny_xgem):
    return tiny_xgem


def test_every_stage_trains_in_its_folder(system):
    records, root, histories = system
    assert list(histories) == list(STAGES)
    for stage in STAGES:
        assert histories[stage]["step"][-1] == getattr(CONFIG.loops, stage).max_steps, stage
    assert (root / "tokenizer" / "tokenizer.json").is_file()
    assert (root / "joint" / "joint.safetensors").is_file()
    assert histories["frontal"]["n_studies"] > histories["lateral"]["n_studies"] > 0


def test_the_encoded_studies_are_reused_for_the_same_spaces(system):
    from support.xgem.data import Studies

    records, root, _ = system
    studies = Studies(records[records["split"] == "train"], CONFIG.image_vae.size)
    stamp = (root / "encoded" / "encoded.safetensors").stat().st_mtime_ns
    again = encoded_studies(CONFIG, studies, root, progress=False)
    assert (root / "encoded" / "encoded.safetensors").stat().st_mtime_ns == stamp
    assert len(again) == len(studies) and set(again.fingerprint) == {"image_vae", "report_vae", "contrastive"}


@pytest.fixture(scope="module")
def models(system):
    _, root, _ = system
    return load_xgem(CONFIG, root)


@pytest.fixture(scope="module")
def inputs(system):
    from support.xgem.data import Studies

    records, _, _ = system
    studies = Studies(records[records["split"] != "train"], CONFIG.image_vae.size)
    both = [i for i in range(len(studies)) if studies.has_lateral.iat[i] and studies.has_report.iat[i]][:2]
    items = [studies[i] for i in both]
    assert len(items) == 2
    return {"frontal": torch.stack([it["frontal"] for it in items]),
            "lateral": torch.stack([it["lateral"] for it in items]),
            "report": [it["report"] for it in items]}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_each_direction_returns_outputs_of_the_right_kind_and_shape(models, inputs, direction):
    sources, outputs = parse_direction(direction)
    out = generate(models, direction, {m: inputs[m] for m in sources}, seed=1)
    size = CONFIG.image_vae.size
    for m in outputs:
        if m == "report":
            assert isinstance(out[m], list) and len(out[m]) == 2 and all(isinstance(t, str) for t in out[m])
        else:
            assert out[m].shape == (2, 1, size, size) and out[m].min() >= -1 and out[m].max() <= 1
    assert out["joint"] == (len(outputs) == 2)
    for m in sources:
        assert m not in out


def test_generation_is_seeded_and_the_joint_ablation_differs(models, inputs):
    a = generate(models, "T->F+L", {"report": inputs["report"]}, seed=5)
    b = generate(models, "T->F+L", {"report": inputs["report"]}, seed=5)
    c = generate(models, "T->F+L", {"report": inputs["report"]}, seed=6)
    assert torch.equal(a["frontal"], b["frontal"]) and not torch.equal(a["frontal"], c["frontal"])
    alone = generate(models, "T->F+L", {"report": inputs["report"]}, seed=5, joint=False)
    assert alone["joint"] is False and alone["frontal"].shape == a["frontal"].shape


def test_missing_or_extra_inputs_are_named(models, inputs):
    with pytest.raises(ValueError, match=r"missing input\(s\) \['lateral'\]"):
        generate(models, "F+L->T", {"frontal": inputs["frontal"]})
    with pytest.raises(ValueError, match=r"\['report'\] given but not an input"):
        generate(models, "F->L", {"frontal": inputs["frontal"], "report": inputs["report"]})
    with pytest.raises(TypeError, match="report conditions: expected a list of report texts"):
        generate(models, "T->F", {"report": "one text"})
