"""AutoAttack's standard ensemble (Croce & Hein 2020): APGD-CE, then APGD-T on the DLR loss, then
Square, each run only on the images every attack before it failed on, so that each image keeps
the first adversarial example found. Its robust accuracy is, per image, the minimum over its
attacks: an image counts as robust only if no member fooled it.

FAB-T, the original's third member, is left out: a minimum-norm attack that in the AutoAttack
paper's tables almost never fools an image that APGD-T did not (BENCHMARKS.md compares this
ensemble with torchattacks' AutoAttack, FAB-T included).
"""

from __future__ import annotations

import torch

from hw4.adversarial.gradients import Classifier
from hw4.adversarial.registry import ATTACKS, AttackOptions

STANDARD = ("apgd-ce", "apgd-t", "square")


def succeeded(model: Classifier, adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    with torch.no_grad():
        pred = model(adv).argmax(1)
    return pred == y if targeted else pred != y


def autoattack(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *,
               options: AttackOptions | None = None, generator: torch.Generator | None = None,
               attacks: tuple[str, ...] = STANDARD, targeted: bool = False,
               trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The ensemble's adversarial images. ``trace`` (if given) receives, for each attack in turn,
    which images are still robust after it (N,) bool: the per-attack column AutoAttack reports."""
    options = options or AttackOptions()
    adv = x.detach().clone()
    robust = ~succeeded(model, adv, y, targeted)  # a misclassified clean image needs no attack
    for name in attacks:
        idx = robust.nonzero().flatten()
        if len(idx):
            found = ATTACKS[name].run(model, x[idx], y[idx], eps, targeted, options, generator)
            fooled = succeeded(model, found, y[idx], targeted)
            adv[idx[fooled]] = found[fooled]
            robust[idx[fooled]] = False
        if trace is not None:
            trace[name] = robust.clone()
    return adv
