"""The harness's metrics with seeded bootstrap intervals (test images resampled).

Each scorer returns rows ``{"metric", "value", "ci_low", "ci_high", "n_test", "reason"}``. A
metric that cannot be measured on what it was given (one class, too few samples, no annotation)
is NaN with the reason, never a number that only looks like a result; so is an AUROC whose 95%
interval spans more than :data:`MAX_AUROC_CI_WIDTH` (its interval is kept, to show why).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .auroc import bootstrap_auroc, known_mask, per_finding_auroc

# The MGCA detection protocol: mAP averaged over IoU 0.40, 0.45, ..., 0.75.
MGCA_IOU_THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))
NAN = float("nan")
# AUROC and F1 rank or count the rarer class: with fewer cases of it than this, a few cases move
# the value by tenths (three positives give intervals like [0.03, 0.58]): not a result.
MIN_PER_CLASS = 10
# An AUROC whose 95% interval is wider than this says little more than "somewhere above chance".
MAX_AUROC_CI_WIDTH = 0.4


def row(metric: str, value: float = NAN, ci: tuple[float, float] = (NAN, NAN), n_test: int = 0,
        reason: str = "") -> dict:
    return {"metric": metric, "value": float(value), "ci_low": float(ci[0]), "ci_high": float(ci[1]),
            "n_test": int(n_test), "reason": reason}


def too_few(n: int, minimum: int, what: str = "test images") -> str:
    """The reason a sample of ``n`` cannot carry a metric (empty when it can)."""
    return f"too few samples: {n} {what}, at least {minimum} needed" if n < minimum else ""


def too_few_of_a_class(y: np.ndarray, negatives: bool = True) -> str:
    """The reason definite 0/1 labels ``y`` hold too few positives (or negatives) for a ranking or
    counting metric; empty when they hold enough."""
    n_pos = int((y == 1).sum())
    counts = {"positives": n_pos, "negatives": int(y.size - n_pos)} if negatives else {"positives": n_pos}
    short = {what: n for what, n in counts.items() if n < MIN_PER_CLASS}
    return "" if not short else ("too few samples: " + " and ".join(f"{n} {what}" for what, n in short.items())
                                 + f" among {y.size} test labels, at least {MIN_PER_CLASS} of each class needed")


def too_wide(ci_low: float, ci_high: float, limit: float = MAX_AUROC_CI_WIDTH) -> str:
    """The reason a value whose interval spans more than ``limit`` is not a result (empty when it is)."""
    if np.isfinite(ci_low) and np.isfinite(ci_high) and ci_high - ci_low > limit:
        return f"too few samples: the 95% interval [{ci_low:.2f}, {ci_high:.2f}] spans more than {limit:g}"
    return ""


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``n_boot`` seeded resamples of ``n``
    cases with replacement; resamples where it is undefined (NaN) are skipped. NaN when none counts."""
    if n < 2:
        raise ValueError(f"bootstrap: {n} sample(s); at least 2 are needed to resample")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return NAN, NAN
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


# ------------------------------------------------------------------------------------ AUROC
def auroc_rows(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], *, n_boot: int, seed: int,
               confidence: float, min_test: int, reasons: dict[str, str] | None = None) -> list[dict]:
    """Per-finding AUROC over the known (0/1) labels, then their mean ("auroc"), each with a
    bootstrap interval. ``reasons`` marks findings that cannot be scored for reasons known
    upstream (no training label, too few neighbours). The mean is over every finding or none:
    means over different findings would not compare."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    known = known_mask(labels)
    rows = []
    for j, name in enumerate(names):
        y = labels[known[:, j], j]
        n_pos = int(y.sum())
        reason = ((reasons or {}).get(name) or too_few(y.size, min_test, "test images with a definite label")
                  or ("one class only in the test set (AUROC undefined)" if n_pos in (0, y.size) else "")
                  or too_few_of_a_class(y))
        if reason:
            rows.append(row(f"auroc:{name}", n_test=y.size, reason=reason))
            continue
        ci = bootstrap_auroc(labels[:, j], scores[:, j], n_boot=n_boot, seed=seed + j, confidence=confidence)
        interval, wide = (ci["ci_low"], ci["ci_high"]), too_wide(ci["ci_low"], ci["ci_high"])
        rows.append(row(f"auroc:{name}", NAN if wide else ci["auroc"], interval, ci["n"], wide))
    left_out = [name for name, r in zip(names, rows) if r["reason"]]
    if left_out:
        rows.append(row("auroc", n_test=len(labels), reason=f"mean undefined: {left_out} not scored"))
        return rows

    def mean_auroc(idx: np.ndarray) -> float:
        return float(np.mean(list(per_finding_auroc(labels[idx], scores[idx], names).values())))

    value = float(np.mean([r["value"] for r in rows]))
    interval = bootstrap_ci(mean_auroc, len(labels), n_boot, seed, confidence)
    wide = too_wide(*interval)
    rows.append(row("auroc", NAN if wide else value, interval, len(labels), wide))
    return rows


def f1_rows(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], *, threshold: float, n_boot: int,
            seed: int, confidence: float, min_test: int, reasons: dict[str, str] | None = None) -> list[dict]:
    """Per-finding F1 of ``scores > threshold`` over the known (0/1) labels, with a bootstrap
    interval; NaN with the reason where the finding cannot be scored (as :func:`auroc_rows`) or
    the test set holds no positive (F1 is undefined without one)."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    known = known_mask(labels)
    rows = []
    for j, name in enumerate(names):
        y, p = labels[known[:, j], j], scores[known[:, j], j] > threshold
        reason = ((reasons or {}).get(name) or too_few(y.size, min_test, "test images with a definite label")
                  or ("no positive in the test set (F1 undefined)" if not y.any() else "")
                  or too_few_of_a_class(y, negatives=False))
        if reason:
            rows.append(row(f"f1:{name}", n_test=y.size, reason=reason))
            continue

        def f1(idx: np.ndarray) -> float:
            tp = float((p[idx] & (y[idx] == 1)).sum())
            positives = float(p[idx].sum() + (y[idx] == 1).sum())
            return 2.0 * tp / positives if positives else NAN

        everything = np.arange(y.size)
        rows.append(row(f"f1:{name}", f1(everything), bootstrap_ci(f1, y.size, n_boot, seed + j, confidence), y.size))
    return rows


