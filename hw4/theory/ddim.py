"""DDIM's non-Markovian forward process keeps DDPM's marginals (Song et al. 2021, Lemma 1).

q_sigma(x_{t-1} | x_t, x_0) = N(sqrt(abar_{t-1}) x_0
    + sqrt(1 - abar_{t-1} - sigma_t^2) (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), sigma_t^2 I)
(eq. 7). Starting from x_T ~ q(x_T | x_0) and stepping down with it, every x_t has the DDPM
marginal N(sqrt(abar_t) x_0, (1 - abar_t) I), whatever sigma is (0 <= sigma_t^2 <= 1 - abar_{t-1}).
"""

from __future__ import annotations

import math

import torch

from hw4.diffusion import DiffusionSchedule
from hw4.reverse import ddim_sigma


def ddim_forward_step(s: DiffusionSchedule, x0: torch.Tensor, xt: torch.Tensor, t: int,
                      t_prev: int, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """A draw from q_sigma(x_{t_prev} | x_t, x_0), eq. 7 on any pair t > t_prev >= 0."""
    ab, ab_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t_prev])
    direction = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # the noise that made x_t
    return (math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * direction
            + sigma * noise)


def ddim_forward_chain(s: DiffusionSchedule, x0: torch.Tensor, timesteps: list[int], *,
                       eta: float | None = None, sigmas: list[float] | None = None,
                       generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """Run the non-Markovian forward process down ``timesteps`` (descending) from
    x_T ~ q(x_T | x_0). sigma_t is ``eta`` times DDIM's eq. 16, or given per step in ``sigmas``.
    Returns {t: x_t samples}."""
    def noise() -> torch.Tensor:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    T0 = timesteps[0]
    ab_T = float(s.alphas_cumprod[T0])
    x = math.sqrt(ab_T) * x0 + math.sqrt(1 - ab_T) * noise()
    out = {T0: x}
    for i, (t, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        sigma = sigmas[i] if sigmas is not None else ddim_sigma(s, t, t_prev, eta or 0.0)
        x = ddim_forward_step(s, x0, x, t, t_prev, sigma, noise())
        out[t_prev] = x
    return out


def gaussian_oracle_eps(s: DiffusionSchedule, mean: float, var: float):
    """The exact eps-prediction E[eps | x_t] when the data is N(mean, var) per pixel:
    b (x_t - a mean) / (a^2 var + b^2) with a = sqrt(abar_t), b = sqrt(1 - abar_t)."""
    def model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = s.alphas_cumprod.to(xt.device)[t].view(-1, *([1] * (xt.dim() - 1))).to(xt.dtype)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        return b * (xt - a * mean) / (a**2 * var + b**2)

    return model
