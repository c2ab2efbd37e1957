"""Binary classification metrics with fake (1) as the positive class, via scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score


def classification_metrics(labels: np.ndarray, fake_probs: np.ndarray, threshold: float = 0.5) -> dict:
    labels = np.asarray(labels)
    predictions = (np.asarray(fake_probs) >= threshold).astype(int)
    # AUC is undefined on a single-class set (a tiny smoke split can be one); report None, not a crash.
    auc = roc_auc_score(labels, fake_probs) if len(np.unique(labels)) == 2 else None
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision_score(labels, predictions, zero_division=0)),
        "recall": float(recall_score(labels, predictions, zero_division=0)),
        "f1": float(f1_score(labels, predictions, zero_division=0)),
        "auc": None if auc is None else float(auc),
    }
