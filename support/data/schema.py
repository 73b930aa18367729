"""Names every part of the data layer agrees on: finding labels, views, record columns.

A *record table* (pandas DataFrame, one row per image) is what every adapter yields and every
torch dataset reads, whether the source is the phantom, MIMIC-CXR-JPG or a synthetic set.
"""

from __future__ import annotations

# The 14 CheXpert observations, in the column order of mimic-cxr-2.0.0-chexpert.csv.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)

# What the phantom simulates with known truth ("Lung Lesion" is a nodule or mass).
PHANTOM_FINDINGS: tuple[str, ...] = (
    "No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion",
    "Consolidation", "Pneumonia", "Atelectasis", "Support Devices",
)

# Anatomy masks the phantom writes for every image beside its finding masks (lung segmentation
# is the usual probe of a self-supervised encoder): both lungs' footprint, and the heart's.
ANATOMY_MASKS: tuple[str, ...] = ("Lung Fields", "Heart")

# Label values as in the CheXpert/MIMIC CSVs: 1 positive, 0 negative, -1 uncertain, NaN unmentioned.
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL")
KNOWN_VIEWS = FRONTAL_VIEWS + LATERAL_VIEWS
# Other ViewPosition values (MIMIC-CXR's, as written in its DICOM headers). An angled AP and a
# cross-table lateral are still a frontal and a lateral chest projection; the rest are not views
# the datasets model, and are skipped with these names.
VIEW_ALIASES = {"AP AXIAL": "AP", "XTABLE LATERAL": "LATERAL"}
UNMODELLED_VIEWS = {
    "PA LLD": "decubitus view", "AP LLD": "decubitus view", "PA RLD": "decubitus view",
    "AP RLD": "decubitus view", "LAO": "oblique view", "RAO": "oblique view", "LPO": "oblique view",
    "RPO": "oblique view", "SWIMMERS": "swimmer's view (cervicothoracic junction)",
}
SPLITS = ("train", "validate", "test")

# Columns of the record table. Labels follow as one float column per CHEXPERT_LABELS name.
RECORD_COLUMNS: tuple[str, ...] = (
    "dataset",      # e.g. "phantom", "mimic-cxr-jpg", "chexpert", "synthetic:ddpm"
    "subject_id",   # str; the dataset's own patient key (never a name or MRN)
    "study_id",     # str
    "image_id",     # str; dicom_id for MIMIC, file stem elsewhere
    "view",         # one of KNOWN_VIEWS, or "" when the source does not say
    "path",         # absolute path of the image file
    "split",        # one of SPLITS
    "findings",     # report FINDINGS section ("" when absent)
    "impression",   # report IMPRESSION section ("" when absent)
    "sex",          # "F", "M" or ""
    "age",          # float years or NaN
    "boxes",        # list of {"label", "x0", "y0", "x1", "y1"}; coordinates normalised to [0, 1]
    "masks",        # list of {"label", "rle", "width", "height"} (SIIM relative RLE) or {"label", "path"}
)


class ViewError(ValueError):
    """A ViewPosition that is no modelled view; ``reason`` names the kind (for a summary's count)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def chest_view(text: str) -> str:
    """A ViewPosition as written (any case or spacing) -> one of ``KNOWN_VIEWS``, else ``ViewError``."""
    view = " ".join(str(text or "").upper().split())
    view = VIEW_ALIASES.get(view, view)
    if view in KNOWN_VIEWS:
        return view
    if view in UNMODELLED_VIEWS:
        raise ViewError("view not modelled", f"ViewPosition {text!r} ({UNMODELLED_VIEWS[view]}): "
                                             f"expected a frontal or lateral chest view")
    raise ViewError("unknown view", f"ViewPosition {text!r}: expected one of "
                                    f"{list(KNOWN_VIEWS + tuple(VIEW_ALIASES))}")


def is_frontal(view: str) -> bool:
    return view in FRONTAL_VIEWS


def is_lateral(view: str) -> bool:
    return view in LATERAL_VIEWS
