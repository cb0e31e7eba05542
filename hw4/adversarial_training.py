"""Adversarial training (Madry et al. 2018): minimise the loss on the worst example in the
L-infinity ball, found by an inner attack on the current model.

Two inner attacks: ``pgd`` (k steps of size ``step_size`` from a random start; Madry et al. use
40 steps of 0.01 at eps = 0.3 on MNIST) and ``fgsm`` with a random start (Wong et al. 2020, "Fast
is better than free": one step of 1.25 eps from a uniform start, as strong a training signal at
about a fifth of PGD-10's cost). ``eps`` may ramp up from 0 over the first epochs
(``eps_schedule``): at eps = 0.3 from the first step a small MNIST CNN can get stuck predicting
one class (Madry's code and Wong et al. both ramp or restart).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hw4 import adversarial

InnerAttack = Literal["pgd", "fgsm"]


def eps_schedule(step: int, ramp_steps: int, eps: float) -> float:
    """eps linearly from 0 to ``eps`` over ``ramp_steps`` optimiser steps, then constant."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return eps
    return eps * (step + 1) / ramp_steps


def worst_case(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
               attack: InnerAttack, steps: int, step_size: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """The inner maximisation: adversarial images for (x, y) against ``model`` in eval mode
    (dropout off, so the attack sees the function it attacks), model left as it was."""
    was_training = model.training
    model.eval()
    try:
        if attack == "fgsm":  # FGSM with a random start, step 1.25 eps (Wong et al. 2020)
            return adversarial.pgd(model, x, y, eps, steps=1, random_start=True,
                                   step_size=step_size if step_size is not None else 1.25 * eps,
                                   generator=generator)
        return adversarial.pgd(model, x, y, eps, steps=steps, step_size=step_size,
                               random_start=True, generator=generator)
    finally:
        model.train(was_training)


def adversarial_train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                           optimizer: torch.optim.Optimizer, eps: float, *,
                           attack: InnerAttack = "pgd", steps: int = 10,
                           step_size: float | None = None,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on the adversarial batch; returns its loss and accuracy (tensors, read
    by the caller when it logs)."""
    adv = worst_case(model, x, y, eps, attack=attack, steps=steps, step_size=step_size,
                     generator=generator) if eps > 0 else x
    model.train()
    logits = model(adv)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean().detach()}
