"""What XGeM's authors judged by eye, measured against the phantom's truth.

Per direction, on held-out studies (each output compared with the study its conditions came from):
- images: Fréchet distance to the real images of that view in the reference encoder's space, and
  **finding AUROC** and **agreement** between the reference classifier's reading of the output and
  the truth;
- reports: BLEU-1..4 and ROUGE-L against the study's report, and finding AUROC and agreement between
  the labeler's reading of the output and the truth;
- pairs generated together (F+L): **consistency**, as the agreement of the two views' findings
  and the reference encoder's cosine similarity of each pair above that of mismatched pairs.

Truth: a finding is present when the study's label is 1, absent when it is 0 or blank (the
phantom labels every present finding), unknown (left out) when uncertain (-1). An output states a
finding when the labeler says 1 (reports) or the classifier's probability exceeds 0.5 (images).
Every metric says "too few samples" (NaN and a reason) below :data:`MIN_STUDIES` studies.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from support.data.schema import CHEXPERT_LABELS

MIN_STUDIES = 5
FINDINGS = tuple(n for n in CHEXPERT_LABELS if n != "No Finding")
STATED_ABOVE = 0.5   # a reading above this states the finding (a probability; a report's 0/1)


def too_few(n: int, what: str = "studies") -> str:
    return f"too few samples ({n} {what}, at least {MIN_STUDIES} needed)" if n < MIN_STUDIES else ""


def truth_matrix(labels: pd.DataFrame, findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """(N, F) of 1 (present), 0 (absent or blank) and NaN (uncertain) from CheXpert labels."""
    values = labels.reindex(columns=list(findings)).to_numpy(dtype=np.float64)
    return np.where(values == 1, 1.0, np.where(values == -1, np.nan, 0.0))


def finding_agreement(stated: np.ndarray, truth: np.ndarray, findings: Sequence[str] = FINDINGS) -> dict:
    """How often an output states a finding exactly when its study has it.

    ``stated`` (N, F) booleans, ``truth`` from :func:`truth_matrix`. ``agreement``: the share of
    known (study, finding) pairs where they match; ``f1``: the mean over findings present in at
    least one study of the F1 of stating them (NaN if none is present)."""
    stated, truth = np.asarray(stated, dtype=bool), np.asarray(truth, dtype=np.float64)
    if stated.shape != truth.shape:
        raise ValueError(f"stated findings {stated.shape} and truth {truth.shape} differ in shape")
    n = len(truth)
    reason = too_few(n)
    if reason:
        return {"n": n, "agreement": math.nan, "f1": math.nan, "reason": reason}
    known = ~np.isnan(truth)
    present = truth == 1
    agreement = float((stated == present)[known].mean()) if known.any() else math.nan
    f1s = []
    for j in range(truth.shape[1]):
        k = known[:, j]
        if not present[k, j].any():
            continue
        tp = float((stated[k, j] & present[k, j]).sum())
        f1s.append(2 * tp / (stated[k, j].sum() + present[k, j].sum()))
    return {"n": n, "agreement": agreement, "f1": float(np.mean(f1s)) if f1s else math.nan, "reason": ""}


def report_findings(texts: Sequence[str], findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """(N, F): the labeler reads each report as stating the finding (label 1)."""
    from support.data.labeler import label_report

    return np.array([[label_report(t)[f] == 1.0 for f in findings] for t in texts], dtype=bool).reshape(len(texts),
                                                                                                       len(findings))


def image_scores(probabilities: np.ndarray, label_names: Sequence[str],
                 findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """(N, F): the classifier's probability of each finding; NaN for findings it does not predict."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    out = np.full((len(probabilities), len(findings)), np.nan)
    for j, f in enumerate(findings):
        if f in label_names:
            out[:, j] = probabilities[:, list(label_names).index(f)]
    return out


def image_findings(probabilities: np.ndarray, label_names: Sequence[str], findings: Sequence[str] = FINDINGS,
                   threshold: float = STATED_ABOVE) -> np.ndarray:
    """(N, F): the classifier's probability above ``threshold``; findings it does not predict are
    never stated."""
    return image_scores(probabilities, label_names, findings) > threshold     # NaN > t is False


