"""Reader-study kit: a blinded real/synthetic image set, answer sheets, and their scoring.

Layout written by :func:`build_reader_study` under ``out_dir``:

    readers/                 hand this folder to the readers
      case_001.png ...       N real + N synthetic, shuffled, same size and format, no metadata
      answer_sheet.csv       case, answer (real|synthetic), confidence (1-5, optional), comment
      instructions.txt
    key.csv                  case, truth, source_index -- keep away from the readers

Scoring treats "synthetic" as the positive class (as the published study did): sensitivity is
the share of synthetic images called synthetic, specificity the share of real images called
real; each with a Wilson 95 % interval. With several readers, Cohen's kappa for every pair.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from support.core.images import png_bytes
from support.data.images import to_uint8

from .images import as_image_set

ANSWERS = ("real", "synthetic")
SHEET_COLUMNS = ("case", "answer", "confidence", "comment")
KEY_COLUMNS = ("case", "truth", "source_index")
CONFIDENCE_RANGE = (1, 5)

INSTRUCTIONS = """Reader study: real or synthetic?

Each case_NNN.png is either a real chest radiograph or a synthetic one; about half are each.
For every case fill in answer_sheet.csv:
  answer      real or synthetic (required)
  confidence  1 (guess) to 5 (certain) (optional)
  comment     free text, e.g. what gave it away (optional)
Do not rename the files or change the case column.
"""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (NaN, NaN when n is 0)."""
    from scipy.stats import norm

    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, {n}], got {successes}")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def reader_metrics(synthetic_called_synthetic: int, n_synthetic: int, real_called_real: int, n_real: int,
                   confidence: float = 0.95) -> dict[str, float]:
    """Accuracy, sensitivity, specificity ("synthetic" positive) with Wilson intervals, from counts."""
    out: dict[str, float] = {"n_synthetic": n_synthetic, "n_real": n_real,
                             "tp": synthetic_called_synthetic, "fn": n_synthetic - synthetic_called_synthetic,
                             "tn": real_called_real, "fp": n_real - real_called_real}
    for name, k, n in (("accuracy", synthetic_called_synthetic + real_called_real, n_synthetic + n_real),
                       ("sensitivity", synthetic_called_synthetic, n_synthetic),
                       ("specificity", real_called_real, n_real)):
        out[name] = k / n if n else float("nan")
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = wilson_interval(k, n, confidence)
    return out


def build_reader_study(real_images: Any, synthetic_images: Any, out_dir: str | os.PathLike,
                       n: int | None = None, seed: int = 0, size: int | None = None,
                       prefix: str = "case") -> dict[str, Path]:
    """Write a blinded set of ``n`` real + ``n`` synthetic images (see the module docstring).

    ``n`` defaults to the smaller set's size; images are drawn without replacement (seeded) and
    shuffled. ``size`` resizes everything to one square; without it, differing image sizes are
    an error because they would unblind the study. Returns the paths written.
    """
    import pandas as pd
    from support.io import write_bytes_atomic, write_text_atomic

    real, synth = as_image_set(real_images, "real"), as_image_set(synthetic_images, "synthetic")
    n = min(len(real), len(synth)) if n is None else int(n)
    if n < 1 or n > len(real) or n > len(synth):
        raise ValueError(f"n={n}: need 1 <= n <= min(real {len(real)}, synthetic {len(synth)})")
    rng = np.random.default_rng(seed)
    picks = ([("real", int(i)) for i in rng.choice(len(real), n, replace=False)]
             + [("synthetic", int(i)) for i in rng.choice(len(synth), n, replace=False)])
    order = rng.permutation(len(picks))
    width = max(3, len(str(len(picks))))
    out_dir = Path(out_dir)
    readers = out_dir / "readers"
    # read every chosen image before writing any, so a size mismatch leaves nothing half-built
    images = [(real if truth == "real" else synth).load([index], size=size)[0] for truth, index in picks]
    shapes = sorted({tuple(img.shape[-2:]) for img in images})
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {shapes}: the size would unblind the study; "
                         f"pass size= to resize them all to one square")
    key_rows = []
    for number, j in enumerate(order, start=1):
        truth, index = picks[j]
        case = f"{prefix}_{number:0{width}d}"
        write_bytes_atomic(readers / f"{case}.png", png_bytes(to_uint8(images[j])[0].numpy()))
        key_rows.append({"case": case, "truth": truth, "source_index": index})
    key = pd.DataFrame(key_rows, columns=list(KEY_COLUMNS))
    sheet = pd.DataFrame({"case": key["case"], "answer": "", "confidence": "", "comment": ""})
    paths = {"readers": readers, "answer_sheet": readers / "answer_sheet.csv",
             "instructions": readers / "instructions.txt", "key": out_dir / "key.csv"}
    write_text_atomic(paths["answer_sheet"], sheet.to_csv(index=False))
    write_text_atomic(paths["instructions"], INSTRUCTIONS)
    write_text_atomic(paths["key"], key.to_csv(index=False))
    return paths


