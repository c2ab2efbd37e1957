"""The ensemble's probability and its cut: shared by the submission, the frontier and the benchmark.

Averaging members that lean the same way shifts the best cut away from 0.5, so the cut is chosen on
validation; the accuracy at a cut chosen on the same images flatters it, so it is also cross-fitted.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold

THRESHOLD = 0.5  # fake probability at or above which an image is called fake, unless validation picks another
CROSSFIT_FOLDS = 5  # folds of the validation split for the honest estimate of the chosen threshold


def weighted_fake_proba(probs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted mean of the members' fake probabilities, image by image."""
    if set(probs) != set(weights):
        raise ValueError(f"probabilities for {sorted(probs)} but weights for {sorted(weights)}")
    names = list(weights)
    return np.average(np.stack([probs[name] for name in names]), axis=0, weights=[weights[name] for name in names])


def choose_threshold(labels: np.ndarray, fake_probs: np.ndarray) -> float:
    """The fake-probability cut with the best validation accuracy, the one nearest 0.5 among ties.

    Averaging members that lean the same way (all called too many images fake in the benchmark) shifts
    the ensemble's best cut away from 0.5; ties go to 0.5, so the cut moves only where it wins images.
    A one-class split cannot place a cut, so it keeps 0.5.
    """
    labels, fake_probs = np.asarray(labels), np.asarray(fake_probs, dtype=float)
    if len(np.unique(labels)) < 2:
        return THRESHOLD
    cuts = np.unique(fake_probs)
    candidates = np.concatenate([[THRESHOLD], (cuts[:-1] + cuts[1:]) / 2])
    real, fake = np.sort(fake_probs[labels == 0]), np.sort(fake_probs[labels == 1])
    # right at a cut: real images below it, fake images at or above it (sorted counts, so large splits stay cheap)
    correct = np.searchsorted(real, candidates) + len(fake) - np.searchsorted(fake, candidates)
    best = candidates[correct == correct.max()]
    return float(best[np.argmin(np.abs(best - THRESHOLD))])


def crossfit_accuracy(labels: np.ndarray, fake_probs: np.ndarray, seed: int = 0) -> float | None:
    """Validation accuracy with each image called at a cut chosen on the other folds.

    The accuracy at a cut chosen on the same images flatters it; this is what the choice is worth on
    images it did not see. None when a class has fewer images than folds.
    """
    labels, fake_probs = np.asarray(labels), np.asarray(fake_probs, dtype=float)
    if len(np.unique(labels)) < 2 or np.bincount(labels).min() < CROSSFIT_FOLDS:
        return None
    correct = 0
    for fit, held in StratifiedKFold(CROSSFIT_FOLDS, shuffle=True, random_state=seed).split(fake_probs, labels):
        cut = choose_threshold(labels[fit], fake_probs[fit])
        correct += int(accuracy_score(labels[held], fake_probs[held] >= cut, normalize=False))
    return correct / len(labels)


def clean_score(point: dict) -> float:
    """A frontier point's clean validation accuracy with its cut cross-fitted, where the split allows it."""
    return point["clean_accuracy"] if point["crossfit_accuracy"] is None else point["crossfit_accuracy"]


def weight_label(weights: dict[str, float]) -> str:
    """'0.7 resnet_se + 0.3 tf_efficientnet_lite0', members at weight 0 left out."""
    return " + ".join(f"{w:.2g} {name}" for name, w in weights.items() if w > 0)
