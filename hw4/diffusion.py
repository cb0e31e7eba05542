"""Gaussian diffusion math as pure functions of tensors, independent of the network: schedules,
the forward process, the parameterisations, the training loss and guidance (the reverse steps
are ``hw4.reverse``; the samplers that chain them, ``hw4.samplers``).

References: DDPM (Ho et al. 2020), improved DDPM (Nichol & Dhariwal 2021), DDIM (Song et al.
2021), v-prediction (Salimans & Ho 2022), sigmoid schedule (Chen 2023). A ``model`` is any
callable ``model(x_t (N,...), t (N,) long) -> model_output (N,...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from hw4.errors import HW4Error

ScheduleName = Literal["linear", "cosine", "sigmoid", "linear-zero-snr"]
Prediction = Literal["eps", "x0", "v"]
LossWeight = Literal["uniform", "min-snr"]
SCHEDULES = ("linear", "cosine", "sigmoid", "linear-zero-snr")
# SNR 0 at t = T: x_T says nothing of the image, so eps cannot be the network's target there
ZERO_TERMINAL_SNR = ("linear-zero-snr",)
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTS = ("uniform", "min-snr")
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- 1. schedules: name -> betas, float64 ------------------------------------------------------

def betas_from_alpha_bar(alpha_bar: Callable[[torch.Tensor], torch.Tensor], T: int,
                         max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - abar((t+1)/T) / abar(t/T), clipped at ``max_beta`` (improved DDPM eq. 17)."""
    s = torch.arange(T + 1, dtype=torch.float64) / T
    ab = alpha_bar(s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last timestep has SNR exactly 0 (Lin et al. 2023, Alg. 1): shift and scale
    sqrt(abar_t) so that it keeps its first value and ends at 0, then read the betas back. x_T
    then carries no trace of the image; only the v (or x0) target can be trained at t = T."""
    root = torch.cumprod(1 - betas.to(torch.float64), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    ab = root**2
    return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])


def get_named_beta_schedule(name: str, T: int) -> torch.Tensor:
    """Betas (T,) float64 for ``linear`` (DDPM), ``cosine`` (improved DDPM), ``sigmoid`` (Chen),
    and ``linear-zero-snr`` (linear rescaled to a zero terminal SNR)."""
    if T < 2:
        raise HW4Error(f"need at least 2 timesteps, got {T}")
    if name == "linear-zero-snr":
        return rescale_zero_terminal_snr(get_named_beta_schedule("linear", T))
    if name == "linear":
        scale = 1000 / T  # keeps the total noise when T != 1000 (improved-diffusion's rescaling)
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=0.999)
    if name == "cosine":
        s = 0.008
        return betas_from_alpha_bar(lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T)
    if name == "sigmoid":
        start, end, tau = -3.0, 3.0, 1.0
        v0, v1 = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))

        def alpha_bar(u: torch.Tensor) -> torch.Tensor:
            return (-torch.sigmoid((u * (end - start) + start) / tau) + v1) / (v1 - v0)

        return betas_from_alpha_bar(alpha_bar, T)
    raise HW4Error(f"unknown noise schedule {name!r}; use one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class DiffusionSchedule:
    """Every per-timestep constant, computed once in float64 and stored as float32 (T,)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x_0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> DiffusionSchedule:
        b = betas.to(torch.float64)
        ab = torch.cumprod(1 - b, dim=0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = b * (1 - ab_prev) / (1 - ab)  # beta-tilde, DDPM eq. 7
        fields = dict(
            betas=b, alphas_cumprod=ab, alphas_cumprod_prev=ab_prev,
            sqrt_alphas_cumprod=ab.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - ab).sqrt(),
            posterior_variance=post_var,
            # beta-tilde_0 = 0: use beta-tilde_1 in the log (improved-diffusion does the same)
            posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            posterior_mean_coef1=b * ab_prev.sqrt() / (1 - ab),
            posterior_mean_coef2=(1 - ab_prev) * (1 - b).sqrt() / (1 - ab),
        )
        return cls(**{k: v.float() for k, v in fields.items()})

    @classmethod
    def named(cls, name: str, T: int) -> DiffusionSchedule:
        return cls.from_betas(get_named_beta_schedule(name, T))

    def to(self, device: torch.device | str) -> DiffusionSchedule:
        return DiffusionSchedule(**{k: v.to(device) for k, v in self.__dict__.items()})


def extract(arr: torch.Tensor, t: torch.Tensor | int, shape: torch.Size) -> torch.Tensor | float:
    """arr[t] reshaped to (N, 1, 1, ...) so it broadcasts against a batch of ``shape``.

    An int ``t`` (one timestep for the whole batch, as in sampling) gives a Python float: no
    gather and, with the schedule on the CPU, no device round trip.
    """
    if isinstance(t, int):
        return float(arr[t])
    out = arr.to(t.device)[t]
    return out.view(t.shape[0], *([1] * (len(shape) - 1)))


# --- 2. forward process and its posterior ------------------------------------------------------

def add_noise(s: DiffusionSchedule, x0: torch.Tensor, noise: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4)."""
    return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_mean_variance(s: DiffusionSchedule, x0: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x_0)."""
    return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0,
            extract(1 - s.alphas_cumprod, t, x0.shape).expand_as(x0))


