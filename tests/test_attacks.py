"""The attacks stay inside their eps ball and [0, 1], actually hurt the model, and leave it as they found it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepfake.attacks import fgsm, pgd, sample_epsilons
from deepfake.inference import eval_mode


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


ATTACKS = {
    "fgsm": lambda m, x, y, eps: fgsm(m, x, y, eps),
    "fgsm_random_start": lambda m, x, y, eps: fgsm(m, x, y, eps, random_start=True, generator=seeded()),
    "pgd": lambda m, x, y, eps: pgd(m, x, y, eps, steps=5, generator=seeded()),
}


def toy_model() -> nn.Module:
    """Small, nonlinear, with BatchNorm and dropout so mode handling matters."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.5), nn.Linear(128, 16), nn.Tanh(), nn.Linear(16, 2),
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 8, 8, generator=generator)
    images[0] = 0.0  # saturated pixels: the [0, 1] clamp must bite
    images[1] = 1.0
    return images, torch.randint(0, 2, (16,), generator=generator)


def loss_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad(), eval_mode(model):
        return F.cross_entropy(model(images), labels).item()


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("eps", [0.03, torch.linspace(0.0, 0.1, 16)], ids=["float", "per_image"])
def test_attack_stays_in_eps_ball_and_valid_pixels(attack, eps, batch):
    images, labels = batch
    adversarial = ATTACKS[attack](toy_model(), images, labels, eps)
    bound = torch.as_tensor(eps).view(-1, 1, 1, 1) + 1e-6
    assert adversarial.shape == images.shape and not adversarial.requires_grad
    assert ((adversarial - images).abs() <= bound).all()
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert (adversarial != images).any()


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_raises_the_loss(attack, batch):
    images, labels = batch
    model = toy_model()
    assert loss_of(model, ATTACKS[attack](model, images, labels, 0.05), labels) > loss_of(model, images, labels)


def test_pgd_at_least_as_strong_as_fgsm(batch):
    images, labels = batch
    model = toy_model()
    fgsm_loss = loss_of(model, fgsm(model, images, labels, 0.1), labels)
    pgd_loss = loss_of(model, pgd(model, images, labels, 0.1, steps=10, generator=seeded()), labels)
    assert pgd_loss >= fgsm_loss - 1e-6


@pytest.mark.parametrize("attack", ATTACKS)
def test_zero_eps_returns_the_input(attack, batch):
    images, labels = batch
    assert torch.equal(ATTACKS[attack](toy_model(), images, labels, 0.0), images)


def test_per_image_zero_eps_leaves_that_image_untouched(batch):
    images, labels = batch
    eps = torch.full((16,), 0.05)
    eps[3] = 0.0
    adversarial = pgd(toy_model(), images, labels, eps, steps=3)
    assert torch.equal(adversarial[3], images[3]) and not torch.equal(adversarial[4], images[4])


def test_crafting_restores_train_mode_and_leaves_model_untouched(batch):
    images, labels = batch
    model = toy_model().train()
    model[5].eval()  # a submodule deliberately in its own mode
    bn = model[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, images, labels, 0.05, steps=2)
    fgsm(model, images, labels, 0.05, random_start=True)
    assert model.training and bn.training and not model[5].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. BN running stats
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_eval_mode_restores_mode_after_an_exception():
    model = toy_model().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("crafting failed")
    assert model.training


def test_attacks_work_under_no_grad(batch):
    images, labels = batch
    with torch.no_grad():
        adversarial = fgsm(toy_model(), images, labels, 0.03)
    assert (adversarial != images).any()


def test_random_start_is_reproducible_with_a_generator(batch):
    images, labels = batch
    model = toy_model()
    first, second = (pgd(model, images, labels, 0.03, steps=2, generator=seeded()) for _ in range(2))
    assert torch.equal(first, second)


def test_sample_epsilons_draws_from_the_set():
    choices = (0.02, 0.03, 0.05, 0.08)
    eps = sample_epsilons(400, choices, generator=torch.Generator().manual_seed(0))
    assert eps.shape == (400,) and eps.dtype == torch.float32
    assert set(eps.tolist()) == {torch.tensor(c).item() for c in choices}
    again = sample_epsilons(400, choices, generator=torch.Generator().manual_seed(0))
    assert torch.equal(eps, again)
