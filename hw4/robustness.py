"""MNIST robustness of three defences under the registry's attacks: the pinned CNN (undefended),
the adversarially trained CNN (``jobs/train_robust.py``, registry family ``robust_mnist``), and
diffusion purification in front of the pinned CNN (``hw4/purification.py``), the latter under
adaptive attacks: full gradients through the solver with EOT, and BPDA with EOT. Pure functions
of models and tensors; ``jobs/evaluate_robustness.py`` writes the report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from hw4 import adversarial
from hw4.adversarial.registry import AttackOptions
from hw4.checkpoint import load_checkpoint, load_state
from hw4.models import config_from_dict
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from hw4.purification import BPDA, PurifiedClassifier
from hw4.registry import read_best

ROBUST_FAMILY = "robust_mnist"


def load_robust_classifier(path: str | os.PathLike) -> ConvClassifier:
    """The adversarially trained CNN of a ``train_robust`` checkpoint, in eval mode."""
    state = load_checkpoint(path)
    model = ConvClassifier(config_from_dict(ClassifierConfig, state["model_config"]))
    return load_state(model, state["model"], str(path)).eval()


def registered_robust_classifier(storage: str | os.PathLike) -> tuple[ConvClassifier, str]:
    record = read_best(storage, ROBUST_FAMILY)
    return load_robust_classifier(record["checkpoint"]), record["checkpoint"]


def curves(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
           attacks: list[str], options: AttackOptions, seed: int, batch: int = 500,
           progress: Callable[[str], None] | None = None, label: str = "") -> dict:
    """{attack: {eps: {"accuracy", "seconds", ("per_attack")}}} with one seeded generator per
    attack, so each attack's numbers do not depend on which attacks ran before it."""
    out: dict = {}
    for attack in attacks:
        out[attack] = {}
        for eps in epsilons:
            t0 = time.time()
            point = adversarial.robustness_curve(
                model, x, y, [eps], attack, options=options, batch=batch,
                generator=torch.Generator().manual_seed(seed))[eps]
            out[attack][eps] = {**point, "seconds": round(time.time() - t0, 1)}
            if progress:
                progress(f"{label} {attack} eps={eps}: accuracy {point['accuracy']:.3f} "
                         f"({time.time() - t0:.0f} s)")
    return out


def adaptive_purification(defence: PurifiedClassifier, x: torch.Tensor, y: torch.Tensor,
                          epsilons: list[float], attack: str, options: AttackOptions, seed: int,
                          batch: int = 64, progress: Callable[[str], None] | None = None) -> dict:
    """The purification defence under ``attack`` twice: with the full gradient through every
    solver step, and with BPDA; both with ``options.eot`` samples of the defence's noise. The
    reported accuracy at each eps is the lower of the two."""
    full = curves(defence, x, y, epsilons, [attack], options, seed, batch, progress, "full")[attack]
    bpda = curves(BPDA(defence), x, y, epsilons, [attack], options, seed, batch, progress,
                  "bpda")[attack]
    return {eps: {"accuracy": min(full[eps]["accuracy"], bpda[eps]["accuracy"]),
                  "full_gradient": full[eps]["accuracy"], "bpda": bpda[eps]["accuracy"],
                  "seconds": full[eps]["seconds"] + bpda[eps]["seconds"]}
            for eps in epsilons}


def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)
