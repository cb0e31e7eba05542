"""The DDPM as a defence: diffusion purification (Nie et al. 2022, "DiffPure") and the attacks that
know it.

purify(x) diffuses the input to timestep t* (x_t* = sqrt(abar) x + sqrt(1 - abar) eps, fresh
noise every call) and runs the model's reverse process back to t = 0 with a few deterministic
solver steps (DDIM with eta = 0, or DPM-Solver++(2M)); a classifier then reads the result. The
noise drowns a small perturbation, and the reverse process pulls the image back to the digits
it learned.

Such a defence is easy to overrate: its noise makes one gradient uninformative and its many
network calls make gradients expensive. ``PurifiedClassifier`` is an ordinary differentiable
module, so autograd follows the *full* gradient through every solver step (Lee & Kim 2023
evaluate DiffPure this way), and the attacks' ``eot`` averages over its noise. ``bpda`` is the
second adaptive attack: purification in the forward pass, the identity in the backward pass
(Athalye et al. 2018's BPDA), with EOT over the noise too. A defence is reported by the lower of
the two.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hw4 import diffusion, samplers
from hw4.errors import HW4Error
from hw4.guidance import guided_model
from hw4.trained import TrainedDDPM

Solver = Literal["ddim", "dpm++2m"]


def purification_timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` descending timesteps from t* to 0, evenly spaced (t* and 0 included)."""
    if t_star < 1 or steps < 1:
        raise HW4Error(f"t* must be >= 1 and steps >= 1, got t* = {t_star}, steps = {steps}")
    steps = min(steps, t_star + 1)
    grid = torch.linspace(t_star, 0, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


def purify(ddpm: TrainedDDPM, x: torch.Tensor, *, t_star: int, steps: int,
           solver: Solver = "ddim", generator: torch.Generator | None = None) -> torch.Tensor:
    """x (N, 1, 28, 28) in [0, 1] -> its purification in [0, 1], differentiable in x: diffuse to
    t*, then ``steps`` network calls of ``solver`` back to the clean end (the null label: the
    defence does not know the class)."""
    T = ddpm.timesteps
    if not 1 <= t_star < T:
        raise HW4Error(f"t* must be in 1..{T - 1} for this {T}-step model, got {t_star}")
    ts = purification_timesteps(t_star, steps)
    s = ddpm.schedule.to("cpu")
    net = guided_model(ddpm.model.eval(), None, 0.0, ddpm.model.null_label)
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
    xt = diffusion.add_noise(s, x * 2 - 1, noise, torch.full((x.shape[0],), t_star, dtype=torch.long))
    solver_kind, args, state = samplers.kind(solver), samplers.StepArgs(
        0.0, ddpm.prediction, True, None), None  # deterministic from x_t*: eta = 0
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        out = net(xt, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        step, state = solver_kind.step(s, out, t, t_prev, xt, state, args)
        xt = step.prev_sample
    return ((xt + 1) / 2).clamp(0, 1)


class PurifiedClassifier(nn.Module):
    """classifier(purify(x)): a random, differentiable defence; every forward draws new noise
    from its own seeded generator, so a run of attacks is reproducible."""

    def __init__(self, ddpm: TrainedDDPM, classifier: nn.Module, *, t_star: int, steps: int,
                 solver: Solver = "ddim", seed: int = 0) -> None:
        super().__init__()
        self.ddpm, self.classifier = ddpm, classifier
        self.t_star, self.steps, self.solver = t_star, steps, solver
        self.generator = torch.Generator().manual_seed(seed)
        ddpm.model.requires_grad_(False)
        classifier.requires_grad_(False)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return purify(self.ddpm, x, t_star=self.t_star, steps=self.steps, solver=self.solver,
                      generator=self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))

    def network_calls(self) -> int:
        """U-Net calls per classified image (the classifier's one call not counted)."""
        return len(purification_timesteps(self.t_star, self.steps))


class _Identity(torch.autograd.Function):
    """Forward: the purified image; backward: the gradient passed to x unchanged (BPDA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        return purified

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class BPDA(nn.Module):
    """The same defence with the purifier's backward pass replaced by the identity: the gradient
    is the classifier's at the purified image. Its forward is exactly the defence's."""

    def __init__(self, defence: PurifiedClassifier) -> None:
        super().__init__()
        self.defence = defence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            purified = self.defence.purify(x)
        return self.defence.classifier(_Identity.apply(x, purified))


def bpda(defence: PurifiedClassifier) -> BPDA:
    return BPDA(defence)
