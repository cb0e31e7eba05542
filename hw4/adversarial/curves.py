"""Accuracy against epsilon under an attack of the registry, in batches."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hw4.adversarial.ensemble import STANDARD, autoattack
from hw4.adversarial.gradients import Classifier
from hw4.adversarial.registry import ATTACKS, AttackOptions


def robustness_curve(model: Classifier, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                     attack: str = "fgsm", *, targets: torch.Tensor | None = None, batch: int = 500,
                     on_adversarial: Callable[[float, torch.Tensor], None] | None = None,
                     options: AttackOptions | None = None, steps: int | None = None,
                     generator: torch.Generator | None = None) -> dict[float, dict]:
    """Accuracy on the true labels ``y`` under ``attack`` at each epsilon, ``batch`` images at a
    time: ``{eps: {"accuracy": a}}``. With ``targets`` the attack is targeted and the rate of
    hitting the target is reported too (``"target_rate"``). The ensemble (``"autoattack"``) adds
    ``"per_attack"``: the accuracy left after each of its members, in order.

    ``on_adversarial(eps, adv_batch)`` sees the first batch's adversarial images (for plots or
    reconstruction error). ``steps`` is a shortcut for ``options.steps``."""
    spec = ATTACKS[attack]
    options = options or AttackOptions()
    if steps is not None:
        options = options.replace(steps=steps)
    curve: dict[float, dict] = {}
    for eps in epsilons:
        correct = hit = 0
        left = {name: 0 for name in STANDARD} if attack == "autoattack" else None
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            goal = yb if targets is None else targets[i:i + batch]
            if left is not None:
                trace: dict[str, torch.Tensor] = {}
                adv = autoattack(model, xb, goal, eps, options=options, generator=generator,
                                 targeted=targets is not None, trace=trace)
                for name, robust in trace.items():
                    left[name] += int(robust.sum())
            else:
                adv = spec.run(model, xb, goal, eps, targets is not None, options, generator)
            if i == 0 and on_adversarial is not None:
                on_adversarial(eps, adv)
            with torch.no_grad():
                pred = model(adv).argmax(1)
            correct += int((pred == yb).sum())
            hit += int((pred == goal).sum())
        curve[eps] = {"accuracy": correct / len(x)}
        if targets is not None:
            curve[eps]["target_rate"] = hit / len(x)
        if left is not None:
            curve[eps]["per_attack"] = {name: n / len(x) for name, n in left.items()}
    return curve
