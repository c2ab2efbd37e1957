"""The training loop behind both phases: base training, then 70/30 clean/adversarial fine-tuning.

One loop serves both phases; they differ only in learning rate, epochs, early stopping and the
share of each batch that is crafted adversarially against the current weights.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm.auto import tqdm

from . import distributed
from .attacks import fgsm, pgd, sample_epsilons
from .batches import EpochPlan, JitteredBatches, batch_loader, worker_count
from .config import Config, Recipe
from .data import ImageSet, to_tensor, train_transform
from .errors import DeepfakeError
from .inference import predict_fake_proba, to_float
from .metrics import classification_metrics
from .precision import training_precision

log = logging.getLogger(__name__)


class NonFiniteLossError(DeepfakeError, RuntimeError):
    """Training diverged; raised instead of saving a broken checkpoint."""


@dataclass
class PhaseSettings:
    """One phase of one member: its length, rate, adversarial share and what it keeps; the member's recipe gives
    the rest (weight decay, warm-up, smoothing, selection metric, corruption share, precision, phase 2's attacks)."""

    name: str  # "base" or "finetune"
    epochs: int
    lr: float
    adv_ratio: float
    patience: int | None  # None: keep the last epoch (no early stopping)
    recipe: Recipe = Recipe()
    anchor: float = 0.0  # weight of KL(the phase's starting weights || the model) on the clean share (_batch_loss)
    average_epochs: int = 0  # > 0: keep the mean of the last N epochs' weights (no early stopping, no best epoch)

    @property
    def bf16_crafting(self) -> bool:
        """Phase 2 crafts its attacks and anchor targets in the training step's bfloat16 (phase 1 crafts none)."""
        return self.name == "finetune" and self.recipe.bf16_crafting


@dataclass
class PhaseResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights are kept; with an average, the last one averaged
    averaged_epochs: int = 0  # how many epochs' weights the kept model averages (0: one epoch's, unaveraged)
    val_metrics: dict = field(default_factory=dict)
    images_per_second: float = 0.0
    seconds: float = 0.0
    precision: str = "float32"  # of the training steps: float32, bfloat16 or float16 (deepfake/precision.py)
    precision_why: str = ""  # the rule that chose it


def base_settings(config: Config, model: str | None = None, pretrained: bool = False) -> PhaseSettings:
    """Phase 1 for ``model``, by its recipe (the shared one for None); a model that starts from ImageNet weights
    fine-tunes for ``pretrained_epochs`` and keeps its last epoch."""
    recipe = config.member(model)
    if pretrained and recipe.pretrained_epochs:
        return PhaseSettings("base", recipe.pretrained_epochs, recipe.lr, 0.0, None, recipe)
    patience = None if recipe.average_epochs else recipe.patience
    return PhaseSettings("base", recipe.base_epochs, recipe.lr, 0.0, patience, recipe,
                         average_epochs=min(recipe.average_epochs, recipe.base_epochs))


def finetune_settings(config: Config, model: str | None = None) -> PhaseSettings:
    """Phase 2 for ``model``, by its recipe: the adversarial share, crafted at its precision, and the clean anchor."""
    recipe = config.member(model)
    return PhaseSettings("finetune", recipe.finetune_epochs, recipe.finetune_lr, recipe.adv_ratio, None, recipe,
                         anchor=recipe.finetune_anchor)


def train_phase(
    model: torch.nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    config: Config,
    settings: PhaseSettings,
    device: torch.device,
    label: str = "",
    on_epoch: Callable[[int, torch.nn.Module, np.ndarray], None] | None = None,
) -> PhaseResult:
    """Train in place; on return the model holds the phase's chosen weights (best, last or averaged).

    ``on_epoch(epoch, model, val_probs)`` sees each epoch's scored weights, for benchmarks that
    compare ways of choosing them.

    Under torchrun each rank trains on its shard of the epoch (``config.batch_size`` images a step per
    rank) with gradients averaged by DistributedDataParallel; rank 0's validation metrics decide the
    kept epoch and early stopping on every rank.
    """
    generator = torch.Generator().manual_seed(config.seed + (0 if settings.name == "base" else 1))
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / distributed.world_size()) / config.batch_size)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    steps = _Steps(model, config, settings, device, steps_per_epoch, generator, label)
    transform = train_transform(config.augmentation, config.image_size, settings.recipe.corruption_prob)
    plan = EpochPlan()
    batches = batch_loader(JitteredBatches(train_set.images, torch.from_numpy(train_set.labels), transform), plan,
                           worker_count(device, distributed.world_size()), pin_memory=device.type == "cuda")
    keeper = _Keeper(settings)
    result = PhaseResult(precision=steps.precision.name, precision_why=steps.precision.why)
    train_seconds, images_seen = 0.0, 0
    progress = tqdm(total=steps.total, desc=f"{label} {settings.name}", unit="step", leave=False,
                    disable=not distributed.is_main())
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = distributed.shard(torch.randperm(len(train_set), generator=generator))
        plan.keys = [(order[i * config.batch_size:(i + 1) * config.batch_size], config.seed * 100003 + steps.step + i)
                     for i in range(steps_per_epoch)]
        started = time.perf_counter()
        loss_sum, correct = steps.epoch(batches, epoch, progress)
        epoch_seconds = time.perf_counter() - started
        loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, sum(len(idx) for idx, _ in plan.keys))
        train_seconds += epoch_seconds
        images_seen += seen

        distributed.sync_buffers(model)
        keeper.average(epoch, model)
        val_probs = predict_fake_proba(model, val_set.images, batch_size=config.eval_batch_size, device=device)
        val = distributed.broadcast(classification_metrics(val_set.labels, val_probs))  # rank 0's decides
        if on_epoch is not None:
            on_epoch(epoch, model, val_probs)
        result.history.append({
            "epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val["accuracy"],
            "val_f1": val["f1"], "val_auc": val["auc"], "lr": steps.optimizer.param_groups[0]["lr"],
            "seconds": epoch_seconds,
        })
        progress.write(f"{label} {settings.name} epoch {epoch}/{settings.epochs}: "
                       f"{_epoch_line(result.history[-1], val)} | {epoch_seconds:.1f}s")
        if keeper.stop(epoch, model, val, result):
            progress.write(f"{label} {settings.name}: early stop, no better val {settings.recipe.select_metric} "
                           f"for {keeper.stale} epochs")
            break
    progress.close()
    keeper.restore(model, train_set.images, val_set, config, device, result)
    if result.averaged_epochs:
        progress.write(f"{label} {settings.name}: mean of epochs {keeper.average_from}-{settings.epochs} kept, "
                       f"val acc {result.val_metrics['accuracy']:.4f}")
    result.seconds = train_seconds
    result.images_per_second = images_seen / train_seconds if train_seconds > 0 else 0.0
    return result


