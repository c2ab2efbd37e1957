"""The deployed ensemble attacked as one model, its accuracy-robustness frontier, and the operating points.

A robustness figure for one member says nothing about an ensemble that holds a brittle one: once the
brittle member's weight reaches the cut, an attack on it alone flips any call. So the ensemble is
attacked whole (:class:`EnsembleModel`: members, weights, cut and flip TTA exactly as submitted), for
a grid of weightings that includes each member alone, and the user chooses where to stand on the
resulting frontier: ``accurate``, ``balanced`` or ``robust`` (:func:`choose_point`).
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .attacks import apgd_ce, pgd
from .checkpoints import file_sha256, load_checkpoint
from .config import OPERATING_POINTS, Config
from .cut import choose_threshold, clean_score, crossfit_accuracy, weight_label, weighted_fake_proba
from .data import ImageSet, to_tensor
from .errors import DeepfakeError
from .inference import count_correct, predict_fake_proba, to_float

log = logging.getLogger(__name__)

FRONTIER_EPS = 8 / 255  # the budget each weighting is attacked at (pixels of the 32x32 images)
EXTRA_EPS = 2 / 255  # the operating points are also attacked at this budget
BALANCED_SLACK = 0.01  # balanced: clean accuracy at most this far below accurate's
MAX_POINTS = 6  # weightings measured: each costs one PGD attack on the evaluation sample (minutes on a CPU)
GRID_STEPS = (5, 4, 3, 2, 1)  # weight increments tried, finest first, until the grid fits MAX_POINTS


class FrontierError(DeepfakeError):
    """An operating point that no weighting of the members reaches."""


class EnsembleModel(nn.Module):
    """The submitted ensemble as one classifier: logits (N, 2) whose softmax calls an image fake exactly when
    the weighted mean of the members' fake probabilities (each averaged with its mirror image under flip TTA)
    reaches the cut.

    The fake logit is log p - log(1 - p) - logit(cut), with log p and log(1 - p) taken as log-sum-exps of the
    members' log-softmax, so saturated members keep their gradients and the cut does not mask them.
    """

    def __init__(self, models: dict[str, nn.Module], weights: dict[str, float], threshold: float,
                 tta_flip: bool = False):
        super().__init__()
        if not 0 < threshold < 1:
            raise ValueError(f"cut {threshold} is not a probability strictly between 0 and 1")
        used = [name for name in models if weights.get(name, 0.0) > 0]
        if not used:
            raise ValueError("every member has weight 0")
        total = sum(weights[name] for name in used)
        self.members = nn.ModuleDict({name: models[name] for name in used})
        self.log_weights = {name: math.log(weights[name] / total) for name in used}
        self.logit_cut = math.log(threshold / (1 - threshold))
        self.tta_flip = tta_flip
        self.eval()  # a deployed detector: its members never train, whatever restores this wrapper's mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        terms = [self._member_log_probs(model, images) + self.log_weights[name]
                 for name, model in self.members.items()]
        log_probs = torch.logsumexp(torch.stack(terms), dim=0)  # (N, 2): log(1 - p), log p
        fake_logit = log_probs[:, 1] - log_probs[:, 0] - self.logit_cut
        return torch.stack([torch.zeros_like(fake_logit), fake_logit], dim=1)

    def _member_log_probs(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        log_probs = model(images).float().log_softmax(1)
        if self.tta_flip:
            mirrored = model(images.flip(3)).float().log_softmax(1)
            log_probs = torch.logsumexp(torch.stack([log_probs, mirrored]), dim=0) - math.log(2)
        return log_probs


def weight_grid(names: list[str]) -> list[dict[str, float]]:
    """Weightings of the members on a simplex grid, each member alone first, then the mixtures: the finest
    increment (1/5 for two members, 1/2 for three) whose grid has at most MAX_POINTS points."""
    n = len(names)
    steps = next(s for s in GRID_STEPS if math.comb(s + n - 1, n - 1) <= MAX_POINTS)
    shares = [c for c in itertools.product(range(steps + 1), repeat=n) if sum(c) == steps]
    shares.sort(key=lambda c: (-max(c), tuple(-x for x in c)))
    return [{name: share / steps for name, share in zip(names, c)} for c in shares]


def attacked_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
                      batch_size: int, seed: int, attack: str = "pgd") -> float | None:
    """Accuracy under PGD (random start, step eps/4) or APGD-CE of ``steps`` steps at ``eps``, on [0, 1] images on
    the model's device; None for APGD-CE without torchattacks."""
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        adversarial = (pgd(model, x, y, eps, steps=steps, generator=generator) if attack == "pgd"
                       else apgd_ce(model, x, y, eps, steps=steps, seed=seed))
        if adversarial is None:
            return None
        correct += count_correct(model, adversarial, y)
    return correct / max(1, len(labels))


