"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), L-inf, on images in [0, 1].

PGD with momentum whose step size needs no tuning: it starts at 2 eps and is halved at
checkpoints when the loss stopped rising (condition 1: at most ``rho`` of the steps since the last
checkpoint raised it; condition 2: the step was not halved last time and the best loss has not
grown since), restarting from the best point found. APGD-CE climbs cross-entropy; APGD-T climbs
the targeted DLR loss toward each of the ``targets`` most likely wrong classes in turn.
"""

from __future__ import annotations

import math

import torch

from hw4.adversarial.gradients import (
    Classifier,
    PerImageLoss,
    cross_entropy,
    dlr,
    dlr_targeted,
    loss_and_grad,
    project,
)

MOMENTUM = 0.75  # alpha of Algorithm 1


def checkpoints(steps: int) -> list[int]:
    """The iterations at which the step size is reviewed: w_j = ceil(p_j * steps) with p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    at = {math.ceil(round(q * steps, 9)) for q in p[1:]}  # round: 0.22 * 100 is 22.000000000000004
    return sorted(w for w in at if w <= steps)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A point on the ball's surface: uniform noise scaled so each image's largest entry is eps."""
    t = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
    t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return (x + eps * t).clamp(0, 1)


def toward(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss a user-targeted attack climbs: minus the cross-entropy of the target class."""
    return -cross_entropy(logits, target)


def apgd_run(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, loss: PerImageLoss, *,
             steps: int = 100, rho: float = 0.75, eot: int = 1,
             generator: torch.Generator | None = None, targeted: bool = False) -> torch.Tensor:
    """One run of APGD from a random start. Returns, per image, the first iterate at which the
    attack succeeded (misclassified; ``targeted``: y are the targets, classified as y), else the
    point of highest loss."""
    view = (-1, *[1] * (x.dim() - 1))
    n = x.shape[0]
    reviews = set(checkpoints(steps))
    adv = random_start(x, eps, generator)
    value, grad, logits = loss_and_grad(model, adv, y, loss, eot)
    step = torch.full((n,), 2.0 * eps, device=x.device)
    best, best_value, best_grad = adv.clone(), value.clone(), grad.clone()
    def success(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) == y if targeted else logits.argmax(1) != y

    fooled = success(logits)
    found = adv.clone()  # the first misclassified point of each image
    previous = adv.clone()
    rises = torch.zeros(n, device=x.device)  # steps since the last checkpoint that raised the loss
    last_value = value.clone()
    value_at_review, last_review = best_value.clone(), 0
    halved_at_review = torch.ones(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        # 1. the gradient step z and the momentum step (the first step has no momentum)
        z = project(adv + step.view(view) * grad.sign(), x, eps)
        a = MOMENTUM if k > 0 else 1.0
        new = project(adv + a * (z - adv) + (1 - a) * (adv - previous), x, eps)
        previous, adv = adv, new
        value, grad, logits = loss_and_grad(model, adv, y, loss, eot)
        # 2. keep the first misclassified point, and the best-loss point
        now_fooled = success(logits) & ~fooled
        found[now_fooled] = adv[now_fooled]
        fooled |= now_fooled
        rises += (value > last_value).float()
        last_value = value
        better = value > best_value
        best[better], best_value[better], best_grad[better] = adv[better], value[better], grad[better]
        # 3. at a checkpoint: halve the step where the loss stalled, and restart from the best point
        if k + 1 in reviews:
            stalled = rises <= rho * (k + 1 - last_review)
            stalled |= ~halved_at_review & (value_at_review >= best_value)
            step[stalled] /= 2
            adv[stalled], grad[stalled] = best[stalled], best_grad[stalled]
            previous[stalled] = best[stalled]
            halved_at_review, value_at_review = stalled, best_value.clone()
            rises.zero_()
            last_review = k + 1
    return torch.where(fooled.view(view), found, best)


def apgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 100,
         loss: str = "ce", restarts: int = 1, eot: int = 1, rho: float = 0.75,
         generator: torch.Generator | None = None, targeted: bool = False) -> torch.Tensor:
    """APGD with cross-entropy (``loss="ce"``, APGD-CE) or the untargeted DLR loss; ``restarts``
    runs, each on the images still classified correctly. ``targeted``: y are target classes,
    reached by descending cross-entropy toward them."""
    if eps == 0:
        return x.detach().clone()
    per_image = toward if targeted else cross_entropy if loss == "ce" else dlr
    return _restarts(model, x, y, eps, per_image, steps=steps, restarts=restarts, eot=eot, rho=rho,
                     generator=generator, targeted=targeted)


def apgd_targeted(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                  steps: int = 100, targets: int = 9, restarts: int = 1, eot: int = 1,
                  rho: float = 0.75, generator: torch.Generator | None = None,
                  targeted: bool = False) -> torch.Tensor:
    """APGD-T: for the 2nd, 3rd, ... (``targets`` + 1)-th most likely class of each clean image in
    turn, APGD on the targeted DLR loss toward it, on the images not yet misclassified."""
    if eps == 0 or targeted:  # a user-chosen target: APGD toward it
        return apgd(model, x, y, eps, steps=steps, restarts=restarts, eot=eot, rho=rho,
                    generator=generator, targeted=targeted)
    with torch.no_grad():
        ranked = model(x).argsort(1, descending=True)  # (N, K)
    adv = x.detach().clone()
    for rank in range(1, min(targets, ranked.shape[1] - 1) + 1):
        target = ranked[:, rank]
        adv = _restarts(model, x, y, eps, None, steps=steps, restarts=restarts, eot=eot, rho=rho,
                        generator=generator, start=adv, target=target)
    return adv


def _restarts(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float,
              loss: PerImageLoss | None, *, steps: int, restarts: int, eot: int, rho: float,
              generator: torch.Generator | None, targeted: bool = False,
              start: torch.Tensor | None = None, target: torch.Tensor | None = None) -> torch.Tensor:
    """Runs of APGD on the images not yet fooled (``targeted``: not yet at their target), keeping
    each image's first success. ``target``: the targeted DLR toward it, per image."""
    adv = x.detach().clone() if start is None else start.clone()
    for _ in range(restarts):
        with torch.no_grad():
            pred = model(adv).argmax(1)
        todo = (pred != y) if targeted else (pred == y)
        idx = todo.nonzero().flatten()
        if len(idx) == 0:
            break
        run_loss = loss if target is None else dlr_targeted(target[idx])
        adv[idx] = apgd_run(model, x[idx], y[idx], eps, run_loss, steps=steps, rho=rho, eot=eot,
                            generator=generator, targeted=targeted)
    return adv
