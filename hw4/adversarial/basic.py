"""FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), L-infinity, with EOT, and accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hw4.adversarial.gradients import Classifier, project

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_grad(model: Classifier, x: torch.Tensor, y: torch.Tensor, targeted: bool,
               loss_fn: Loss, eot: int = 1) -> torch.Tensor:
    """Gradient of the attacker's objective (raise the loss of y, or lower that of a target),
    averaged over ``eot`` forward passes (EOT)."""
    grad = torch.zeros_like(x)
    with torch.enable_grad():  # attacks need gradients even when called under no_grad
        for _ in range(eot):
            xi = x.detach().clone().requires_grad_(True)
            loss = loss_fn(model(xi), y)
            grad += torch.autograd.grad(-loss if targeted else loss, xi)[0]
    return grad / eot


def fgsm(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         targeted: bool = False, loss_fn: Loss = F.cross_entropy, eot: int = 1) -> torch.Tensor:
    """x + eps * sign(grad): one step of size eps. ``targeted``: y are the target classes.

    ``loss_fn(model(x), y)`` is cross-entropy by default; e.g. ``F.mse_loss`` with a
    reconstruction model and y = the clean images attacks the reconstruction instead."""
    if eps == 0:
        return x.detach().clone()
    grad = _loss_grad(model, x, y, targeted, loss_fn, eot)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, targeted: bool = False,
        generator: torch.Generator | None = None, loss_fn: Loss = F.cross_entropy,
        eot: int = 1) -> torch.Tensor:
    """Projected gradient ascent in the eps-ball around x (L-infinity), clamped to [0, 1]; a
    fixed step of ``step_size`` (default 2.5 eps / steps)."""
    if eps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.detach().clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        adv = (adv + eps * noise).clamp(0, 1)
    for _ in range(steps):
        grad = _loss_grad(model, adv, y, targeted, loss_fn, eot)
        adv = project(adv + alpha * grad.sign(), x, eps).detach()
    return adv


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())