def measure_frontier(models: dict[str, nn.Module], val: ImageSet, sample: np.ndarray,
                     corrupted: dict[tuple[str, int], np.ndarray], config: Config, device: torch.device) -> dict:
    """The members' validation fake probabilities (so ensemble.py and predict.py need no image of the split),
    and for every weighting of :func:`weight_grid` its cut (chosen on all of ``val``), clean accuracy there
    (also with the cut cross-fitted), per-corruption accuracy and accuracy under the evaluation's PGD
    (``pgd_steps``) at FRONTIER_EPS, attacked whole, on ``val.images[sample]``; then the three operating
    points, each also attacked at EXTRA_EPS and by APGD-CE."""
    started = time.perf_counter()
    probs = {name: predict_fake_proba(model, val.images, batch_size=config.eval_batch_size, device=device,
                                      tta_flip=config.tta_flip) for name, model in models.items()}
    corrupted_probs = {key: {name: predict_fake_proba(model, images, batch_size=config.eval_batch_size,
                                                      device=device, tta_flip=config.tta_flip)
                             for name, model in models.items()} for key, images in corrupted.items()}
    images = to_float(to_tensor(val.images[sample]), device)
    labels = torch.from_numpy(val.labels[sample]).to(device)

    def attacked(weights: dict[str, float], cut: float, eps: float, attack: str = "pgd") -> float | None:
        ensemble = EnsembleModel(models, weights, cut, config.tta_flip).to(device)
        return attacked_accuracy(ensemble, images, labels, eps, config.pgd_steps, config.eval_batch_size,
                                 config.seed, attack)

    points = []
    for weights in weight_grid(list(models)):
        ensemble_probs = weighted_fake_proba(probs, weights)
        cut = choose_threshold(val.labels, ensemble_probs)
        points.append({
            "weights": weights, "threshold": cut,
            "clean_accuracy": float(np.mean((ensemble_probs >= cut) == val.labels)),
            "crossfit_accuracy": crossfit_accuracy(val.labels, ensemble_probs, config.seed),
            "corruption_accuracy": _corruption_accuracy(corrupted_probs, weights, cut, val.labels[sample]),
            "pgd_8/255": attacked(weights, cut, FRONTIER_EPS),
        })
        log.info("frontier %s: cut %.3f, clean %.4f, PGD 8/255 %.4f", weight_label(weights), cut,
                 points[-1]["clean_accuracy"], points[-1]["pgd_8/255"])
    operating, measured = {}, {}
    for name in OPERATING_POINTS:
        index = points.index(choose_point(points, len(sample), name))
        if index not in measured:
            weights, cut = points[index]["weights"], points[index]["threshold"]
            measured[index] = {"pgd_2/255": attacked(weights, cut, EXTRA_EPS),
                               "apgd_ce_8/255": attacked(weights, cut, FRONTIER_EPS, "apgd")}
        operating[name] = {"point": index, "pgd_8/255": points[index]["pgd_8/255"], **measured[index]}
    return {"attack": f"PGD-{config.pgd_steps} (random start, step eps/4)", "pgd_steps": config.pgd_steps,
            "val": {"labels": val.labels.tolist(), "fake_proba": {name: p.tolist() for name, p in probs.items()}},
            "n_val": len(val), "n_sample": len(sample), "points": points, "operating_points": operating,
            "seconds": round(time.perf_counter() - started, 1)}


def _corruption_accuracy(corrupted_probs: dict[tuple[str, int], dict[str, np.ndarray]], weights: dict[str, float],
                         cut: float, labels: np.ndarray) -> dict[str, float]:
    """Per corruption, the weighting's accuracy at its cut, averaged over the severities."""
    by_corruption: dict[str, list[float]] = {}
    for (corruption, _), member_probs in corrupted_probs.items():
        calls = weighted_fake_proba(member_probs, weights) >= cut
        by_corruption.setdefault(corruption, []).append(float(np.mean(calls == labels)))
    return {corruption: float(np.mean(accuracy)) for corruption, accuracy in by_corruption.items()}