def q_posterior(s: DiffusionSchedule, x0: torch.Tensor, xt: torch.Tensor,
                t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
    mean = (extract(s.posterior_mean_coef1, t, xt.shape) * x0
            + extract(s.posterior_mean_coef2, t, xt.shape) * xt)
    return (mean, extract(s.posterior_variance, t, xt.shape),
            extract(s.posterior_log_variance_clipped, t, xt.shape))


# --- 3. parameterisations: eps, x0 and v ------------------------------------------------------

def predict_x0_eps(s: DiffusionSchedule, model_output: torch.Tensor, xt: torch.Tensor,
                   t: torch.Tensor | int, prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output of any parameterisation into (x0_hat, eps_hat)."""
    a = extract(s.sqrt_alphas_cumprod, t, xt.shape)
    b = extract(s.sqrt_one_minus_alphas_cumprod, t, xt.shape)
    if prediction == "eps":
        eps = model_output
        return (xt - b * eps) / a, eps
    if prediction == "x0":
        x0 = model_output
        return x0, (xt - a * x0) / b
    if prediction == "v":  # v = a eps - b x0, so x0 = a x_t - b v and eps = b x_t + a v
        return a * xt - b * model_output, b * xt + a * model_output
    raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def training_target(s: DiffusionSchedule, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, prediction: Prediction) -> torch.Tensor:
    """What the network regresses onto for each parameterisation."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * noise
                - extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)
    raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def snr(s: DiffusionSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at timesteps ``t`` (N,), in float64."""
    ab = s.alphas_cumprod.to(t.device, torch.float64)[t]
    return ab / (1 - ab)


def loss_weights(s: DiffusionSchedule, t: torch.Tensor, prediction: Prediction,
                 weighting: LossWeight = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights (N,) of the regression loss, float32.

    Min-SNR-gamma (Hang et al. 2023, sec. 3.4) weights the x0-space error by min(SNR_t, gamma).
    With x_t = a x0 + b eps (a^2 + b^2 = 1, SNR = a^2/b^2), each target's error is a multiple of
    the x0 error: x0 - x0_hat = (b/a)(eps_hat - eps), so |eps err|^2 = SNR |x0 err|^2; and
    x0 = a x_t - b v, so |v err|^2 = |x0 err|^2 / b^2 = (SNR + 1) |x0 err|^2. The same x0-space
    weight is therefore min(SNR, gamma)/SNR on the eps loss, min(SNR, gamma)/(SNR + 1) on the
    v loss and min(SNR, gamma) on the x0 loss."""
    if weighting == "uniform":
        return torch.ones(t.shape, device=t.device)
    if weighting != "min-snr":
        raise HW4Error(f"unknown loss weighting {weighting!r}; use one of {', '.join(LOSS_WEIGHTS)}")
    if gamma <= 0:
        raise HW4Error(f"the min-SNR gamma must be positive, got {gamma}")
    r = snr(s, t)
    clipped = r.clamp(max=gamma)
    if prediction == "eps":
        w = clipped / r
    elif prediction == "v":
        w = clipped / (r + 1)
    elif prediction == "x0":
        w = clipped
    else:
        raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    return w.float()


def training_losses(model: Model, s: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor | None = None, prediction: Prediction = "eps",
                    labels: torch.Tensor | None = None, weighting: LossWeight = "uniform",
                    snr_gamma: float = 5.0) -> torch.Tensor:
    """DDPM's simple loss ||target - model(x_t, t[, y])||^2 averaged per sample: (N,) (DDPM
    eq. 14), times ``loss_weights`` (1 for ``uniform``). ``labels`` (N,) go to a
    class-conditional model as they are: drop them to the null label beforehand
    (``drop_labels``) to train the unconditional model alongside."""
    if noise is None:
        noise = torch.randn_like(x0)
    xt = add_noise(s, x0, noise, t)
    out = model(xt, t) if labels is None else model(xt, t, labels)
    err = (training_target(s, x0, noise, t, prediction) - out) ** 2
    per_sample = err.flatten(1).mean(dim=1)
    if weighting == "uniform":
        return per_sample
    return per_sample * loss_weights(s, t, prediction, weighting, snr_gamma)


# --- 3b. classifier-free guidance's training half (Ho & Salimans 2022; sampling: hw4/guidance.py)

def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The homework's training mask: each label becomes ``null_label`` with probability
    ``p_uncond``, independently per example, so one network learns eps(x_t, t, c) and eps(x_t, t)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond  # (N,)
    return torch.where(drop, torch.full_like(labels, null_label), labels)
