"""T2I-LoRA on the phantom, end to end: the default base model pretrained on full captions of the
images in its source domain, LoRA (and a full fine-tune) on report captions of the target images, a synthetic dataset written with prompts, reports and requested labels,
and the before/after finding rates measured with the reference classifier."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from support.data.adapters import load_dataset
from support.data.schema import CHEXPERT_LABELS
from support.data.sections import parse_sections
from support.eval.reference_encoder import ReferenceEncoderConfig
from support.phantom import PhantomConfig, generate_phantom
from transformers import CLIPTokenizer

from support.t2i.base_model import BASE_INFO_JSON, load_pipeline, pretrain_base_model
from support.t2i.captions import fit_caption
from support.t2i.config import PromptConfig, t2i_config, t2i_sampling_config
from support.t2i.data import CaptionedImages
from support.t2i.evaluate import before_after, domain_gap, finding_rates, reference_classifier, sample_models
from support.t2i.sampling import plan_for_findings, plan_from_reports, sample_to_dataset
from support.t2i.train import lora_training_set, train_lora

torch.set_num_threads(1)
CONFIG = t2i_config("test")
SAMPLING = t2i_sampling_config("test")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(n_patients=12, image_size=64, seed=1), workers=1, progress=False)
    return load_dataset("mimic-cxr-jpg", root)[0]


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    base = pretrain_base_model(records, root / "base", CONFIG.base, progress=False)
    history = train_lora(CONFIG, base, lora_training_set(records, CONFIG, base), root / "lora", progress=False)
    return base, root / "lora" / "lora", history


def test_default_base_model_is_a_stable_diffusion_folder(records, trained):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base, _, history = trained
    pipe = load_pipeline(base, device="cpu", dtype="fp32")
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and pipe.vae.config.in_channels == 1
    info = json.loads((base.parent / BASE_INFO_JSON).read_text())
    frontal_train = records[records["split"].eq("train") & records["view"].isin(["PA", "AP"])]
    assert info["n_images"] == len(frontal_train)
    assert info["scaling_factor"] == pytest.approx(pipe.vae.config.scaling_factor) and info["scaling_factor"] > 0
    assert all(np.isfinite(info["vae_loss"] + info["unet_loss"]))
    # the tokenizer knows the report vocabulary: report words are not spelled out byte by byte
    assert len(pipe.tokenizer.tokenize("pleural effusion")) <= 4
    # LoRA trained on report captions of the same images, a measured share of the UNet
    assert history["captions"]["n"] == len(frontal_train)
    assert 0 < history["trainable"]["unet"]["share"] < 0.2
    # asked again with the same data and config: the saved model is reused, not retrained
    stamp = (base / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert pretrain_base_model(records, base.parent, CONFIG.base, progress=False) == base
    assert (base / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_a_base_model_saved_as_bin_files_loads_and_is_identified_by_them(trained, tmp_path):
    import torch

    from support.t2i.base_model import model_sha256

    base, _, _ = trained
    saved = load_pipeline(base, device="cpu", dtype="fp32")
    saved.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not [p for part in ("unet", "vae") for p in (tmp_path / "bin" / part).glob("*.safetensors")]
    loaded = load_pipeline(tmp_path / "bin", device="cpu", dtype="fp32")
    assert all(torch.equal(a, b) for a, b in zip(saved.unet.state_dict().values(), loaded.unet.state_dict().values()))
    before = model_sha256(tmp_path / "bin"), model_sha256(tmp_path / "bin", None)
    weights = next((tmp_path / "bin" / "unet").glob("*.bin"))
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
    after = model_sha256(tmp_path / "bin"), model_sha256(tmp_path / "bin", None)
    assert all(a != b for a, b in zip(after, before))       # the .bin weights are what identifies it


def test_random_crops_follow_seed_and_epoch_and_never_flip(tmp_path):
    path = tmp_path / "wide.png"
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (40, 1))   # 40 x 64, brighter to the right
    Image.fromarray(ramp).save(path)
    rec = pd.DataFrame([{"dataset": "x", "subject_id": "10000001", "study_id": "50000001", "image_id": "a",
                         "view": "PA", "path": str(path), "split": "train", "findings": "", "impression": "Clear."}])
    data = CaptionedImages(rec, 32, seed=3)
    crops = []
    for epoch in range(6):
        data.set_epoch(epoch)
        crops.append(data[0]["pixel_values"])
    data.set_epoch(0)
    assert torch.equal(data[0]["pixel_values"], crops[0])                 # a function of (seed, epoch, item)
    assert len({round(float(c[0, 0, 0]), 4) for c in crops}) > 1          # different windows across epochs
    for c in crops:
        assert c.shape == (1, 32, 32) and -1 <= float(c.min()) and float(c.max()) <= 1
        assert bool((c[0, :, 1:] >= c[0, :, :-1] - 1e-6).all())           # still brighter to the right
    assert data[0]["caption"] == "view_position = PA. modality = CR. Clear."


def test_sampling_writes_a_resumable_dataset_of_prompts_reports_and_requested_labels(records, trained, tmp_path):
    base, lora, _ = trained
    plan = pd.concat([plan_from_reports(records, PromptConfig(source="reports", num_prompts=2)),
                      plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 1}))],
                     ignore_index=True)
    root = tmp_path / "synthetic"
    first = sample_to_dataset(base, lora, plan, root, SAMPLING, progress=False)
    assert (first["generated"], first["present"], first["requested"]) == (len(plan), 0, len(plan))
    again = sample_to_dataset(base, lora, plan, root, SAMPLING, progress=False)
    assert (again["generated"], again["present"]) == (0, len(plan))

    back, summary = load_dataset("mimic-cxr-jpg", root)
    assert len(back) == len(plan) and summary.n_skipped == 0
    prov = pd.read_csv(root / "provenance.csv", dtype=str, keep_default_na=False).set_index("dicom_id")
    back = back.assign(seed=[int(prov.loc[i, "seed"]) for i in back["image_id"]]).sort_values("seed")
    assert list(back["seed"]) == list(range(SAMPLING.base_seed, SAMPLING.base_seed + len(plan)))
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    fitted = [fit_caption(prompt, tokenizer) for prompt in plan["prompt"]]
    assert first["prompts_truncated"] == sum(t for _, t in fitted)
    for (_, row), (_, asked), (prompt, truncated) in zip(back.iterrows(), plan.iterrows(), fitted):
        p = prov.loc[row["image_id"]]
        # the prompt as the text encoder read it: cut to the token limit when longer
        assert p["prompt"] == prompt and p["prompt_truncated"] == str(truncated) and asked["prompt"].startswith(prompt)
        assert p["sampler"] == "ddim" and p["requested"] == asked["requested"]
        assert p["checkpoint_sha256"] == first["checkpoint_sha256"] != p["base_model_sha256"]
        assert row["view"] == asked["view"] and row["split"] == "train"
        for name in CHEXPERT_LABELS:                                    # the requested labels, as asked
            assert (np.isnan(row[name]) and np.isnan(asked[name])) or row[name] == asked[name], name
        sections = parse_sections(asked["report"])                     # the report it came from
        assert (row["findings"], row["impression"]) == (sections.get("findings", ""), sections["impression"])
    with pytest.raises(ValueError, match="another prompt plan"):
        sample_to_dataset(base, lora, plan.iloc[:1], root, SAMPLING, progress=False)


def test_before_after_images_and_finding_rates(records, trained, tmp_path, monkeypatch):
    base, lora, _ = trained
    plan = plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 2, "No Finding": 2}))
    pair = before_after(base, lora, list(plan["prompt"]), cfg=SAMPLING, progress=False)
    assert pair["before"].shape == pair["after"].shape == (4, 32, 32) and pair["seeds"] == [0, 1, 2, 3]
    assert pair["mean_abs_change"] > 0 and not np.array_equal(pair["before"], pair["after"])

    classifier = reference_classifier(records, tmp_path / "reference", ReferenceEncoderConfig(
        width=8, blocks=(1, 1), image_size=32, epochs=1, batch_size=8, val_fraction=0.3, device="cpu"))
    findings = ["Pleural Effusion", "No Finding"]
    rates = finding_rates(classifier, {"before": pair["before"], "after": pair["after"]}, plan, findings=findings)
    assert list(rates["set"]) == ["before", "before", "after", "after"] and list(rates["finding"]) == findings * 2
    assert (rates["n_requested"] == 2).all() and (rates["n_not_requested"] == 2).all()
    scores = classifier.predict_proba(torch.from_numpy(pair["after"])[:, None]).numpy()
    j = classifier.label_names.index("Pleural Effusion")
    row = rates[(rates["set"] == "after") & (rates["finding"] == "Pleural Effusion")].iloc[0]
    assert row["positive_rate_requested"] == pytest.approx(float((scores[:2, j] > 0.5).mean()))
    assert row["mean_score_not_requested"] == pytest.approx(float(scores[2:, j].mean()), rel=1e-5)
    # two images of each kind rank nothing: no AUROC, and the reason
    assert np.isnan(row["auroc"]) and row["note"].startswith("too few samples: 2 positives and 2 negatives")

    # 06_evaluation asks for the same classifier (same records, config, cache): loaded, not retrained
    from support.eval import reference_encoder as ref
    from support.eval.sets import real_reference_encoder
    from support.data.fingerprint import dataset_fingerprint

    monkeypatch.setattr(ref, "train_reference_encoder", lambda *a, **k: pytest.fail("retrained"))
    again = real_reference_encoder(records, tmp_path / "reference", classifier.config,
                                   fingerprint=dataset_fingerprint(records))
    assert torch.allclose(again.predict_proba(torch.from_numpy(pair["after"])[:, None]), torch.from_numpy(scores), atol=1e-6)


def test_notebook_figures_and_summary(trained):
    import matplotlib

    matplotlib.use("Agg")
    from support.t2i.figures import plot_before_after, plot_finding_rates, plot_training, training_summary

    base, lora, history = trained
    summary = training_summary(history)
    assert summary["updates"] == CONFIG.train.max_steps and summary["steps_per_s"] > 0
    assert summary["trainable_parameters"] == history["trainable"]["unet"]["trainable"] > 0
    assert summary["trainable_share_unet"] == history["trainable"]["unet"]["share"]
    assert 0 <= summary["captions_truncated_share"] <= 1
    assert len(plot_training(history).axes) == 1
    pair = {"before": np.zeros((3, 8, 8)), "after": np.ones((3, 8, 8)), "prompts": ["view_position = PA. a"] * 3}
    assert len(plot_before_after(pair, n=2).axes) == 4
    titled = plot_before_after({**pair, "titles": ["Pleural Effusion", "No Finding", "x"]}, n=2)
    assert [ax.get_title() for ax in titled.axes[:2]] == ["Pleural Effusion", "No Finding"]
    rates = pd.DataFrame({"set": ["before", "after"], "finding": ["Pleural Effusion"] * 2,
                          "positive_rate_requested": [0.1, 0.6], "positive_rate_not_requested": [0.2, 0.1]})
    fig = plot_finding_rates(rates)
    heights = sorted(round(p.get_height(), 3) for ax in fig.axes for p in ax.patches if p.get_height() > 0)
    assert len(fig.axes) == 2 and heights == [0.1, 0.1, 0.2, 0.6]
    with pytest.raises(KeyError, match="positive_rate_not_requested"):
        plot_finding_rates(rates.drop(columns="positive_rate_not_requested"))


class _ScoreByBrightness:
    """A classifier whose "Pleural Effusion" score is the image's mean brightness."""

    label_names = ["Pleural Effusion"]

    def predict_proba(self, images):
        return images.float().mean(dim=(1, 2, 3))[:, None]


