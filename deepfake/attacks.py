"""L-inf gradient attacks, shared by sample generation, adversarial fine-tuning and evaluation.

Epsilons are in pixel units of [0, 1] images (8/255 = eight grey levels); a float or one per
image. Adversarial images stay in [0, 1] and within eps of their source. Crafting touches
neither the model's training mode nor its parameters' gradients. Labels are class indices, or
(N, classes) probabilities to move the prediction away from.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inference import eval_mode

Epsilon = float | torch.Tensor


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: Epsilon,
         random_start: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One signed-gradient step of size eps; with ``random_start`` the "Fast is better than free" variant
    (uniform start in the eps ball, step 1.25 * eps, projected back). A one-step :func:`pgd`."""
    step_size = 1.25 * eps if random_start else eps
    return pgd(model, images, labels, eps, steps=1, step_size=step_size, random_start=random_start, generator=generator)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: Epsilon, steps: int = 10,
        step_size: Epsilon | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball: ``steps`` signed steps (default eps/4), projected every step."""
    eps = _per_image(eps, images)
    if not bool((eps > 0).any()):
        return images.detach().clone()
    step = eps / 4 if step_size is None else _per_image(step_size, images)
    adversarial = images.detach()
    if random_start:
        adversarial = _project(images + _uniform_noise(images, eps, generator), images, eps)
    with eval_mode(model):
        for _ in range(steps):
            adversarial = _signed_step(model, adversarial, labels, images, eps, step)
    return adversarial


def sample_epsilons(n: int, epsilons: Sequence[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) epsilons drawn uniformly from the set, so one batch mixes attack strengths."""
    choices = torch.tensor([float(e) for e in epsilons], dtype=torch.float32)
    return choices[torch.randint(len(choices), (n,), generator=generator)]


def _signed_step(model: nn.Module, current: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                 eps: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """current + step * sign(grad of the cross-entropy), projected to the eps ball around ``images``.

    Callers hold :func:`eval_mode`; the gradient is taken w.r.t. the input only, so no parameter gets a .grad.
    """
    current = current.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(current), labels)
        (gradient,) = torch.autograd.grad(loss, current)
    return _project(current.detach() + step * gradient.sign(), images, eps)


def _project(candidate: torch.Tensor, images: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    images = images.detach()
    return torch.minimum(torch.maximum(candidate, images - eps), images + eps).clamp_(0.0, 1.0)


def _uniform_noise(images: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(-eps, eps), drawn on the generator's device so a CPU generator also serves GPU batches."""
    device = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=device, dtype=images.dtype).to(images.device)
    return (2 * noise - 1) * eps


def _per_image(eps: Epsilon, images: torch.Tensor) -> torch.Tensor:
    """A float or (N,) epsilon as an (N, 1, 1, 1) tensor on the images' device."""
    eps = torch.as_tensor(eps, dtype=images.dtype, device=images.device)
    if eps.ndim == 1:
        if len(eps) != len(images):
            raise ValueError(f"got {len(eps)} epsilons for {len(images)} images")
        eps = eps.view(-1, *([1] * (images.ndim - 1)))
    return eps


def apgd_ce(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 20,
            seed: int = 0) -> torch.Tensor | None:
    """torchattacks' APGD-CE (step sizes of its own, so masked gradients cannot pass as robustness); None
    where torchattacks is not installed (``pip install --no-deps torchattacks``: no dependency of the product)."""
    try:
        import torchattacks
    except ImportError:
        return None
    with eval_mode(model):
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", seed=seed)(images, labels)
