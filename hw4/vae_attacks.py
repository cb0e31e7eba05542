"""The Fashion-MNIST classifiers of the VAE under attack: the pixel CNN, the classifier on the
VAE's latent and reconstruct-then-classify, their robustness curves and the reconstruction error
of attacked images. Pure functions of models and tensors; ``jobs/evaluate.py`` writes the report."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hw4 import adversarial
from hw4.models.autoencoder import Autoencoder
from hw4.trained import Purified, TrainedVAE, reconstruction

# the three classifiers under attack: the names reports, Serve and the web page use, with the
# words a person reads (Serve's /info hands both to the page)
ATTACK_TARGET_LABELS = {"pixel_cnn": "pixel CNN", "latent_classifier": "latent classifier",
                        "reconstruct_then_classify": "reconstruct, then classify"}
ATTACK_TARGETS = tuple(ATTACK_TARGET_LABELS)


def attack_targets(vae: TrainedVAE, pixel: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The three models under attack: the pixel CNN, the classifier on the VAE latent (the
    fine-tuned one, else the probe), and reconstruct-then-classify with the pixel CNN."""
    pixel_cnn, latent_classifier, purified = ATTACK_TARGETS
    latent = vae.finetune or vae.probe
    out = {pixel_cnn: pixel}
    if latent is not None:
        out[latent_classifier] = latent
    out[purified] = Purified(vae.vae, pixel).eval()
    return out


def robustness(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
               epsilons: list[float], attacks: list[str], *, pgd_steps: int = 20, seed: int = 0,
               batch: int = 250, examples_eps: float | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Accuracy vs eps for each model and attack, untargeted and targeted (target = y + 1 mod 10).

    Returns (curves, examples): curves[model][attack][untargeted|targeted] = {eps: {...}};
    examples[model] = the first 8 adversarial images (untargeted, first attack) at
    ``examples_eps`` (default: the largest eps)."""
    examples_eps = max(epsilons) if examples_eps is None else examples_eps
    targets = (y + 1) % 10
    curves: dict = {}
    examples: dict = {}
    for name, model in models.items():
        curves[name] = {}
        for attack in attacks:
            kw = {"generator": torch.Generator().manual_seed(seed)}
            if attack == "pgd":
                kw["steps"] = pgd_steps

            def keep(eps: float, adv: torch.Tensor, name: str = name, attack: str = attack) -> None:
                if eps == examples_eps and attack == attacks[0]:
                    examples[name] = adv[:8].detach()

            t0 = time.time()
            curves[name][attack] = {
                "untargeted": adversarial.robustness_curve(model, x, y, epsilons, attack, batch=batch,
                                                           on_adversarial=keep, **kw),
                "targeted": adversarial.robustness_curve(model, x, y, epsilons, attack,
                                                         targets=targets, batch=batch, **kw),
            }
            if progress:
                acc = curves[name][attack]["untargeted"][max(epsilons)]["accuracy"]
                progress(f"{name} {attack}: accuracy {acc:.3f} at eps={max(epsilons)} "
                         f"({time.time() - t0:.0f}s)")
    return curves, examples


# the attacks that climb any loss (here the reconstruction's MSE), not only a classifier's
LOSS_ATTACKS = {"fgsm": adversarial.fgsm, "pgd": adversarial.pgd}


def reconstruction_under_attack(vae: Autoencoder, x: torch.Tensor, epsilons: list[float],
                                attacks: list[str], *, pgd_steps: int = 20, seed: int = 0) -> dict:
    """Mean squared error (per pixel) between the clean image and the VAE's reconstruction of
    an attacked one, for an attack that maximises exactly that error, next to uniform +-eps
    sign noise of the same size (the error a non-adversarial perturbation causes). Only the
    ``LOSS_ATTACKS`` among ``attacks`` apply."""
    out: dict = {}
    noise_gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, x.shape, generator=noise_gen).float() * 2 - 1
    with torch.no_grad():
        out["random_sign_noise"] = {
            eps: float(F.mse_loss(vae.reconstruct((x + eps * sign).clamp(0, 1)), x))
            for eps in epsilons}
    for attack in (a for a in attacks if a in LOSS_ATTACKS):
        kw = {"steps": pgd_steps, "generator": torch.Generator().manual_seed(seed)} \
            if attack == "pgd" else {}
        out[attack] = {}
        recon = functools.partial(reconstruction, vae)
        for eps in epsilons:
            adv = LOSS_ATTACKS[attack](recon, x, x, eps, loss_fn=F.mse_loss, **kw)
            with torch.no_grad():
                out[attack][eps] = float(F.mse_loss(vae.reconstruct(adv), x))
    return out


def most_robust(curves: dict, attack: str) -> tuple[str, float]:
    """The model with the largest area under its untargeted accuracy-vs-eps curve (trapezoids)."""
    def area(curve: dict) -> float:
        eps = sorted(curve)
        return sum((b - a) * (curve[a]["accuracy"] + curve[b]["accuracy"]) / 2
                   for a, b in zip(eps[:-1], eps[1:], strict=True))

    scores = {name: area(c[attack]["untargeted"]) for name, c in curves.items()}
    best = max(scores, key=scores.get)
    return best, scores[best]

