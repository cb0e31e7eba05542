"""L-infinity attacks on images in [0, 1] and accuracy-vs-epsilon robustness curves.

FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) here; APGD-CE and APGD-T
(hw4/adversarial/apgd.py) and Square (square.py) beside them; ``ATTACKS`` (registry.py) names
every attack a user can pick, with its cost, and ``autoattack`` (ensemble.py) runs the standard
ensemble (Croce & Hein 2020). Epsilon is in pixel units of [0, 1] images; every adversarial image
is clamped to the valid range. ``model`` is any callable images -> logits (a pixel CNN, a
classifier on a VAE's latent, reconstruct-then-classify, diffusion purification). Every gradient
attack takes ``eot``: the gradient averaged over that many forward passes of a random defence.
"""

from hw4.adversarial.basic import accuracy, fgsm, pgd
from hw4.adversarial.curves import robustness_curve
from hw4.adversarial.ensemble import STANDARD, autoattack
from hw4.adversarial.registry import ATTACKS, AttackSpec, attack_cost

__all__ = ["ATTACKS", "STANDARD", "AttackSpec", "accuracy", "attack_cost", "autoattack", "fgsm",
           "pgd", "robustness_curve"]
