"""Automated Turing test: how well a classifier tells real from synthetic images.

A logistic regression on standardised features, cross-validated with stratified folds; the
AUROC is about 0.5 when the sets are indistinguishable in that feature space and 1.0 when they
are trivially separable. Classes are balanced first (the larger set subsampled) so that the
score does not depend on the ratio of set sizes.
"""

from __future__ import annotations

import numpy as np


def automated_turing_test(real, synthetic, folds: int = 5, seed: int = 0, C: float = 1.0,
                          max_iter: int = 2000) -> dict[str, float]:
    """Cross-validated AUROC of a real-vs-synthetic logistic regression on features (N, D).

    Returns ``{"turing_auroc", "turing_auroc_std", "turing_n"}`` (mean and std over folds, and
    the number of samples per class used).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r = np.asarray(real, dtype=np.float64)
    s = np.asarray(synthetic, dtype=np.float64)
    if r.ndim != 2 or s.ndim != 2 or r.shape[1] != s.shape[1]:
        raise ValueError(f"expected two feature matrices with the same width, got {r.shape} and {s.shape}")
    n = min(len(r), len(s))
    if n < folds:
        raise ValueError(f"the Turing test needs at least {folds} samples per class (folds), got {n}")
    rng = np.random.default_rng(seed)
    r = r[rng.choice(len(r), n, replace=False)]
    s = s[rng.choice(len(s), n, replace=False)]
    x = np.concatenate([r, s])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(model, x, y, cv=cv, scoring="roc_auc")
    return {"turing_auroc": float(scores.mean()), "turing_auroc_std": float(scores.std()), "turing_n": int(n)}
