"""VAE objectives as free functions with per-sample ``(N,)`` outputs; reduce at the call site.

References: Kingma & Welling 2014 (VAE, analytic KL), Higgins et al. 2017 (beta-VAE), Burda et al.
2016 (IWAE), Bowman et al. 2016 (KL warm-up), Kingma et al. 2016 (free bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Reconstruction = Literal["bernoulli", "gaussian"]
LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) for Bernoulli pixels with the given logits, summed per sample: (N,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """-log N(x; mean, sigma^2 I) summed per sample: (N,). With sigma=1 it is MSE/2 + const."""
    d = x[0].numel()
    sq = ((x - mean) ** 2).flatten(1).sum(1)
    return 0.5 * sq / sigma**2 + d * (math.log(sigma) + 0.5 * LOG_2PI)


def reconstruction_nll(kind: Reconstruction, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Decoder NLL (N,); the Gaussian decoder's mean is sigmoid(logits) so both live in [0, 1]."""
    if kind == "bernoulli":
        return bernoulli_nll(logits, x)
    if kind == "gaussian":
        return gaussian_nll(torch.sigmoid(logits), x)
    raise ValueError(f"unknown reconstruction {kind!r}; use bernoulli or gaussian")


def gaussian_kl_per_dim(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, 1)) per dimension: (N, D) (Kingma & Welling App. B)."""
    return 0.5 * (mu**2 + log_var.exp() - 1 - log_var)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) summed over latent dimensions: (N,)."""
    return gaussian_kl_per_dim(mu, log_var).sum(1)


def gaussian_kl_two_per_dim(mu_q: torch.Tensor, log_var_q: torch.Tensor, mu_p: torch.Tensor,
                            log_var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per dimension of diagonal Gaussians: (N, D)."""
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mu_q - mu_p) ** 2) / log_var_p.exp() - 1)


def gaussian_kl_two(mu_q: torch.Tensor, log_var_q: torch.Tensor, mu_p: torch.Tensor,
                    log_var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) for diagonal Gaussians, summed: (N,)."""
    return gaussian_kl_two_per_dim(mu_q, log_var_q, mu_p, log_var_p).flatten(1).sum(1)


def log_normal(x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, diag(exp(log_var))) summed over the last dimension: (...)."""
    return -0.5 * (LOG_2PI + log_var + (x - mu) ** 2 / log_var.exp()).sum(-1)


@dataclass
class ELBOTerms:
    loss: torch.Tensor  # (N,) recon + beta * KL: what is minimised
    recon: torch.Tensor  # (N,) -E_q log p(x|z), one sample
    kl: torch.Tensor  # (N,) KL(q(z|x) || p(z))
    elbo: torch.Tensor  # (N,) -(recon + KL): the beta=1 bound on log p(x)


def beta_elbo(recon_nll: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> ELBOTerms:
    """beta-weighted negative ELBO (Higgins et al. 2017); beta=1 is the VAE's bound."""
    return ELBOTerms(loss=recon_nll + beta * kl, recon=recon_nll, kl=kl, elbo=-(recon_nll + kl))


def kl_warmup(step: int, warmup_steps: int, beta: float = 1.0) -> float:
    """Linear KL annealing from 0 to ``beta`` over ``warmup_steps`` (Bowman et al. 2016)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL with a floor of ``free_bits`` nats per dimension on its batch mean (Kingma et al. 2016).

    kl_per_dim (N, D) -> scalar sum_d max(lambda, mean_n KL_nd): below the floor a dimension
    gets no gradient pushing it to the prior, which keeps it from collapsing.
    """
    return kl_per_dim.mean(0).clamp(min=free_bits).sum()


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """IWAE_k = log (1/k) sum_i w_i from log-weights (k, N) -> (N,) (Burda et al. 2016 eq. 8)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def importance_log_weights(
    log_joint: Callable[[torch.Tensor], torch.Tensor],
    mu: torch.Tensor,
    log_var: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log w = log p(x, z) - log q(z|x) for k samples z ~ q = N(mu, exp(log_var)): (k, N).

    ``log_joint`` maps z (k, N, D) to log p(x, z) (k, N).
    """
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * log_var) * eps  # (k, N, D)
    return log_joint(z) - log_normal(z, mu, log_var)


def vae_iwae(model: torch.nn.Module, x: torch.Tensor, k: int, *, chunk: int = 500,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """IWAE_k estimate of log p(x) (N,) for a Bernoulli-decoder VAE, ``chunk`` samples at a time.

    Log-weights are reduced chunk by chunk with a running logsumexp, so k=5000 fits in memory.
    """
    mu, log_var = model.encoder(x)
    n, d = mu.shape
    zero = torch.zeros_like(mu)

    def log_joint(z: torch.Tensor) -> torch.Tensor:  # (c, N, D) -> (c, N)
        logits = model.decoder(z.reshape(-1, d))  # (c*N, 1, 28, 28)
        target = x.expand(z.shape[0], *x.shape).reshape(logits.shape)
        return -bernoulli_nll(logits, target).view(z.shape[0], n) + log_normal(z, zero, zero)

    total = torch.full((n,), -math.inf, device=x.device)
    for start in range(0, k, chunk):
        lw = importance_log_weights(log_joint, mu, log_var, min(chunk, k - start), generator)
        total = torch.logaddexp(total, torch.logsumexp(lw, dim=0))
    return total - math.log(k)
