"""f-divergences, their Fenchel conjugates, and the variational bound behind f-GANs.

D_f(P || Q) = E_Q[f(p/q)] >= sup_T E_P[T(x)] - E_Q[f*(T(x))] (Nguyen et al. 2010), with equality
at T*(x) = f'(p(x)/q(x)). f-GAN (Nowozin et al. 2016) writes T = g_f(V) with an output
activation g_f that keeps T inside dom f*; Table 2 and 6 of that paper give the entries below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class FDivergence:
    name: str
    f: Callable[[Tensor], Tensor]  # generator function, f(1) = 0
    f_prime: Callable[[Tensor], Tensor]  # gives the optimal critic T*(x) = f'(p/q)
    conjugate: Callable[[Tensor], Tensor]  # f*(t) = sup_u (u t - f(u))
    activation: Callable[[Tensor], Tensor]  # g_f: R -> dom f*


def _xlogx(u: Tensor) -> Tensor:
    return torch.where(u > 0, u * torch.log(u.clamp_min(1e-300)), torch.zeros_like(u))


DIVERGENCES: dict[str, FDivergence] = {
    "kl": FDivergence("kl", _xlogx, lambda u: 1 + torch.log(u), lambda t: torch.exp(t - 1),
                      lambda v: v),
    "reverse_kl": FDivergence("reverse_kl", lambda u: -torch.log(u), lambda u: -1 / u,
                              lambda t: -1 - torch.log(-t), lambda v: -torch.exp(-v)),
    "pearson": FDivergence("pearson", lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1),
                           lambda t: t**2 / 4 + t, lambda v: v),
    "hellinger": FDivergence("hellinger", lambda u: (torch.sqrt(u) - 1) ** 2,
                             lambda u: 1 - 1 / torch.sqrt(u), lambda t: t / (1 - t),
                             lambda v: 1 - torch.exp(-v)),
    "js": FDivergence("js", lambda u: 0.5 * (_xlogx(u) - (u + 1) * torch.log((u + 1) / 2)),
                      lambda u: 0.5 * torch.log(2 * u / (1 + u)),
                      lambda t: -0.5 * torch.log(2 - torch.exp(2 * t)),
                      lambda v: 0.5 * (math.log(2) - F.softplus(-v))),
    "gan": FDivergence("gan", lambda u: _xlogx(u) - (u + 1) * torch.log(u + 1),
                       lambda u: torch.log(u / (u + 1)), lambda t: -torch.log(1 - torch.exp(t)),
                       lambda v: -F.softplus(-v)),
    "tv": FDivergence("tv", lambda u: 0.5 * (u - 1).abs(), lambda u: 0.5 * torch.sign(u - 1),
                      lambda t: t, lambda v: 0.5 * torch.tanh(v)),
}
# "js" is the Jensen-Shannon divergence itself (0.5 KL(P||M) + 0.5 KL(Q||M)); "gan" is the
# original GAN's f, whose divergence is 2 JS - log 4.


def variational_bound(div: FDivergence, t_p: Tensor, t_q: Tensor) -> Tensor:
    """E_P[T] - E_Q[f*(T)] from critic values T on samples of P (t_p) and Q (t_q)."""
    return t_p.mean() - div.conjugate(t_q).mean()


def critic_loss(div: FDivergence, v_p: Tensor, v_q: Tensor) -> Tensor:
    """The critic maximises the bound; ``v`` are raw critic outputs, squashed by g_f."""
    return -variational_bound(div, div.activation(v_p), div.activation(v_q))


def generator_loss(div: FDivergence, v_q: Tensor, saturating: bool = False) -> Tensor:
    """The generator (Q) minimises the bound: E_Q[-f*(g(V))] (saturating), or f-GAN's
    non-saturating alternative -E_Q[g(V)] that has stronger gradients early on."""
    t_q = div.activation(v_q)
    return -div.conjugate(t_q).mean() if saturating else -t_q.mean()


# --- closed forms on 1-D Gaussians --------------------------------------------------------------

def gaussian_pdf(x: Tensor, mu: float, sigma: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def divergence_by_quadrature(div: FDivergence, p: tuple[float, float], q: tuple[float, float],
                             lo: float = -30.0, hi: float = 30.0, n: int = 400_001) -> float:
    """D_f(N(p) || N(q)) = integral q f(p/q) dx by the trapezoid rule in float64."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    pp, qq = gaussian_pdf(x, *p), gaussian_pdf(x, *q)
    keep = qq > 1e-300
    integrand = torch.zeros_like(x)
    integrand[keep] = qq[keep] * div.f(pp[keep] / qq[keep])
    return float(torch.trapezoid(integrand, x))


def gaussian_kl(p: tuple[float, float], q: tuple[float, float]) -> float:
    """KL(N(m1, s1^2) || N(m2, s2^2)) in closed form."""
    (m1, s1), (m2, s2) = p, q
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def gaussian_hellinger2(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Squared Hellinger integral (sqrt p - sqrt q)^2 = 2 (1 - BC) in closed form."""
    (m1, s1), (m2, s2) = p, q
    bc = math.sqrt(2 * s1 * s2 / (s1**2 + s2**2)) * math.exp(-((m1 - m2) ** 2) / (4 * (s1**2 + s2**2)))
    return 2 * (1 - bc)


def gaussian_pearson(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Pearson chi^2(P || Q) = integral p^2/q - 1, finite when 2 s2^2 > s1^2."""
    (m1, s1), (m2, s2) = p, q
    a = 2 / s1**2 - 1 / s2**2  # precision of the Gaussian shape in p^2 / q
    if a <= 0:
        return math.inf
    b = 2 * m1 / s1**2 - m2 / s2**2
    c = m1**2 / s1**2 - m2**2 / (2 * s2**2)
    log_int = (-math.log(2 * math.pi * s1**2) + math.log(s2 * math.sqrt(2 * math.pi))
               + 0.5 * math.log(2 * math.pi / a) + b**2 / (2 * a) - c)
    return math.exp(log_int) - 1


def optimal_critic(div: FDivergence, p: tuple[float, float], q: tuple[float, float]
                   ) -> Callable[[Tensor], Tensor]:
    """T*(x) = f'(p(x)/q(x)), where the bound is tight."""
    return lambda x: div.f_prime(gaussian_pdf(x, *p) / gaussian_pdf(x, *q))


def train_critic(div: FDivergence, sample_p: Callable[[int], Tensor],
                 sample_q: Callable[[int], Tensor], *, steps: int = 2000, batch: int = 2048,
                 hidden: int = 64, lr: float = 3e-3, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """Fit an MLP critic V (T = g_f(V)) by maximising the bound; return it and a fresh
    large-sample estimate of the bound it reaches."""
    torch.manual_seed(seed)
    critic = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.SiLU(),
                                 torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                 torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = critic_loss(div, critic(sample_p(batch)), critic(sample_q(batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        n = 200_000
        est = -critic_loss(div, critic(sample_p(n)), critic(sample_q(n)))
    return critic, float(est)