def _epoch_line(row: dict, val: dict) -> str:
    auc = "n/a" if val["auc"] is None else f"{val['auc']:.4f}"
    return (f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | val acc {val['accuracy']:.4f} "
            f"f1 {val['f1']:.4f} auc {auc}")


class _Steps:
    """A phase's optimisation steps: AdamW on a cosine schedule, the training precision, and phase 2's
    adversarial share and anchor."""

    def __init__(self, model: torch.nn.Module, config: Config, settings: PhaseSettings, device: torch.device,
                 steps_per_epoch: int, generator: torch.Generator, label: str):
        self.model, self.config, self.settings, self.device, self.generator = model, config, settings, device, generator
        self.total = max(1, settings.epochs * steps_per_epoch)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                           weight_decay=settings.recipe.weight_decay)
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.total, lr_min=settings.lr * 0.01, t_in_epochs=False,
            warmup_t=settings.recipe.warmup_epochs * steps_per_epoch if settings.name == "base" else 0,
            warmup_lr_init=settings.lr * 0.01,
        )
        self.precision = training_precision(config.precision, device, settings.recipe.bf16)
        log.info("%s %s: training steps in %s (%s)", label, settings.name, self.precision.name, self.precision.why)
        self.scaler = self.precision.scaler(device)
        self.bf16_crafting = settings.bf16_crafting and self.precision.dtype == torch.bfloat16
        self.anchor = _frozen_copy(model) if settings.anchor > 0 else None
        self.net = distributed.wrap(model, device)  # trains; crafting, scoring and the kept weights use the bare model
        self.label, self.step = label, 0

    def epoch(self, batches, epoch: int, progress) -> tuple[float, float]:
        """One epoch's steps: (loss summed over images, correct calls); a loss that is not finite on any rank
        stops the run."""
        device, settings = self.device, self.settings
        # Summed on the device and read once an epoch: a read per step would make the host wait for the GPU.
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        first_bad_step = torch.zeros((), dtype=torch.long, device=device)  # 0: every loss finite
        for batch_index, (batch, batch_labels) in enumerate(batches, start=1):
            x, y = to_float(batch, device), batch_labels.to(device, non_blocking=True)
            with self.precision.autocast(device):
                loss, logits = _batch_loss(self.net, x, y, settings, self.generator, self.anchor,
                                           self.bf16_crafting, crafter=self.model)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.scheduler.step_update(self.step)
            with torch.no_grad():
                first_bad_step = torch.where((first_bad_step == 0) & ~torch.isfinite(loss), batch_index,
                                             first_bad_step)
                sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
            progress.update()
        bad_step = int(first_bad_step)
        if distributed.any_rank(bad_step > 0):
            where = f"step {bad_step}" if bad_step else "a step of another rank"
            raise NonFiniteLossError(f"{self.label} {settings.name}: loss became nan or inf at epoch {epoch}, {where}; "
                                     f"lower the learning rate (config lr/finetune_lr) and rerun")
        loss_sum, correct = sums.tolist()
        return loss_sum, correct


