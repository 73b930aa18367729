"""Synthetic labelled chest-X-ray-like data shared by the support.eval tests (and a check of it).

Images are smooth random fields (a patient's anatomy plus per-study variation; two studies per
patient) with findings painted where a classifier can learn them:
Cardiomegaly a wide bright centre, Pleural Effusion a bright band at the bottom, Pneumothorax a
dark upper-left corner. Other CheXpert labels are NaN (unknown), and a share of the painted
findings' labels is hidden as NaN too, so masked losses are exercised.
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from support.data.schema import CHEXPERT_LABELS

RENDERED = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")


def anatomy(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A patient's own background: a smooth random field, shared by all their studies."""
    f = gaussian_filter(rng.standard_normal((size, size)), size / 8, mode="wrap")
    return f / f.std()


def render(rng: np.random.Generator, findings: dict[str, bool], size: int = 32, blur: float = 0.0,
           patient: np.ndarray | None = None) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    base = anatomy(rng, size) if patient is None else patient + 0.4 * anatomy(rng, size)  # per-study variation
    img = 0.35 + 0.045 * base
    heart = np.exp(-(((xx - 0.5) / (0.22 if findings["Cardiomegaly"] else 0.11)) ** 2
                     + ((yy - 0.55) / 0.18) ** 2))
    img += 0.3 * heart
    if findings["Pleural Effusion"]:
        img += 0.35 * (yy > 0.78 + rng.uniform(-0.04, 0.04))
    if findings["Pneumothorax"]:
        img -= 0.25 * ((xx < 0.3) & (yy < 0.35))
    img += rng.normal(0, 0.02, img.shape)
    if blur:
        img = gaussian_filter(img, blur)
    return np.clip(img, 0, 1).astype(np.float32)


class FindingsDataset(torch.utils.data.Dataset):
    """{"image": (1, S, S) float tensor, "labels": (14,) float with NaN, "subject_id": str}."""

    def __init__(self, n: int, seed: int, size: int = 32, blur: float = 0.0, hide: float = 0.1,
                 prevalence: float = 0.4):
        rng = np.random.default_rng(seed)
        self.images, self.labels, self.subjects, self.requested = [], [], [], []
        for i in range(n):
            if i % 2 == 0:
                patient = anatomy(rng, size)
            findings = {f: bool(rng.random() < prevalence) for f in RENDERED}
            self.images.append(render(rng, findings, size, blur, patient))
            lab = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
            for f, v in findings.items():
                lab[CHEXPERT_LABELS.index(f)] = float(v) if rng.random() >= hide else np.nan
            lab[CHEXPERT_LABELS.index("No Finding")] = float(not any(findings.values()))
            self.labels.append(lab)
            self.requested.append([float(findings[f]) for f in RENDERED])
            self.subjects.append(f"1{seed:03d}{i // 2:04d}")  # two studies per patient
        self.requested = np.asarray(self.requested)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(self.images[i]).unsqueeze(0), "labels": torch.from_numpy(self.labels[i]),
                "subject_id": self.subjects[i]}


def random_inception_state(seed: int = 0) -> dict:
    """torch-fidelity's FeatureExtractorInceptionV3 structure with random He-initialised weights,
    built without its download (stands in for the FID weights file in tests)."""
    import pytest
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        mp.undo()
    torch.manual_seed(seed)
    for m in net.modules():  # He init keeps activations alive through the random network
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_findings_dataset_is_deterministic_and_paints_findings():
    a, b = FindingsDataset(20, seed=3), FindingsDataset(20, seed=3)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(20))
    item = a[0]
    assert item["image"].shape == (1, 32, 32) and item["labels"].shape == (len(CHEXPERT_LABELS),)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # effusion brightens the bottom rows
    eff = a.requested[:, RENDERED.index("Pleural Effusion")] == 1
    bottom = np.array([a.images[i][-5:].mean() for i in range(20)])
    assert bottom[eff].mean() > bottom[~eff].mean() + 0.1


def test_choose_sources_names_an_unknown_set_and_leaves_out_cleaned_copies_by_default():
    from support.eval.sets import choose_sources

    sets = {"ddpm-ddim-50": 1, "ddpm-ddim-50-cleaned": 2, "t2i-lora-pndm-25": 3}
    assert choose_sources(sets) == {"ddpm-ddim-50": 1, "t2i-lora-pndm-25": 3}
    assert choose_sources(sets, ["ddpm-ddim-50-cleaned"]) == {"ddpm-ddim-50-cleaned": 2}
    with pytest.raises(ValueError, match=r"sources: no set named \['ddpm-dim-50'\].*ddpm-ddim-50"):
        choose_sources(sets, ["ddpm-dim-50", "ddpm-ddim-50"])
