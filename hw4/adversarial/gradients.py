"""The gradient every white-box attack here follows, with EOT, and the per-image losses they climb.

EOT (Athalye et al. 2018, "Synthesizing robust adversarial examples"): against a defence that
draws randomness in its forward pass (diffusion purification's noise), the gradient of one draw
points somewhere random; the attack follows the mean gradient over ``eot`` draws, the gradient
of the expected loss. ``eot = 1`` is the plain gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Classifier = Callable[[torch.Tensor], torch.Tensor]
# a per-image loss: (logits (N, K), labels (N,)) -> (N,)
PerImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, untargeted (Croce & Hein 2020, eq. 6):
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), invariant to shifting and scaling the logits."""
    top = logits.sort(dim=1).values  # (N, K) ascending
    z_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return -(z_y - others) / (top[:, -1] - top[:, -3] + 1e-12)


def dlr_targeted(target: torch.Tensor) -> PerImageLoss:
    """Targeted DLR toward class ``target`` (N,) (eq. 7): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        top = logits.sort(dim=1).values
        z_y = logits.gather(1, y[:, None])[:, 0]
        z_t = logits.gather(1, target[:, None])[:, 0]
        return -(z_y - z_t) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)
    return loss


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i: below zero once the image is misclassified (Square's loss)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    return z_y - logits.scatter(1, y[:, None], float("-inf")).max(1).values


def loss_and_grad(model: Classifier, x: torch.Tensor, y: torch.Tensor, loss: PerImageLoss,
                  eot: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-image loss (N,), its gradient wrt x (N, ...), logits (N, K)), each averaged over
    ``eot`` forward passes of ``model`` (EOT). Works when called under ``no_grad`` too."""
    grad = torch.zeros_like(x)
    total = torch.zeros(x.shape[0], device=x.device)
    logits_sum = None
    with torch.enable_grad():
        for _ in range(eot):
            xi = x.detach().clone().requires_grad_(True)
            logits = model(xi)
            per_image = loss(logits, y)
            (g,) = torch.autograd.grad(per_image.sum(), xi)
            grad += g
            total += per_image.detach()
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
    return total / eot, grad / eot, logits_sum / eot


def project(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius eps around x, and into [0, 1]."""
    return torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
