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
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_grad(model: Classifier, x: torch.Tensor, y: torch.Tensor, targeted: bool,
               loss_fn: Loss) -> torch.Tensor:
    """Gradient of the attacker's objective: raise the loss of y, or lower that of a target."""
    with torch.enable_grad():  # attacks need gradients even when called under no_grad
        x = x.detach().clone().requires_grad_(True)
        loss = loss_fn(model(x), y)
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def fgsm(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         targeted: bool = False, loss_fn: Loss = F.cross_entropy) -> torch.Tensor:
    """x + eps * sign(grad): one step of size eps. ``targeted``: y are the target classes.

    ``loss_fn(model(x), y)`` is cross-entropy by default; e.g. ``F.mse_loss`` with a
    reconstruction model and y = the clean images attacks the reconstruction instead."""
    if eps == 0:
        return x.detach().clone()
    grad = _loss_grad(model, x, y, targeted, loss_fn)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, targeted: bool = False,
        generator: torch.Generator | None = None, loss_fn: Loss = F.cross_entropy) -> torch.Tensor:
    """Projected gradient ascent in the eps-ball around x (L-infinity), clamped to [0, 1]."""
    if eps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.detach().clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        adv = (adv + eps * noise).clamp(0, 1)
    for _ in range(steps):
        grad = _loss_grad(model, adv, y, targeted, loss_fn)
        adv = adv + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


ATTACKS = {"fgsm": fgsm, "pgd": pgd}


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def robustness_curve(model: Classifier, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                     attack: str = "fgsm", *, targets: torch.Tensor | None = None, batch: int = 500,
                     on_adversarial: Callable[[float, torch.Tensor], None] | None = None,
                     **attack_kwargs) -> dict[float, dict[str, float]]:
    """Accuracy on the true labels ``y`` under ``attack`` at each epsilon, ``batch`` images at a
    time. With ``targets`` the attack is targeted and the rate of hitting the target is reported
    too: ``{eps: {"accuracy": a, "target_rate": r}}``.

    ``on_adversarial(eps, adv_batch)`` sees the first batch's adversarial images (for plots or
    reconstruction error)."""
    fn = ATTACKS[attack]
    curve = {}
    for eps in epsilons:
        correct = hit = 0
        for i in range(0, len(x), batch):
            goal = y[i:i + batch] if targets is None else targets[i:i + batch]
            adv = fn(model, x[i:i + batch], goal, eps, targeted=targets is not None,
                     **attack_kwargs)
            if i == 0 and on_adversarial is not None:
                on_adversarial(eps, adv)
            with torch.no_grad():
                pred = model(adv).argmax(1)
            correct += int((pred == y[i:i + batch]).sum())
            hit += int((pred == goal).sum())
        curve[eps] = {"accuracy": correct / len(x)}
        if targets is not None:
            curve[eps]["target_rate"] = hit / len(x)
    return curve
