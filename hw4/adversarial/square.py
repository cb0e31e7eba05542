"""Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L-inf: no gradients, only the model's scores.

Start from vertical stripes of +-eps; then, for at most ``queries`` model calls per image, change
one random square window of the perturbation to a random +-eps per channel and keep the change
where it lowers the margin z_y - max_{i != y} z_i. The window's area, a share p of the image,
shrinks on the paper's schedule as queries are spent. An image stops costing queries once it is
misclassified. A defence that hides its gradients (or makes them noise) does not hide its
scores: this is the check that a high robust accuracy is not gradient masking.
"""

from __future__ import annotations

import math

import torch

from hw4.adversarial.gradients import Classifier, margin

# the paper's schedule for 10,000 queries: from these query counts on, p is p_init / 2, / 4, ...
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_share(p_init: float, query: int, queries: int) -> float:
    """p at ``query`` of ``queries``, the schedule rescaled to the budget."""
    scaled = int(query / queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in HALVINGS)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like)


@torch.no_grad()
def square(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, *, queries: int = 5000,
           p_init: float = 0.8, generator: torch.Generator | None = None,
           targeted: bool = False) -> torch.Tensor:
    """Square Attack's adversarial images (N, C, H, W) in [0, 1]. ``targeted``: y are targets
    (the margin of the target over the rest is raised instead)."""
    if eps == 0:
        return x.detach().clone()
    n, c, h, w = x.shape
    sign = -1.0 if targeted else 1.0

    def score(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # below 0: success
        return sign * margin(model(images), labels)

    # 1. vertical stripes: one sign per column and channel
    best = (x + eps * _signs((n, c, 1, w), generator, x)).clamp(0, 1)
    best_score = score(best, y)
    for query in range(1, queries):
        idx = (best_score > 0).nonzero().flatten()
        if len(idx) == 0:
            break
        # 2. a random s x s window, s from the share p of the image's pixels
        s = max(1, min(h - 1, int(round(math.sqrt(window_share(p_init, query, queries) * h * w)))))
        top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        x_i, delta = x[idx], best[idx] - x[idx]
        window = delta[:, :, top:top + s, left:left + s]
        new = eps * _signs((len(idx), c, 1, 1), generator, x)
        for _ in range(10):  # redraw where the window would not change (clamping can hide a change)
            same = ((x_i[:, :, top:top + s, left:left + s] + new).clamp(0, 1)
                    - (x_i[:, :, top:top + s, left:left + s] + window).clamp(0, 1)
                    ).abs().flatten(1).amax(1) < 1e-7
            if not same.any():
                break
            new[same] = eps * _signs((int(same.sum()), c, 1, 1), generator, x)
        delta[:, :, top:top + s, left:left + s] = new
        candidate = (x_i + delta).clamp(0, 1)
        # 3. keep the change where the margin fell
        cand_score = score(candidate, y[idx])
        better = cand_score < best_score[idx]
        best[idx[better]] = candidate[better]
        best_score[idx[better]] = cand_score[better]
    return best
