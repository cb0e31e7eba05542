"""Every attack a user can pick by name, with its defaults and its cost: the one list that
``jobs/evaluate.py``, Serve's ``/adversarial`` and its budget, and the page read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hw4.adversarial.apgd import apgd, apgd_targeted
from hw4.adversarial.basic import fgsm, pgd
from hw4.adversarial.gradients import Classifier
from hw4.adversarial.square import square


@dataclass(frozen=True)
class AttackOptions:
    """What a caller may set; ``steps`` None means the attack's own default."""

    steps: int | None = None  # gradient steps of PGD and APGD
    targets: int = 9  # APGD-T: target classes tried per image
    queries: int = 5000  # Square: model calls per image
    eot: int = 1  # gradient attacks: forward passes averaged per gradient
    restarts: int = 1  # APGD: runs from new random starts

    def replace(self, **changes) -> AttackOptions:
        return dataclasses.replace(self, **changes)


Run = Callable[[Classifier, torch.Tensor, torch.Tensor, float, bool, AttackOptions,
                torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class AttackSpec:
    name: str
    label: str
    default_steps: int  # 0: the attack takes no steps option
    run: Run  # (model, x, y, eps, targeted, options, generator) -> adversarial images
    cost: Callable[[int, AttackOptions], int]  # (steps, options) -> model calls per image

    def steps(self, o: AttackOptions) -> int:
        """The gradient steps it takes (1 for an attack without a steps option)."""
        return o.steps if o.steps is not None and self.default_steps else max(self.default_steps, 1)

    def calls(self, o: AttackOptions) -> int:
        """Model calls (forward, with backward for gradient attacks) per image and epsilon, at
        most: EOT samples and APGD-T's targets included; Square's queries."""
        return self.cost(self.steps(o), o)


def _fgsm(model, x, y, eps, targeted, o, generator):
    return fgsm(model, x, y, eps, targeted=targeted, eot=o.eot)


def _pgd(model, x, y, eps, targeted, o, generator):
    return pgd(model, x, y, eps, steps=PGD.steps(o), targeted=targeted, eot=o.eot,
               generator=generator)


def _apgd_ce(model, x, y, eps, targeted, o, generator):
    return apgd(model, x, y, eps, steps=APGD_CE.steps(o), restarts=o.restarts, eot=o.eot,
                generator=generator, targeted=targeted)


def _apgd_t(model, x, y, eps, targeted, o, generator):
    return apgd_targeted(model, x, y, eps, steps=APGD_T.steps(o), targets=o.targets,
                         restarts=o.restarts, eot=o.eot, generator=generator, targeted=targeted)


def _square(model, x, y, eps, targeted, o, generator):
    return square(model, x, y, eps, queries=o.queries, generator=generator, targeted=targeted)


def _autoattack(model, x, y, eps, targeted, o, generator):
    from hw4.adversarial.ensemble import autoattack

    return autoattack(model, x, y, eps, options=o, generator=generator, targeted=targeted)


FGSM = AttackSpec("fgsm", "FGSM", 0, _fgsm, lambda steps, o: o.eot)
PGD = AttackSpec("pgd", "PGD", 20, _pgd, lambda steps, o: steps * o.eot)
APGD_CE = AttackSpec("apgd-ce", "APGD-CE", 100, _apgd_ce,
                     lambda steps, o: (steps + 1) * o.eot * o.restarts)
APGD_T = AttackSpec("apgd-t", "APGD-T (DLR)", 100, _apgd_t,
                    lambda steps, o: (steps + 1) * o.eot * o.restarts * o.targets)
SQUARE = AttackSpec("square", "Square", 0, _square, lambda steps, o: o.queries)
# the ensemble's members run one after another on the images not yet fooled: at most their sum
AUTOATTACK = AttackSpec("autoattack", "AutoAttack (standard)", 100, _autoattack,
                        lambda steps, o: (steps + 1) * o.eot * o.restarts * (1 + o.targets) + o.queries)
ATTACKS: dict[str, AttackSpec] = {a.name: a for a in (FGSM, PGD, APGD_CE, APGD_T, SQUARE, AUTOATTACK)}


def attack_cost(name: str, options: AttackOptions) -> int:
    """Model calls per image and epsilon of attack ``name``."""
    return ATTACKS[name].calls(options)