def choose_point(points: list[dict], n_attacked: int, name: str, min_clean: float | None = None) -> dict:
    """The weighting an operating point names, among those with at least ``min_clean`` clean accuracy; the
    attacked accuracies were measured on ``n_attacked`` images.

    accurate: the best clean accuracy among the points never below the best member alone, clean or under any
    corruption (that member is one of them); robust: among the points within one standard error of the best
    attacked accuracy, the one nearest a single member (a mixture's gain over the robust member alone must exceed
    the noise of a few hundred attacked images, or the brittle member only adds an attack surface); balanced: the
    best attacked accuracy within BALANCED_SLACK of accurate's clean accuracy. Ties go to the other measure.
    """
    if name not in OPERATING_POINTS:
        raise FrontierError(f"unknown operating point {name!r}; choose one of {', '.join(OPERATING_POINTS)}")
    floor = -1.0 if min_clean is None else min_clean
    candidates = [p for p in points if clean_score(p) >= floor]
    if not candidates:
        best = max(clean_score(p) for p in points)
        raise FrontierError(f"no weighting of the members reaches clean validation accuracy {min_clean:.4f} "
                            f"(the best reaches {best:.4f}): lower --min-clean")
    accuracy_first = lambda p: (clean_score(p), p["pgd_8/255"])  # noqa: E731
    robustness_first = lambda p: (p["pgd_8/255"], clean_score(p))  # noqa: E731
    alone = [p for p in points if max(p["weights"].values()) == 1.0]
    best_member = max(alone, key=accuracy_first)
    never_below = [p for p in candidates if clean_score(p) >= clean_score(best_member) and all(
        p["corruption_accuracy"][c] >= a for c, a in best_member["corruption_accuracy"].items())]
    accurate = max(never_below or candidates, key=accuracy_first)
    if name == "accurate":
        return accurate
    if name == "balanced":
        candidates = [p for p in candidates if clean_score(p) >= clean_score(accurate) - BALANCED_SLACK]
        return max(candidates, key=robustness_first)
    best = max(p["pgd_8/255"] for p in candidates)
    within = [p for p in candidates if p["pgd_8/255"] >= best - math.sqrt(best * (1 - best) / max(1, n_attacked))]
    return max(within, key=lambda p: (max(p["weights"].values()), *robustness_first(p)))


def frontier_of(checkpoints: dict[str, Path], val: ImageSet, sample: np.ndarray,
                corrupted: dict[tuple[str, int], np.ndarray], config: Config, device: torch.device) -> dict:
    """:func:`measure_frontier` for these final checkpoints (name -> file), recording each file's digest, so a
    retrained member makes the stored frontier stale (:func:`is_current`)."""
    models = {name: load_checkpoint(path, device) for name, path in checkpoints.items()}
    log.info("measuring the ensemble's frontier: %d weightings of %s, each attacked whole with PGD-%d at 8/255 on "
             "%d validation images", len(weight_grid(list(models))), ", ".join(models), config.pgd_steps, len(sample))
    return {"members": {name: {"checkpoint": str(path), "sha256": file_sha256(path)}
                        for name, path in checkpoints.items()},
            **measure_frontier(models, val, sample, corrupted, config, device)}


def is_current(frontier: dict | None, digests: dict[str, str]) -> bool:
    """Whether a stored frontier was measured on exactly these members (name -> checkpoint sha256)."""
    if not frontier or set(frontier.get("members", {})) != set(digests):
        return False
    return all(frontier["members"][name]["sha256"] == digest for name, digest in digests.items())


def stored_validation(frontier: dict | None, digests: dict[str, str]) -> tuple[np.ndarray, dict] | None:
    """(validation labels, {name: fake probabilities}) for these members (name -> checkpoint sha256) from a
    frontier measured on them (matched by digest, whatever their names), else None."""
    if not frontier or "val" not in frontier:
        return None
    by_digest = {entry["sha256"]: name for name, entry in frontier["members"].items()}
    names = {name: by_digest.get(digest) for name, digest in digests.items()}
    if None in names.values():
        return None
    probs = frontier["val"]["fake_proba"]
    return (np.asarray(frontier["val"]["labels"], dtype=np.int64),
            {name: np.asarray(probs[stored], dtype=np.float32) for name, stored in names.items()})