class _Keeper:
    """The weights a phase keeps: its best epoch on validation (stopping after ``patience`` epochs without a
    better one), its last epoch (``patience`` None), or the mean of its last ``average_epochs`` epochs' weights."""

    def __init__(self, settings: PhaseSettings):
        self.settings, self.metric = settings, settings.recipe.select_metric
        self.average_from = settings.epochs - settings.average_epochs + 1 if settings.average_epochs else None
        self.averaged: AveragedModel | None = None
        self.best_score, self.best_state, self.stale = (-1.0, -1.0), None, 0

    def average(self, epoch: int, model: torch.nn.Module) -> None:
        """Add this epoch's weights to the mean once the averaged epochs begin."""
        if self.average_from is not None and epoch >= self.average_from:
            self.averaged = self.averaged or AveragedModel(model, use_buffers=False)
            self.averaged.update_parameters(model)

    def stop(self, epoch: int, model: torch.nn.Module, val: dict, result: PhaseResult) -> bool:
        """Keep this epoch's weights if they are the best so far; whether to stop early."""
        if self.average_from is not None:
            return False  # the kept weights are the mean of the last epochs: nothing to choose or stop on
        score = _selection_score(val, self.metric)
        if self.settings.patience is None or score > self.best_score:
            self.best_score, self.stale = score, 0
            self.best_state = copy.deepcopy(model.state_dict())
            result.best_epoch, result.val_metrics = epoch, val
            return False
        self.stale += 1
        return self.stale >= self.settings.patience

    def restore(self, model: torch.nn.Module, images: np.ndarray, val_set: ImageSet, config: Config,
                device: torch.device, result: PhaseResult) -> None:
        """Load the kept weights into ``model``; averaged weights get batch-norm statistics of their own (one pass
        over the training images) and a validation score."""
        if self.averaged is None:
            model.load_state_dict(self.best_state)
            return
        model.load_state_dict(self.averaged.module.state_dict())
        update_bn((to_float(to_tensor(images[i:i + config.eval_batch_size]), device)
                   for i in range(0, len(images), config.eval_batch_size)), model)
        result.best_epoch, result.averaged_epochs = self.settings.epochs, self.settings.average_epochs
        result.val_metrics = classification_metrics(val_set.labels, predict_fake_proba(
            model, val_set.images, batch_size=config.eval_batch_size, device=device))


