"""Classifier-free guidance at sampling time (Ho & Salimans 2022): the guided prediction, the
network call that makes it for a batch with a weight per row, and the interval of noise levels
where guidance is applied (Kynkäänniemi et al. 2024). Training's label dropout is
``hw4.diffusion.drop_labels``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hw4.diffusion import Model
from hw4.errors import HW4Error

# Guidance is applied only at timesteps t with 0.2 T <= t <= 0.7 T: guiding the noisiest steps
# costs diversity and the last ones add speckle, both without helping the class. On the demo
# model (DPM-Solver++(2M)-10, w = 1, 500 samples; BENCHMARKS.md, "Sampling: guidance interval
# and x0 clipping"), with x-hat-0 unclipped (hw4.samplers.CLIP_X0), it lowered the second judge's
# FID from 1.24x to 0.91x its floor at the same class accuracy (1.40x to 0.91x with the clipping
# it replaced), and it halves the guided network rows.
GUIDANCE_INTERVAL = (0.2, 0.7)


def interval_timesteps(T: int, interval: tuple[float, float] | None = GUIDANCE_INTERVAL
                       ) -> tuple[int, int] | None:
    """The fractions ``interval`` of a T-step model as timesteps (inclusive); None: every step."""
    if interval is None:
        return None
    lo, hi = interval
    if not 0 <= lo <= hi <= 1:
        raise HW4Error(f"a guidance interval needs 0 <= low <= high <= 1, got {lo} {hi}")
    return round(lo * T), round(hi * T)


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null): the homework's convention, w = 0 is the plain
    conditional model; ``w`` a number or one weight per row (N,). The weights sum to one, so for
    a fixed x_t the combination is the same in eps, x0 or v space (each is an affine map of the
    other): any ``prediction`` may be guided."""
    if torch.is_tensor(w):
        w = w.to(cond.device, cond.dtype).view(-1, *([1] * (cond.dim() - 1)))  # (N, 1, ...)
    return (1 + w) * cond - w * uncond


def guided_model(model: Callable[..., torch.Tensor], labels: torch.Tensor | None,
                 w: float | torch.Tensor, null_label: int | None,
                 interval: tuple[int, int] | None = None) -> Model:
    """A ``model(x_t, t)`` that samples class ``labels`` (N,) with guidance ``w`` (a number, or
    one per row: requests with different weights can share a batch), at the timesteps within
    ``interval`` (inclusive; None: at every step), and unguided at the others.

    One network call per step on N + G rows: every row's conditional half, and the null half of
    the G rows that are guided at this step (w != 0, a label other than ``null_label``, t within
    the interval). Unguided rows and null-label rows (unconditional samples, which guidance would
    leave unchanged) cost one row each. With no labels the model runs as it is (an
    unconditional model, or all-null labels)."""
    if labels is None:
        return model
    if null_label is None:
        raise HW4Error("labels need a class-conditional model; this one is unconditional")
    weights = torch.as_tensor(w, dtype=torch.float32).flatten().cpu().expand(len(labels))
    guided = ((weights != 0) & (labels.cpu() != null_label)).nonzero().flatten()  # (G,)
    if len(guided) == 0:  # no guidance anywhere: the conditional model alone
        return lambda x, t: model(x, t, labels.to(x.device))

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y, rows = labels.to(x.device), guided
        if interval is not None:  # the guided rows whose t lies within the interval
            tg = t.cpu()[rows]
            rows = rows[(tg >= interval[0]) & (tg <= interval[1])]
        if len(rows) == 0:
            return model(x, t, y)
        g = rows.to(x.device)
        out = model(torch.cat([x, x[g]]), torch.cat([t, t[g]]),
                    torch.cat([y, torch.full_like(y[g], null_label)]))
        cond, uncond = out[:len(x)], out[len(x):]  # (N, ...), (G, ...)
        return cond.index_copy(0, g, guide(cond[g], uncond, weights[rows]))

    return call
