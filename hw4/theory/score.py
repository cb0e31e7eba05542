"""Score matching = denoising, on a Gaussian mixture whose score is known in closed form.

Explicit (ESM), implicit (ISM, Hyvarinen 2005) and denoising (DSM, Vincent 2011) score matching
differ by constants that do not depend on the model; Tweedie's formula makes the optimal denoiser
a score, and DDPM's optimal eps-prediction is eps* = -sigma_t * score of p_t (Song et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
ScoreModel = Callable[[Tensor], Tensor]


@dataclass
class GaussianMixture:
    """sum_k w_k N(mu_k, sigma_k^2 I) in D dimensions: weights (K,), means (K, D), stds (K,)."""

    weights: Tensor
    means: Tensor
    stds: Tensor

    def _component_log_probs(self, x: Tensor) -> Tensor:  # (N, D) -> (N, K)
        d = x.shape[-1]
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (N, K)
        var = self.stds**2
        return (torch.log(self.weights) - 0.5 * sq / var
                - 0.5 * d * torch.log(2 * math.pi * var))

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._component_log_probs(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        return torch.softmax(self._component_log_probs(x), dim=-1)  # (N, K)

    def score(self, x: Tensor) -> Tensor:
        """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / sigma_k^2: (N, D)."""
        r = self.responsibilities(x)  # (N, K)
        pull = (self.means[None] - x[:, None, :]) / (self.stds**2)[None, :, None]  # (N, K, D)
        return (r[..., None] * pull).sum(1)

    def affine_noised(self, a: float, b: float) -> GaussianMixture:
        """The law of a x + b n, n ~ N(0, I): means a mu_k, stds sqrt(a^2 sigma_k^2 + b^2)."""
        return GaussianMixture(self.weights, a * self.means, torch.sqrt(a**2 * self.stds**2 + b**2))

    def posterior_mean(self, y: Tensor, a: float, b: float) -> Tensor:
        """E[x | y = a x + b n] computed per component (conjugate Gaussians), not via a score."""
        r = self.affine_noised(a, b).responsibilities(y)  # (N, K)
        var = self.stds**2
        gain = (a * var / (a**2 * var + b**2))[None, :, None]  # (1, K, 1)
        per_k = self.means[None] + gain * (y[:, None, :] - a * self.means[None])  # (N, K, D)
        return (r[..., None] * per_k).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * noise


def explicit_score_matching(s: ScoreModel, x: Tensor, true_score: Tensor) -> Tensor:
    """ESM: 1/2 E ||s(x) - grad log p(x)||^2."""
    return 0.5 * ((s(x) - true_score) ** 2).sum(-1).mean()


def jacobian_trace(s: ScoreModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """(s(x), tr ds/dx) per sample, exactly: one backward pass per dimension."""
    x = x.detach().requires_grad_(True)
    out = s(x)
    trace = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(x.shape[1]):
        (g,) = torch.autograd.grad(out[:, i].sum(), x, create_graph=True)
        trace = trace + g[:, i]
    return out, trace


def implicit_score_matching(s: ScoreModel, x: Tensor) -> Tensor:
    """ISM (Hyvarinen 2005): E[tr(grad_x s(x)) + 1/2 ||s(x)||^2] = ESM - 1/2 E||grad log p||^2."""
    out, trace = jacobian_trace(s, x)
    return (trace + 0.5 * (out**2).sum(-1)).mean()


def denoising_score_matching(s: ScoreModel, x: Tensor, sigma: float, noise: Tensor) -> Tensor:
    """DSM (Vincent 2011): 1/2 E ||s(x + sigma n) + n / sigma||^2 = ESM on p_sigma + const."""
    return 0.5 * ((s(x + sigma * noise) + noise / sigma) ** 2).sum(-1).mean()


def tweedie_denoiser(score: Tensor, y: Tensor, sigma: float) -> Tensor:
    """E[x | y = x + sigma n] = y + sigma^2 grad log p_sigma(y) (Tweedie / Robbins)."""
    return y + sigma**2 * score


def eps_from_score(score: Tensor, sigma_t: float) -> Tensor:
    """DDPM's optimal noise prediction eps*(x_t) = E[eps | x_t] = -sigma_t grad log p_t(x_t)."""
    return -sigma_t * score


def default_mixture(dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """A 2-D, three-component mixture used by the tests and docs."""
    return GaussianMixture(
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=dtype),
        means=torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=dtype),
        stds=torch.tensor([0.6, 0.9, 0.4], dtype=dtype),
    )
