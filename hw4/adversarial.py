"""FGSM and PGD (L-infinity) on images in [0, 1], and accuracy-vs-epsilon robustness curves.

References: Goodfellow et al. 2015 (FGSM), Madry et al. 2018 (PGD). Epsilon is in pixel units of
[0, 1] images; every adversarial image is clamped to the valid range. ``model`` is any callable
images -> logits (a pixel CNN, a classifier on a VAE's latent, or reconstruct-then-classify).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Classifier = Callable[[torch.Tensor], torch.Tensor]


def _loss_grad(model: Classifier, x: torch.Tensor, y: torch.Tensor,
               targeted: bool) -> torch.Tensor:
    """Gradient of the attacker's objective: raise the loss of y, or lower that of a target."""
    with torch.enable_grad():  # attacks need gradients even when called under no_grad
        x = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def fgsm(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         targeted: bool = False) -> torch.Tensor:
    """x + eps * sign(grad): one step of size eps. ``targeted``: y are the target classes."""
    if eps == 0:
        return x.detach().clone()
    grad = _loss_grad(model, x, y, targeted)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, targeted: bool = False,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent in the eps-ball around x (L-infinity), clamped to [0, 1]."""
    if eps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.detach().clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        adv = (adv + eps * noise).clamp(0, 1)
    for _ in range(steps):
        grad = _loss_grad(model, adv, y, targeted)
        adv = adv + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


ATTACKS = {"fgsm": fgsm, "pgd": pgd}


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def robustness_curve(model: Classifier, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                     attack: str = "fgsm", *, batch: int = 500,
                     on_adversarial: Callable[[float, torch.Tensor], None] | None = None,
                     **attack_kwargs) -> dict[float, float]:
    """Accuracy under ``attack`` at each epsilon (untargeted), computed ``batch`` images at a time.

    ``on_adversarial(eps, adv_batch)`` sees the first batch's adversarial images (for plots or
    reconstruction error)."""
    fn = ATTACKS[attack]
    curve = {}
    for eps in epsilons:
        correct = 0
        for i in range(0, len(x), batch):
            adv = fn(model, x[i:i + batch], y[i:i + batch], eps, **attack_kwargs)
            if i == 0 and on_adversarial is not None:
                on_adversarial(eps, adv)
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == y[i:i + batch]).sum())
        curve[eps] = correct / len(x)
    return curve