# ------------------------------------------------------------------------------------ accuracy
def accuracy_row(classes: np.ndarray, predicted: np.ndarray, *, n_boot: int, seed: int, confidence: float,
                 min_test: int, reason: str = "") -> dict:
    correct = np.asarray(classes) == np.asarray(predicted)
    reason = reason or too_few(correct.size, min_test)
    if reason:
        return row("accuracy", n_test=correct.size, reason=reason)
    ci = bootstrap_ci(lambda idx: float(correct[idx].mean()), correct.size, n_boot, seed, confidence)
    return row("accuracy", float(correct.mean()), ci, correct.size)


# ------------------------------------------------------------------------------------ Dice
def dice_row(overlap: np.ndarray, *, n_boot: int, seed: int, confidence: float, min_test: int) -> dict:
    """Dice pooled over the test images, 2 sum|P&G| / (sum|P| + sum|G|), from per-image
    (intersection, predicted, true) pixel counts (N, 3)."""
    overlap = np.asarray(overlap, dtype=np.float64).reshape(-1, 3)

    def dice(idx: np.ndarray) -> float:
        inter, pred, true = overlap[idx].sum(axis=0)
        return 2.0 * inter / (pred + true) if pred + true > 0 else NAN

    reason = too_few(len(overlap), min_test) or ("" if overlap[:, 2].sum() > 0 else "no mask in the test set")
    if reason:
        return row("dice", n_test=len(overlap), reason=reason)
    everything = np.arange(len(overlap))
    return row("dice", dice(everything), bootstrap_ci(dice, len(overlap), n_boot, seed, confidence), len(overlap))


# ------------------------------------------------------------------------------------ mAP
def mean_average_precision(predictions: Sequence[dict], targets: Sequence[dict],
                           iou_thresholds: Sequence[float] = MGCA_IOU_THRESHOLDS) -> float:
    """Box mAP (COCO-style, pycocotools) averaged over ``iou_thresholds`` and the classes present;
    NaN when no image holds a box."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=list(iou_thresholds), box_format="xyxy", iou_type="bbox",
                                  backend="pycocotools")
    metric.update(list(predictions), list(targets))
    value = float(metric.compute()["map"])
    return value if value >= 0 else NAN   # pycocotools' -1: no ground truth to score


def map_row(predictions: Sequence[dict], targets: Sequence[dict], *, n_boot: int, seed: int, confidence: float,
            min_test: int, iou_thresholds: Sequence[float] = MGCA_IOU_THRESHOLDS) -> dict:
    name = f"map@{iou_thresholds[0]:.2f}:{iou_thresholds[-1]:.2f}"
    n_boxes = sum(len(t["boxes"]) for t in targets)
    reason = too_few(len(targets), min_test) or ("" if n_boxes else "no box in the test set")
    if reason:
        return row(name, n_test=len(targets), reason=reason)

    def mean_ap(idx: np.ndarray) -> float:
        return mean_average_precision([predictions[i] for i in idx], [targets[i] for i in idx], iou_thresholds)

    everything = np.arange(len(targets))
    return row(name, mean_ap(everything), bootstrap_ci(mean_ap, len(targets), n_boot, seed, confidence), len(targets))
