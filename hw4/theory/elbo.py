"""ELBO, importance sampling and gradient estimators on a model with a known likelihood.

The linear-Gaussian latent model z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D) has
p(x) = N(b, W W^T + s^2 I) in closed form, so every bound and estimator can be compared to truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import MultivariateNormal, Normal

from hw4.objectives import importance_log_weights, iwae_bound


class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D). W has orthogonal columns, so the exact
    posterior is a diagonal Gaussian (representable by a mean-field q)."""

    def __init__(self, data_dim: int = 3, latent_dim: int = 2, noise: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, data_dim, generator=g, dtype=torch.float64))
        scales = torch.linspace(2.0, 0.7, latent_dim, dtype=torch.float64)
        self.W = q[:, :latent_dim] * scales  # (D, d)
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64) * 0.3
        self.s = noise

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x): (N, D) -> (N,)."""
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b), dtype=self.W.dtype)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def log_lik(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z): x (N, D), z (..., N, d) -> (..., N)."""
        return Normal(z @ self.W.T + self.b, self.s).log_prob(x).sum(-1)

    def log_joint(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: self.log_lik(x, z) + Normal(0.0, 1.0).log_prob(z).sum(-1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z | x) = N(mu, diag(exp(log_var))): (N, d) each."""
        prec = 1 + (self.W**2).sum(0) / self.s**2  # diagonal because W^T W is
        mu = ((x - self.b) @ self.W) / self.s**2 / prec
        return mu, (1 / prec).log().expand_as(mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.W.shape[1], generator=generator, dtype=self.W.dtype)
        noise = torch.randn(n, self.W.shape[0], generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.s * noise


def iwae_curve(model: LinearGaussian, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
               ks: list[int], repeats: int, generator: torch.Generator | None = None
               ) -> dict[int, tuple[float, float]]:
    """Mean and std over ``repeats`` of IWAE_k for one x (1, D) under q = N(mu, exp(log_var))."""
    xs = x.expand(repeats, -1)
    out = {}
    for k in ks:
        lw = importance_log_weights(model.log_joint(xs), mu.expand(repeats, -1),
                                    log_var.expand(repeats, -1), k, generator)
        b = iwae_bound(lw)
        out[k] = (float(b.mean()), float(b.std()))
    return out


def likelihood_estimators(model: LinearGaussian, x: torch.Tensor, mu: torch.Tensor,
                          log_var: torch.Tensor, k: int, repeats: int,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``repeats`` estimates of p(x) (not log) for one x (1, D), each from k samples:

    naive: (1/k) sum p(x | z_i), z_i ~ p(z);  importance: (1/k) sum p(x, z_i) / q(z_i), z_i ~ q.
    Both are unbiased; their variances differ by orders of magnitude when q is close to p(z|x).
    """
    d = mu.shape[-1]
    xs = x.expand(repeats, -1)
    z_prior = torch.randn(k, repeats, d, generator=generator, dtype=x.dtype)
    naive = model.log_lik(xs, z_prior).exp().mean(0)
    lw = importance_log_weights(model.log_joint(xs), mu.expand(repeats, -1),
                                log_var.expand(repeats, -1), k, generator)
    return {"naive": naive, "importance": lw.exp().mean(0)}


def gradient_estimators(f: Callable[[torch.Tensor], torch.Tensor], mu: float, sigma: float, n: int,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """n single-sample estimates of d/dmu E_{z ~ N(mu, sigma^2)}[f(z)]:

    reparameterization: f'(mu + sigma eps);  score function (REINFORCE): f(z) (z - mu) / sigma^2.
    """
    eps = torch.randn(n, generator=generator, dtype=torch.float64)
    z = (mu + sigma * eps).requires_grad_(True)
    fz = f(z)
    (grad_z,) = torch.autograd.grad(fz.sum(), z)
    score = fz.detach() * (z.detach() - mu) / sigma**2
    return {"reparameterization": grad_z, "score_function": score}


def elbo_closed_form(model: LinearGaussian, x: torch.Tensor, mu: torch.Tensor,
                     log_var: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x, z) - log q(z)] exactly, for q = N(mu, diag(exp(log_var))): (N,)."""
    var = log_var.exp()
    resid = x - (mu @ model.W.T + model.b)
    exp_sq = (resid**2).sum(-1) + (var * (model.W**2).sum(0)).sum(-1)  # E||x - Wz - b||^2
    D = x.shape[-1]
    lik = -0.5 * exp_sq / model.s**2 - D * (math.log(model.s) + 0.5 * math.log(2 * math.pi))
    kl = 0.5 * (mu**2 + var - 1 - log_var).sum(-1)
    return lik - kl
