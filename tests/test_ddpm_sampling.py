"""Sampling into the MIMIC-CXR-JPG layout (resumable), the image data path, and the training CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from support.ddpm.config import ddpm_config, sampling_config
from support.core.sample_writer import shard
from support.ddpm.sampling import sample_to_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from support.ddpm.model import build_unet
    from support.core.schedules import make_noise_scheduler
    from support.ddpm.train import save_pipeline

    cfg = ddpm_config("test")
    torch.manual_seed(0)
    return save_pipeline(build_unet(cfg.unet), make_noise_scheduler(cfg.noise),
                         tmp_path_factory.mktemp("ddpm") / "pipeline")


def _jpegs(root):
    return {p.stem: p.read_bytes() for p in root.glob("files/p*/p*/s*/*.jpg")}


def test_shard_is_a_disjoint_cover():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and sum(len(p) for p in parts) == 11
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_sampling_is_resumable_and_registers_orphan_files(tmp_path, tiny_pipeline):
    root = tmp_path / "synthetic"
    first = sample_to_dataset(tiny_pipeline, root, sampling_config("test", {"num_samples": 3}))
    assert (first["generated"], first["present"]) == (3, 0) and first["images_per_s"] > 0
    before = _jpegs(root)
    assert len(before) == 3

    more = sample_to_dataset(tiny_pipeline, root, sampling_config("test", {"num_samples": 5}))
    assert (more["generated"], more["present"]) == (2, 3)
    after = _jpegs(root)
    assert len(after) == 5 and all(after[k] == v for k, v in before.items())   # finished samples untouched

    # Files on disk without rows (a run killed before rank 0 registered them) are registered, not redone.
    for name in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv", "provenance.csv", "dataset.json"):
        (root / name).unlink()
    again = sample_to_dataset(tiny_pipeline, root, sampling_config("test", {"num_samples": 5}))
    assert (again["generated"], again["present"]) == (0, 5)
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv", dtype=str)
    assert len(meta) == 5 and set(meta["ViewPosition"]) == {"PA"} and set(meta["Rows"]) == {"16"}
    prov = pd.read_csv(root / "provenance.csv", dtype=str)
    assert sorted(prov["seed"].astype(int)) == [0, 1, 2, 3, 4]
    assert pd.read_csv(root / "mimic-cxr-2.0.0-split.csv")["split"].eq("train").all()
    assert _jpegs(root) == after

    # Another sampler gives other samples (other dicom ids) of the same seeds.
    other = sample_to_dataset(tiny_pipeline, tmp_path / "ddpm", sampling_config("test", {"num_samples": 2,
                                                                                         "sampler": "ddpm",
                                                                                         "steps": 10}))
    assert other["generated"] == 2 and not set(_jpegs(tmp_path / "ddpm")) & set(after)


def test_sampling_rejects_a_root_of_another_dataset(tmp_path, tiny_pipeline):
    from support.data.writer import MimicLayoutWriter

    with MimicLayoutWriter(tmp_path, "phantom"):
        pass
    with pytest.raises(ValueError, match="phantom"):
        sample_to_dataset(tiny_pipeline, tmp_path, sampling_config("test"))


def _mimic_root(root, n_train=12, n_val=4):
    """A MIMIC-layout root of disc images: train and validate frontal images, plus laterals to skip."""
    from support.data.writer import MimicLayoutWriter, make_dicom_id, make_study_id, make_subject_id
    from support.ddpm.data import SyntheticDiscs

    images = ((SyntheticDiscs(n_train + n_val + 2, 40).images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    with MimicLayoutWriter(root, "phantom") as w:
        for i, image in enumerate(images):
            split = "train" if i < n_train or i >= n_train + n_val else "validate"
            view = "LATERAL" if i >= n_train + n_val else "PA"
            w.add_image(subject_id=make_subject_id(i), study_id=make_study_id(i), dicom_id=make_dicom_id("t", i),
                        image=image[:, 4:36] if view == "PA" else image, view=view, split=split)
    return root


def test_image_data_reads_mimic_layout_by_split_and_view(tmp_path):
    from support.ddpm.data import ImageDataConfig, image_datasets, list_images, load_image

    root = _mimic_root(tmp_path / "phantom")
    train, val = image_datasets(ImageDataConfig(train=root), size=16)
    assert (len(train), len(val)) == (12, 4)
    item = train[0]["image"]
    assert item.shape == (1, 16, 16) and item.dtype == torch.float32
    assert -1.0 <= item.min() < 0 < item.max() <= 1.0
    assert len(list_images(root, "train", ("LATERAL",))) == 2

    folder = tmp_path / "plain" / "nested"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((30, 50), 255, np.uint8)).save(folder / "a.png")
    assert (load_image(folder / "a.png", 16) - 1.0).abs().max() < 1e-6      # resize shorter side + centre crop
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(folder / "broken.jpg", 16)
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "phantom", "test")


def test_training_cli_runs_a_job_file(tmp_path, capsys):
    from diffusers import DDPMPipeline

    from support.ddpm.train import main

    root = _mimic_root(tmp_path / "phantom")
    job = tmp_path / "job.yaml"
    job.write_text(f"profile: test\noutput_dir: {tmp_path / 'out'}\ndata:\n  train: {root}\n"
                   f"train:\n  max_steps: 2\n  checkpoint_every: 2\n  sample_grid_steps: 2\n")
    assert main(["--config", str(job)]) == 0
    assert "done: 2 updates" in capsys.readouterr().out
    pipe = DDPMPipeline.from_pretrained(tmp_path / "out" / "pipeline")
    image = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                 output_type="np").images
    assert image.shape == (1, 16, 16, 1)
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["val_step"] == [2]                               # the root's validate split was used

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"output_dir: {tmp_path}\ndata:\n  train: {root}\ntrain:\n  learning_rat: 1\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*learning_rat"):
        main(["--config", str(bad)])


def test_training_cli_under_accelerate_launch_on_two_processes(tmp_path):
    """The shell path of the shared trainer: ``accelerate launch -m support.ddpm.train``, 2 ranks."""
    from launch import accelerate_launch

    root = _mimic_root(tmp_path / "phantom")
    job = tmp_path / "job.yaml"
    job.write_text(f"profile: test\noutput_dir: {tmp_path / 'out'}\ndata:\n  train: {root}\n"
                   f"train:\n  max_steps: 2\n  batch_size: 2\n  checkpoint_every: 2\n  sample_grid_steps: 2\n")
    proc = accelerate_launch("support.ddpm.train", job)
    assert proc.stdout.count("done: 2 updates") == 1                 # the main process reports once
    state = json.loads((tmp_path / "out" / "checkpoints" / "checkpoint-00000002" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (tmp_path / "out" / "pipeline" / "model_index.json").is_file()
