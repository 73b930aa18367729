"""XGeM stage 3, the shared latent space: the clamped scale, the batch loss over studies, pooling at
[SEP], the empty embeddings, a local CLIP folder, learning on a phantom, export, and exact resume
(InfoNCE and retrieval recall by hand: test_xgem_losses.py)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sabotage import Sabotaged
from support.core.tokenizer import train_wordpiece
from support.data.adapters import load_dataset
from support.io import load_state_dict
from support.phantom import PhantomConfig, generate_phantom
from support.xgem.config import ContrastiveConfig, xgem_config
from support.xgem.contrastive import (build_contrastive, collate_studies, embed_studies, load_contrastive,
                                      retrieval_recall, save_contrastive, split_studies, symmetric_infonce,
                                      train_contrastive)
from support.xgem.data import Studies
from support.xgem.text import token_batch

torch.set_num_threads(1)

TEST = xgem_config("test")
CORPUS = ["no pleural effusion or pneumothorax", "the heart is mildly enlarged", "left basilar atelectasis",
          "lungs are clear", "small right pleural effusion"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(CORPUS, 120)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_contrastive(TEST.contrastive, tokenizer).eval()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=24, image_size=48, seed=5, lateral_share=0.5, text_share=0.0),
                     workers=1, progress=False)
    return Studies(load_dataset("mimic-cxr-jpg", root)[0], 32)


def test_the_learnable_scale_starts_at_1_over_007_and_is_clamped_at_the_max(model):
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-3)
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(1000.0))
        assert model.scale().item() == pytest.approx(100.0)
        model.clip.logit_scale.fill_(math.log(30.0))
        assert model.scale().item() == pytest.approx(30.0, rel=1e-5)
        model.clip.logit_scale.fill_(TEST.contrastive.logit_scale_init)


def test_the_batch_loss_pairs_frontals_and_laterals_with_their_reports(model, tokenizer):
    g = torch.Generator().manual_seed(1)
    items = [{"frontal": torch.rand(1, 48, 48, generator=g) * 2 - 1, "lateral": torch.rand(1, 48, 48, generator=g) * 2 - 1,
              "has_lateral": torch.tensor(lat), "report": text}
             for lat, text in [(True, CORPUS[0]), (False, CORPUS[1]), (True, CORPUS[2]), (True, "")]]
    batch = collate_studies(items, tokenizer, 48)
    assert batch["has_report"].tolist() == [True, True, True, False]
    with torch.no_grad():
        loss, parts = model(batch)
        f = model.embed_images(batch["frontal"])
        lat = model.embed_images(batch["lateral"])
        t = model.embed_texts(CORPUS[:3])
        expected = (3 * symmetric_infonce(f[:3], t, model.scale()) + 2 * symmetric_infonce(lat[[0, 2]], t[[0, 2]],
                                                                                            model.scale())) / 5
    assert (parts["pairs_frontal"], parts["pairs_lateral"]) == (3, 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # one report: nothing to contrast, a zero loss that still reaches every weight (as DDP needs)
    lonely = collate_studies([{**items[0], "report": ""}, items[1]], tokenizer, 48)
    loss, parts = model(lonely)
    loss.backward()
    assert loss.item() == 0 and (parts["pairs_frontal"], parts["pairs_lateral"]) == (0, 0)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------ towers
def test_reports_are_cls_text_sep_and_the_text_tower_pools_at_sep(model, tokenizer):
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert model.clip.config.text_config.eos_token_id == sep != 2
    ids, mask = token_batch(tokenizer, ["lungs are clear", " ".join(CORPUS)], 8)
    assert ids.shape == (2, 8) and ids[1, 0] == cls and ids[1, -1] == sep                   # cut, [SEP] kept
    short = mask[0].sum()
    assert ids[0, 0] == cls and ids[0, short - 1] == sep and (ids[0, short:] == pad).all()
    with torch.no_grad():
        hidden = model.clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        at_sep = F.normalize(model.clip.text_projection(hidden[[0, 1], [short - 1, 7]]), dim=-1)
        assert torch.allclose(model.embed_reports(ids, mask), at_sep, atol=1e-5)
        # padding after [SEP] changes nothing
        assert torch.allclose(model.embed_texts(["lungs are clear"])[0], model.embed_reports(ids, mask)[0], atol=1e-5)


def test_empty_embeddings_are_fixed_unit_vectors_of_their_type(model):
    model.train()
    image, report = model.empty_image_embedding(), model.empty_report_embedding()
    assert model.training                                                   # the mode is given back
    model.eval()
    assert image.shape == report.shape == (TEST.contrastive.embed_dim,)
    assert image.norm().item() == pytest.approx(1.0, abs=1e-5) and report.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(image, model.empty_image_embedding()) and torch.equal(report, model.empty_report_embedding())
    assert (image - report).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.allclose(image, model.embed_images(torch.full((1, 1, 48, 48), -1.0))[0], atol=1e-6)
        assert not torch.allclose(image, model.embed_images(torch.zeros(1, 1, 32, 32))[0], atol=1e-3)
        assert torch.allclose(report, model.embed_texts([""])[0], atol=1e-6)


def _tiny_clip_folder(folder, tokenizer, eos: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, eos_token_id=eos, bos_token_id=2, pad_token_id=0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8, num_channels=3)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    clip.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}')
    return clip


def test_a_local_clip_folder_takes_gray_images_as_3_normalised_channels(tmp_path, tokenizer):
    clip = _tiny_clip_folder(tmp_path / "clip", tokenizer, tokenizer.sep_token_id)
    cfg = ContrastiveConfig(clip_path=str(tmp_path / "clip"), embed_dim=8, image_size=16, patch_size=8,
                            vision_hidden=16, vision_layers=1, vision_heads=2, text_hidden=16, text_layers=1,
                            text_heads=2, max_tokens=32)
    model = build_contrastive(cfg).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    pixels = (((x + 1) / 2) - 0.5) / 0.25
    assert torch.allclose(model.pixel_values(x), pixels.repeat(1, 3, 1, 1))
    with torch.no_grad():
        expected = F.normalize(clip.get_image_features(pixel_values=pixels.repeat(1, 3, 1, 1)).pooler_output, dim=-1)
        assert torch.allclose(model.embed_images(x), expected, atol=1e-5)
    # saved and read back with the folder's statistics
    loaded, _ = load_contrastive(save_contrastive(model, cfg, tmp_path / "stage"))
    with torch.no_grad():
        assert torch.allclose(loaded.embed_images(x), expected, atol=1e-5)
        assert torch.allclose(loaded.embed_texts(CORPUS), model.embed_texts(CORPUS), atol=1e-6)
    with pytest.raises(ValueError, match=r"clip.*embed_dim: the folder has 8, the config 16"):
        build_contrastive(dataclasses.replace(cfg, embed_dim=16))
    _tiny_clip_folder(tmp_path / "clip-eos", tokenizer, 7)
    with pytest.raises(ValueError, match=r"clip-eos.*pools at token id 7"):
        build_contrastive(dataclasses.replace(cfg, clip_path=str(tmp_path / "clip-eos")))


# ------------------------------------------------------------------------------ training
def _train_set_loss(model, studies) -> float:
    e = embed_studies(model, split_studies(studies, ["train"]), batch_size=64)
    return symmetric_infonce(e["frontal"], e["report"], model.scale().detach()).item()


def test_the_space_learns_on_a_phantom_and_exports(tmp_path, studies):
    config = xgem_config("test", {"loops": {"contrastive": {"max_steps": 60, "checkpoint_every": 60, "batch_size": 8}}})
    out = tmp_path / "contrastive"
    history = train_contrastive(config, studies, out, progress=False)
    assert history["n_studies"] == 41 and history["with_report"] == 41 and history["n_val_studies"] == 10
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()           # shared with the report autoencoder
    model, tokenizer = load_contrastive(out)
    final = load_state_dict(out / "checkpoints" / "checkpoint-00000060" / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    assert len(tokenizer) == history["vocab_size"]
    torch.manual_seed(0)
    untrained = build_contrastive(config.contrastive, tokenizer)
    loss = history["loss"]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.3                   # chance is ln 8 = 2.08
    assert _train_set_loss(model, studies) < _train_set_loss(untrained, studies) - 0.3
    train = retrieval_recall(model, split_studies(studies, ["train"])).set_index("direction")
    chance = 1 / train["studies"]
    assert (train["recall@1"] / chance).mean() > 1.5
    assert "val_recall@1_f2t" in history and "val_recall@5_l2t" not in history   # 2 held-out laterals: no R@5


def test_a_crashed_run_resumes_to_the_same_weights(tmp_path, studies):
    config = xgem_config("test", {"loops": {"contrastive": {"max_steps": 4, "checkpoint_every": 2}}})
    reference = train_contrastive(config, studies, tmp_path / "a" / "contrastive", progress=False)
    # batch 4: read 1 is the check of item 0, then 4 reads an update; crash inside update 3
    crashing = Sabotaged(studies, after=4 * 2 + 2, mode="crash", key="frontal")
    crashing.records = studies.records
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_contrastive(config, crashing, tmp_path / "b" / "contrastive", progress=False)
    assert sorted(p.name for p in (tmp_path / "b" / "contrastive" / "checkpoints").iterdir()) == ["checkpoint-00000002"]
    resumed = train_contrastive(config, studies, tmp_path / "b" / "contrastive", progress=False)
    a, b = (load_state_dict(tmp_path / d / "contrastive" / "checkpoints" / "checkpoint-00000004" / "model.safetensors")
            for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["loss"] == reference["loss"]