def test_finding_rates_auroc_with_enough_images_of_each_kind():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    asked = np.array([1] * 12 + [0] * 12)
    images = np.clip(rng.uniform(0.2, 0.6, 24)[:, None, None] + 0.2 * asked[:, None, None], 0, 1) * np.ones((24, 8, 8))
    plan = pd.DataFrame({"Pleural Effusion": asked.astype(float)})
    rates = finding_rates(_ScoreByBrightness(), {"s": images.astype(np.float32)}, plan)
    row = rates.iloc[0]
    assert row["note"] == "" and row["auroc"] == pytest.approx(roc_auc_score(asked, images.mean(axis=(1, 2))))
    assert row["auroc"] < 1.0       # the draw overlaps: a real ranking, not a constant


def test_domain_gap_is_zero_for_the_real_images_and_grows_with_a_shift():
    class Identity:
        name = "pixels"

        def embed(self, images):
            return torch.nn.functional.avg_pool2d(images, 4).flatten(1)

    rng = np.random.default_rng(1)
    real = rng.uniform(0, 1, (40, 8, 8)).astype(np.float32)
    gap = domain_gap(Identity(), real, {"same": real, "near": np.clip(real + 0.05, 0, 1),
                                        "far": np.clip(real + 0.3, 0, 1)})
    assert gap["same"] == pytest.approx(0.0, abs=1e-6) and 0 < gap["near"] < gap["far"]
    # a handful of images fits no Gaussian worth comparing: "too few samples" (NaN), not a distance
    few = domain_gap(Identity(), real, {"five": real[:5], "all": real}, min_images=20)
    assert np.isnan(few["five"]) and few["all"] == pytest.approx(0.0, abs=1e-6)
    assert all(np.isnan(v) for v in domain_gap(Identity(), real[:5], {"all": real}, min_images=20).values())