def text_scores(generated: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU-1..4 and mean ROUGE-L F-measure (torchmetrics) of ``generated`` against
    ``references``, over words as BERT's pre-tokenizer splits them (punctuation a word of its own)."""
    from torchmetrics.functional.text import bleu_score, rouge_score

    from support.core.tokenizer import words_of

    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports for {len(references)} references")
    outputs, refs = [" ".join(words_of(t)) for t in generated], [" ".join(words_of(t)) for t in references]
    scores = {f"bleu{k}": float(bleu_score(outputs, [[r] for r in refs], n_gram=k)) for k in range(1, 5)}
    scores["rougeL"] = float(rouge_score(outputs, refs, rouge_keys=("rougeL",))["rougeL_fmeasure"])
    return scores


def report_scores(generated: Sequence[str], references: Sequence[str]) -> dict:
    """:func:`text_scores` of generated reports against the reports of their studies, or "too few samples"."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports for {len(references)} references")
    n = len(generated)
    reason = too_few(n, "reports")
    if reason:
        return {"n": n, **{k: math.nan for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")}, "reason": reason}
    return {"n": n, **text_scores(generated, references), "reason": ""}


def frechet(real_features: np.ndarray, generated_features: np.ndarray) -> dict:
    """Fréchet distance in a feature space, or "too few samples"."""
    from support.eval.distribution import frechet_distance

    n = min(len(real_features), len(generated_features))
    reason = too_few(n, "images")
    return {"n": int(len(generated_features)), "fd": math.nan if reason else float(frechet_distance(
        real_features, generated_features)), "reason": reason}


def pair_consistency(frontal_stated: np.ndarray, lateral_stated: np.ndarray, frontal_features: np.ndarray,
                     lateral_features: np.ndarray) -> dict:
    """Do two views show the same study? ``agreement``: the share of (pair, finding) where both views
    state or both omit the finding; ``similarity``: the mean cosine similarity of each pair's features
    minus that of mismatched pairs (every frontal with every other study's lateral)."""
    n = len(frontal_features)
    reason = too_few(n, "pairs")
    if reason:
        return {"n": n, "agreement": math.nan, "similarity": math.nan, "reason": reason}
    agreement = float((np.asarray(frontal_stated, bool) == np.asarray(lateral_stated, bool)).mean())
    f = frontal_features / np.linalg.norm(frontal_features, axis=1, keepdims=True).clip(1e-12)
    lat = lateral_features / np.linalg.norm(lateral_features, axis=1, keepdims=True).clip(1e-12)
    cos = f @ lat.T
    matched = float(np.trace(cos) / n)
    mismatched = float((cos.sum() - np.trace(cos)) / (n * n - n))
    return {"n": n, "agreement": agreement, "similarity": matched - mismatched, "reason": ""}


# ------------------------------------------------------------------------------ paired differences
def study_matches(stated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, 2) per study: its known findings the output states rightly, and its known findings.
    Summed over any set of studies they give :func:`finding_agreement`'s pooled agreement."""
    stated, truth = np.asarray(stated, dtype=bool), np.asarray(truth, dtype=np.float64)
    if stated.shape != truth.shape:
        raise ValueError(f"stated findings {stated.shape} and truth {truth.shape} differ in shape")
    known = ~np.isnan(truth)
    return np.stack([((stated == (truth == 1)) & known).sum(1), known.sum(1)], axis=1).astype(np.float64)


def pooled_agreement(matches: np.ndarray, idx: np.ndarray | None = None) -> float:
    """Agreement of the studies ``idx`` (all by default) from :func:`study_matches` counts."""
    m = np.asarray(matches, dtype=np.float64)
    m = m if idx is None else m[idx]
    return float(m[:, 0].sum() / m[:, 1].sum()) if m[:, 1].sum() else math.nan


def paired_difference(statistic_a, statistic_b, n: int, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """``statistic_a - statistic_b`` over the same ``n`` studies (each a function of study indices),
    with a percentile bootstrap interval that resamples studies for both at once (the pairing is
    kept: the same conditions and seeds on both sides). "too few samples" below MIN_STUDIES."""
    from support.downstream.metrics import bootstrap_ci

    reason = too_few(n)
    if reason:
        return {"n": n, "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "reason": reason}
    everything = np.arange(n)
    low, high = bootstrap_ci(lambda idx: statistic_a(idx) - statistic_b(idx), n, n_boot, seed, confidence)
    return {"n": n, "difference": statistic_a(everything) - statistic_b(everything), "ci_low": low, "ci_high": high,
            "reason": ""}


def frechet_of(real_features: np.ndarray, generated_features: np.ndarray):
    """The Fréchet distance of the generated rows ``idx`` to the fixed real set, as a statistic of
    study indices for :func:`paired_difference`."""
    from support.eval.distribution import frechet_distance_from_stats, gaussian_stats

    real = gaussian_stats(real_features)
    generated = np.asarray(generated_features, dtype=np.float64)
    return lambda idx: float(frechet_distance_from_stats(*real, *gaussian_stats(generated[idx])))


# ------------------------------------------------------------------------------ finding AUROC
def finding_auroc(scores: np.ndarray, truth: np.ndarray, findings: Sequence[str] = FINDINGS) -> dict:
    """How well an output's reading ranks its studies by the truth: per finding, the AUROC of
    ``scores`` (N, F) (an image classifier's probability; a report's stated finding as 0/1, whose
    AUROC is the mean of sensitivity and specificity) against ``truth``, then the mean over the
    findings the judge reads (finite scores) with at least MIN_PER_CLASS studies of each class.
    Unlike agreement it is not carried by the many absent findings: ignoring the conditions scores 0.5."""
    from support.downstream.metrics import MIN_PER_CLASS

    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} differ in shape")
    read = np.isfinite(scores).all(axis=0) if len(scores) else np.zeros(len(findings), dtype=bool)
    columns = [j for j in range(len(findings)) if read[j] and min(
        int((truth[:, j] == 1).sum()), int((truth[:, j] == 0).sum())) >= MIN_PER_CLASS]
    if not columns:
        return {"n": len(truth), "auroc": math.nan, "findings": [], "reason": (
            f"too few samples: no finding the judge reads has {MIN_PER_CLASS} studies of each class "
            f"among {len(truth)}")}
    return {"n": len(truth), "auroc": auroc_over(scores, truth, columns)(np.arange(len(truth))),
            "findings": [findings[j] for j in columns], "reason": ""}


def _pairwise_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the share of (present, absent) pairs ranked rightly, ties one half (Mann-Whitney);
    unknown (NaN) truth left out. On a few dozen studies this is far cheaper than sorting."""
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return math.nan
    d = pos[:, None] - neg[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def auroc_over(scores: np.ndarray, truth: np.ndarray, columns: Sequence[int]):
    """The mean AUROC over the fixed ``columns`` of the studies ``idx`` (a finding a resample holds
    one class of is left out of that resample's mean), as a statistic for :func:`paired_difference`."""
    scores, truth, columns = np.asarray(scores, np.float64), np.asarray(truth, np.float64), list(columns)

    def statistic(idx: np.ndarray) -> float:
        values = [_pairwise_auroc(truth[idx, j], scores[idx, j]) for j in columns]
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    return statistic