def _selection_score(val: dict, metric: str) -> tuple[float, float]:
    """(chosen metric, the other) so ties break on the other; a one-class split has no AUC, so accuracy only.

    AUC ignores the 0.5 threshold the submission uses: a from-scratch EfficientNet-B0 had its best
    validation AUC (0.81) at an epoch where it called nearly everything fake (accuracy 0.56).
    """
    auc = val["auc"] if val["auc"] is not None else val["accuracy"]
    return (auc, val["accuracy"]) if metric == "auc" else (val["accuracy"], auc)


def _batch_loss(model, x, y, settings: PhaseSettings, generator, anchor=None, bf16_crafting=False, crafter=None):
    """(loss, logits of the mixed batch): the first adv_ratio of the batch is replaced by FGSM (or PGD-k) images
    crafted against the current weights (of ``crafter``, the bare model when ``model`` is its
    DistributedDataParallel wrapper, whose gradient hooks only the training step may fire), and the whole
    batch gets cross-entropy. With an ``anchor`` model (the weights phase 2 started from), ``settings.anchor``
    times the KL divergence from its predictions to the model's on the clean images is added, so phase 2 gives
    up fewer of the base model's clean calls (the recipe's ``finetune_anchor``). Attacks and anchor targets are float32
    unless ``bf16_crafting`` (_phase2_precision).
    """
    n_adv = int(round(len(x) * settings.adv_ratio))
    smoothing = settings.recipe.label_smoothing
    if n_adv == 0:
        logits = model(x)
        loss, clean, clean_logits = F.cross_entropy(logits, y, label_smoothing=smoothing), x, logits
    else:
        mixed = torch.cat([_adversarial(crafter or model, x[:n_adv], y[:n_adv], settings.recipe, generator,
                                        bf16_crafting), x[n_adv:]])
        logits = model(mixed)
        loss, clean, clean_logits = F.cross_entropy(logits, y, label_smoothing=smoothing), x[n_adv:], logits[n_adv:]
    if anchor is not None:
        with torch.no_grad(), _phase2_precision(x.device, bf16_crafting):
            target = anchor(clean).softmax(1)
        loss = loss + settings.anchor * F.kl_div(clean_logits.float().log_softmax(1), target, reduction="batchmean")
    return loss, logits


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model as it is now, in eval mode and without gradients: phase 2's anchor to its starting weights."""
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


def _adversarial(model, images, targets, recipe: Recipe, generator, bf16_crafting=False):
    """FGSM (or PGD-k) images for their labels, eps drawn per image from the recipe's fgsm_epsilons.

    Crafted in float32 even inside a bf16 training step, unless ``bf16_crafting`` (_phase2_precision)."""
    eps = sample_epsilons(len(images), recipe.fgsm_epsilons, generator).to(images.device)
    steps = recipe.finetune_attack_steps
    with _phase2_precision(images.device, bf16_crafting):
        if steps > 1:
            return pgd(model, images, targets, eps, steps=steps, step_size=2.5 * eps / steps, generator=generator)
        return fgsm(model, images, targets, eps, random_start=recipe.fgsm_random_start, generator=generator)


def _phase2_precision(device: torch.device, bf16_crafting: bool) -> ContextManager:
    """Float32 for phase 2's attack crafting and anchor targets, so it trains on attacks as precise as the ones
    it is evaluated against; with ``bf16_crafting`` (a recipe's ``bf16_crafting``, when its steps
    run in bfloat16), the training step's own precision, which makes ResNet-SE's phase 2 about 1.4x faster on
    CPUs with native bf16. A float16 step never crafts in float16: its unscaled input gradients underflow."""
    return contextlib.nullcontext() if bf16_crafting else torch.autocast(device.type, enabled=False)