def read_key(key: str | os.PathLike | Any):
    """The key as a DataFrame (case, truth); errors name the file and the bad rows."""
    import pandas as pd

    where = str(key) if not isinstance(key, pd.DataFrame) else "key"
    df = key if isinstance(key, pd.DataFrame) else pd.read_csv(key, dtype=str, keep_default_na=False)
    missing = [c for c in ("case", "truth") if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected {list(KEY_COLUMNS)}")
    df = df.assign(case=df["case"].astype(str).str.strip(), truth=df["truth"].astype(str).str.strip().str.lower())
    bad = df.loc[~df["truth"].isin(ANSWERS), "case"].tolist()
    if bad:
        raise ValueError(f"{where}: truth must be one of {list(ANSWERS)}; bad rows for cases {bad[:10]}")
    dup = df.loc[df["case"].duplicated(), "case"].tolist()
    if dup:
        raise ValueError(f"{where}: duplicated cases {dup[:10]}")
    return df


def read_answer_sheet(sheet: str | os.PathLike | Any, key_cases: Sequence[str], allow_unanswered: bool = False,
                      name: str | None = None):
    """Read and check a filled answer sheet against the key's cases.

    Errors (naming the file, the column and the cases): missing columns, unknown or duplicated
    cases, answers other than real/synthetic, confidence outside 1-5, and -- unless
    ``allow_unanswered`` -- cases of the key left blank or absent. Returns rows with an answer.
    """
    import pandas as pd

    where = name or (str(sheet) if not isinstance(sheet, pd.DataFrame) else "answer sheet")
    df = sheet if isinstance(sheet, pd.DataFrame) else pd.read_csv(sheet, dtype=str, keep_default_na=False)
    df = df.fillna("").astype(str)
    missing = [c for c in ("case", "answer") if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected {list(SHEET_COLUMNS)}")
    df = df.assign(case=df["case"].str.strip(), answer=df["answer"].str.strip().str.lower())
    known = set(key_cases)
    unknown = [c for c in df["case"] if c not in known]
    if unknown:
        raise ValueError(f"{where}: column 'case' has cases not in the key: {unknown[:10]}")
    dup = df.loc[df["case"].duplicated(), "case"].tolist()
    if dup:
        raise ValueError(f"{where}: column 'case' repeats cases {dup[:10]}")
    bad = df.loc[(df["answer"] != "") & ~df["answer"].isin(ANSWERS)]
    if len(bad):
        examples = [f"{c}={a!r}" for c, a in zip(bad["case"], bad["answer"])][:10]
        raise ValueError(f"{where}: column 'answer' must be 'real' or 'synthetic'; got {examples}")
    if "confidence" in df.columns:
        conf = df["confidence"].str.strip()
        values = pd.to_numeric(conf.where(conf != ""), errors="coerce")
        lo, hi = CONFIDENCE_RANGE
        wrong = df.loc[((conf != "") & values.isna()) | (values < lo) | (values > hi), "case"].tolist()
        if wrong:
            raise ValueError(f"{where}: column 'confidence' must be a number from {lo} to {hi} or blank; "
                             f"bad for cases {wrong[:10]}")
        df = df.assign(confidence=values)
    answered = df[df["answer"] != ""]
    unanswered = sorted(known - set(answered["case"]))
    if unanswered and not allow_unanswered:
        raise ValueError(f"{where}: {len(unanswered)} case(s) without an answer: {unanswered[:10]}"
                         f"{' ...' if len(unanswered) > 10 else ''} (or score with allow_unanswered=True)")
    return answered.reset_index(drop=True)


@dataclasses.dataclass
class ReaderStudyResult:
    """Scores per reader, confusion tables, and pairwise agreement."""

    readers: Any            # DataFrame: one row per reader (metrics with Wilson intervals)
    confusion: dict         # reader -> DataFrame (rows: truth, columns: answer)
    agreement: Any          # DataFrame: reader_a, reader_b, n_common, kappa

    def summary(self) -> dict[str, float]:
        """One flat row: every reader's metrics pooled, and the mean pairwise kappa."""
        r = self.readers
        pooled = reader_metrics(int(r["tp"].sum()), int(r["n_synthetic"].sum()),
                                int(r["tn"].sum()), int(r["n_real"].sum()))
        out = {f"reader_{k}": v for k, v in pooled.items()}
        out["reader_count"] = len(r)
        out["reader_kappa_mean"] = float(self.agreement["kappa"].mean()) if len(self.agreement) else float("nan")
        return out


def score_reader_study(key: str | os.PathLike | Any, sheets: Mapping[str, Any] | Sequence[Any],
                       allow_unanswered: bool = False, confidence: float = 0.95) -> ReaderStudyResult:
    """Score one or more filled answer sheets against the key.

    ``sheets``: ``{reader: path or DataFrame}``, or a list of paths (readers named by file stem).
    """
    import pandas as pd
    from sklearn.metrics import cohen_kappa_score

    key_df = read_key(key)
    truth = dict(zip(key_df["case"], key_df["truth"]))
    if not isinstance(sheets, Mapping):
        sheets = {Path(s).stem if not isinstance(s, pd.DataFrame) else f"reader_{i + 1}": s
                  for i, s in enumerate(sheets)}
    if not sheets:
        raise ValueError("no answer sheets to score")
    rows, confusion, answers = [], {}, {}
    for reader, sheet in sheets.items():
        where = f"{sheet} (reader {reader})" if not isinstance(sheet, pd.DataFrame) else f"reader {reader}"
        df = read_answer_sheet(sheet, list(truth), allow_unanswered=allow_unanswered, name=where)
        t = df["case"].map(truth)
        answers[reader] = dict(zip(df["case"], df["answer"]))
        m = reader_metrics(int(((t == "synthetic") & (df["answer"] == "synthetic")).sum()), int((t == "synthetic").sum()),
                           int(((t == "real") & (df["answer"] == "real")).sum()), int((t == "real").sum()), confidence)
        m["n_unanswered"] = len(truth) - len(df)
        if "confidence" in df.columns and df["confidence"].notna().any():
            m["mean_confidence"] = float(df["confidence"].mean())
        rows.append({"reader": reader, **m})
        confusion[reader] = pd.crosstab(pd.Categorical(t, categories=ANSWERS, ordered=True),
                                        pd.Categorical(df["answer"], categories=ANSWERS, ordered=True),
                                        rownames=["truth"], colnames=["answer"], dropna=False)
    pairs = []
    names = list(answers)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = answers[names[i]], answers[names[j]]
            common = sorted(set(a) & set(b))
            ya, yb = [a[c] for c in common], [b[c] for c in common]
            kappa = float(cohen_kappa_score(ya, yb, labels=list(ANSWERS))) if common else float("nan")
            pairs.append({"reader_a": names[i], "reader_b": names[j], "n_common": len(common), "kappa": kappa})
    agreement = pd.DataFrame(pairs, columns=["reader_a", "reader_b", "n_common", "kappa"])
    return ReaderStudyResult(pd.DataFrame(rows), confusion, agreement)