def test_base_model_pretrains_its_denoiser_on_full_captions_in_the_source_domain(records, tmp_path, monkeypatch):
    """The autoencoder sees both renderings; the UNet and text encoder only the source domain,
    with the reports' findings in the captions."""
    from support.core import trainer
    from support.t2i.domain import SourceDomain

    seen = {}

    def capture(task, config, output_dir, *a, **k):   # records what each stage trains on; trains nothing
        seen[task.name] = task.train_set
        return {"loss": []}

    monkeypatch.setattr(trainer, "fit", capture)
    pretrain_base_model(records, tmp_path / "base", CONFIG.base, progress=False)
    target = CaptionedImages(records, CONFIG.base.resolution, views=CONFIG.base.views, random_crop=False)
    both = seen["base-vae"]
    assert len(both) == 2 * len(target)
    assert torch.equal(both[len(target)]["pixel_values"], target[0]["pixel_values"])     # the target rendering...
    assert not torch.allclose(both[0]["pixel_values"], target[0]["pixel_values"])       # ...and the source one
    ldm_set = seen["base-ldm"]
    domain = CONFIG.base.domain
    assert isinstance(domain, SourceDomain) and not domain.is_identity()
    i = next(i for i, c in enumerate(ldm_set.captions) if "effusion" in c.lower())
    assert ldm_set.captions[i] == target.captions[i] and "view_position = " in ldm_set.captions[i]
    source_px = (ldm_set[i]["pixel_values"][0].numpy() + 1) / 2
    target_px = (target[i]["pixel_values"][0].numpy() + 1) / 2
    assert source_px.min() >= domain.black - 1e-3 > target_px.min()      # air is grey in the source
    assert np.abs(source_px - target_px).mean() > 0.05


