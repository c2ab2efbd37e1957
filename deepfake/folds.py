"""K-fold runs: which images each fold validates on, and what the folds say together.

One validation split of a few hundred images moves by about 3 points with the seed alone, and the
images it holds out never train the submission. With K folds every labelled image is validated on
exactly once, by the fold models that never saw it: their out-of-fold (OOF) probabilities score each
architecture on every labelled image, weigh it in the fold ensemble and place its cut, and the folds'
frontiers, pooled, choose its operating point on all of them.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from .config import OPERATING_POINTS
from .cut import choose_threshold, crossfit_accuracy, weighted_fake_proba
from .data import CLASS_NAMES, DataError, ImageSet
from .frontier import choose_point
from .metrics import classification_metrics

BOOTSTRAP_SAMPLES = 1000  # resamples of the OOF images behind each 95% interval
FOLD_DIR = "fold_{}"  # each fold's checkpoints, samples and figures, under the run's folders


def fold_dir(root: str | Path, fold: int) -> Path:
    return Path(root) / FOLD_DIR.format(fold)


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """A group id per image, shared by images with identical pixels, so a copy never validates its twin."""
    ids: dict[bytes, int] = {}
    return np.array([ids.setdefault(hashlib.sha1(image.tobytes()).digest(), len(ids)) for image in images])


def fold_indices(images: ImageSet, folds: int, seed: int,
                 source: str = "the labelled images") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) indices, sorted, of each of ``folds`` stratified, seeded folds; identical images always
    fall in one fold. DataError, naming ``source``, when a class has fewer distinct images than folds."""
    groups = duplicate_groups(images.images)
    counts = [len(np.unique(groups[images.labels == label])) for label in range(len(CLASS_NAMES))]
    if min(counts) < folds:
        raise DataError(f"{source} ({', '.join(f'{n} {c}' for n, c in zip(counts, CLASS_NAMES))} distinct) are too "
                        f"few for {folds} folds: lower --folds or add images")
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(images.images, images.labels, groups)]


def bootstrap_interval(labels: np.ndarray, fake_probs: np.ndarray, metric: str, threshold: float = 0.5,
                       seed: int = 0) -> list[float] | None:
    """The 95% percentile bootstrap interval of ``metric`` (accuracy or auc) over the images; None where no
    resample can score it (one class)."""
    rng = np.random.default_rng(seed)
    labels, fake_probs = np.asarray(labels), np.asarray(fake_probs, dtype=float)
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, len(labels), len(labels))
        if metric == "accuracy":
            values.append(float(np.mean((fake_probs[pick] >= threshold) == labels[pick])))
        elif len(np.unique(labels[pick])) == 2:
            values.append(float(roc_auc_score(labels[pick], fake_probs[pick])))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def oof_metrics(labels: np.ndarray, fake_probs: np.ndarray, threshold: float = 0.5, seed: int = 0) -> dict:
    """Classification metrics over the OOF probabilities, with 95% bootstrap intervals for accuracy and AUC."""
    metrics = classification_metrics(labels, fake_probs, threshold)
    return {**metrics, "accuracy_ci": bootstrap_interval(labels, fake_probs, "accuracy", threshold, seed),
            "auc_ci": bootstrap_interval(labels, fake_probs, "auc", threshold, seed)}


def pooled_frontier(frontiers: list[dict], members: dict[str, dict], seed: int = 0) -> dict:
    """One frontier for the fold ensemble from each fold's (its models attacked whole on its own validation images).

    A weighting's cut and clean accuracy come from the OOF probabilities (every labelled image, the cut also
    cross-fitted); its accuracy under attack and corruption is the folds' mean, weighted by the images each
    measured. ``members`` (name -> its fold checkpoints' record) is stored with it, so a retrained fold model
    makes it stale. The folds' validation probabilities, concatenated in fold order, are the OOF ones.
    """
    labels = np.concatenate([np.asarray(f["val"]["labels"]) for f in frontiers])
    probs = {name: np.concatenate([np.asarray(f["val"]["fake_proba"][name], dtype=float) for f in frontiers])
             for name in members}
    sizes = np.array([f["n_sample"] for f in frontiers], dtype=float)

    def pooled(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.average(values, weights=sizes))

    points = []
    for point in frontiers[0]["points"]:
        weights = point["weights"]
        same = [next(p for p in f["points"] if p["weights"] == weights) for f in frontiers]
        ensemble_probs = weighted_fake_proba(probs, weights)
        cut = choose_threshold(labels, ensemble_probs)
        points.append({
            "weights": weights, "threshold": cut,
            "clean_accuracy": float(np.mean((ensemble_probs >= cut) == labels)),
            "crossfit_accuracy": crossfit_accuracy(labels, ensemble_probs, seed),
            "corruption_accuracy": {c: pooled([p["corruption_accuracy"][c] for p in same])
                                    for c in point["corruption_accuracy"]},
            "pgd_8/255": pooled([p["pgd_8/255"] for p in same]),
        })
    operating = {}
    for name in OPERATING_POINTS:
        index = points.index(choose_point(points, int(sizes.sum()), name))
        extra = {}
        for key in ("pgd_2/255", "apgd_ce_8/255"):  # where every fold attacked this weighting at its operating point
            values = [next((o[key] for o in f["operating_points"].values()
                            if f["points"][o["point"]]["weights"] == points[index]["weights"]), None)
                      for f in frontiers]
            extra[key] = pooled(values)
        operating[name] = {"point": index, "pgd_8/255": points[index]["pgd_8/255"], **extra}
    return {"members": members, "attack": f"{frontiers[0]['attack']}; each fold's models on their own validation "
                                          f"images, pooled over {len(frontiers)} folds",
            "pgd_steps": frontiers[0]["pgd_steps"], "folds": len(frontiers),
            "val": {"labels": labels.tolist(), "fake_proba": {n: p.tolist() for n, p in probs.items()}},
            "n_val": len(labels), "n_sample": int(sizes.sum()), "points": points, "operating_points": operating,
            "seconds": round(sum(f["seconds"] for f in frontiers), 1)}


def fold_digest(digests: list[str]) -> str:
    """One sha256 for a member made of several fold checkpoints (their digests in fold order)."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


class FoldAverage(nn.Module):
    """One architecture's fold models as one classifier: its softmax is the mean of theirs, so the fold ensemble,
    its attack and predict.py see the fold models' average fake probability."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([model(images).float().log_softmax(1) for model in self.models])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.models))