def test_full_finetune_trains_every_unet_weight_and_its_unet_loads_into_the_pipeline(records, trained, tmp_path):
    from support.t2i.figures import method_table, training_summary
    from support.t2i.train import FULL_DIR, launch_lora_training

    base, lora, lora_history = trained
    history = launch_lora_training(CONFIG, base, lora_training_set(records, CONFIG, base), tmp_path / "full",
                                   full_finetune=True)
    assert history["trainable"]["unet"]["share"] == 1.0 and history["trainable"]["text_encoder"]["trainable"] == 0
    table = method_table({"LoRA": training_summary(lora_history), "full": training_summary(history)})
    assert list(table["method"]) == ["LoRA", "full"] and table["speed_vs_first"].iloc[0] == 1.0
    assert table["trainable_parameters"].iloc[0] < table["trainable_parameters"].iloc[1]
    prompts = ["view_position = PA. modality = CR. Large right pleural effusion."] * 2
    images = sample_models(base, {"base": {}, "lora": {"lora": lora}, "full": {"unet": tmp_path / "full" / FULL_DIR}},
                           prompts, cfg=SAMPLING, progress=False)
    assert images["full"].shape == images["base"].shape == (2, 32, 32)
    assert not np.array_equal(images["full"], images["base"]) and not np.array_equal(images["full"], images["lora"])
    pair = before_after(base, lora, prompts, cfg=SAMPLING, progress=False)
    np.testing.assert_array_equal(pair["before"], images["base"])    # the same seeds give the same images
    with pytest.raises(ValueError, match="expected"):
        sample_models(base, {"both": {"lora": lora, "unet": tmp_path}}, prompts, cfg=SAMPLING, progress=False)
    with pytest.raises(FileNotFoundError, match="not a diffusers UNet folder"):
        load_pipeline(base, device="cpu", dtype="fp32", unet=tmp_path)
