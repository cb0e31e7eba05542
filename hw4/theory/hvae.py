"""A two-layer hierarchical VAE, its ELBO term by term, and posterior-collapse diagnostics.

Generative: z2 ~ N(0, I), z1 | z2 ~ N(mu_p(z2), sigma_p^2(z2)), x | z1 ~ Bernoulli(dec(z1)).
Inference (top-down, as in Ladder VAEs): q(z2 | x), then q(z1 | x, z2). The ELBO is

    log p(x) >= E_q[log p(x | z1)] - KL(q(z2|x) || p(z2)) - E_{q(z2|x)} KL(q(z1|x,z2) || p(z1|z2)).

A collapsed layer has KL ~ 0 and no active units; KL warm-up, free bits and beta < 1 keep units
alive (Bowman et al. 2016; Kingma et al. 2016; Sonderby et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hw4.models.autoencoder import reparameterize
from hw4.objectives import (
    bernoulli_nll,
    free_bits_kl,
    gaussian_kl_per_dim,
    gaussian_kl_two_per_dim,
    kl_warmup,
    log_normal,
)


@dataclass
class HVAEConfig:
    data_dim: int = 784
    hidden: int = 256
    z1: int = 16
    z2: int = 8


def gaussian_head(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, 2 * n_out)  # -> (mu, log_var)


def split(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, log_var = h.chunk(2, dim=-1)
    return mu, log_var.clamp(-10, 10)


@dataclass
class HVAETerms:
    recon: torch.Tensor  # (N,) -log p(x|z1)
    kl_top: torch.Tensor  # (N,) KL(q(z2|x) || p(z2))
    kl_bottom: torch.Tensor  # (N,) KL(q(z1|x,z2) || p(z1|z2)) at the sampled z2
    kl_top_dim: torch.Tensor  # (N, z2)
    kl_bottom_dim: torch.Tensor  # (N, z1)

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon + self.kl_top + self.kl_bottom)


class HVAE(nn.Module):
    def __init__(self, cfg: HVAEConfig):
        super().__init__()
        self.config = cfg
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(cfg.data_dim, cfg.hidden), nn.SiLU())
        self.q_z2 = gaussian_head(cfg.hidden, cfg.z2)
        self.q_z1 = nn.Sequential(nn.Linear(cfg.hidden + cfg.z2, cfg.hidden), nn.SiLU(),
                                  gaussian_head(cfg.hidden, cfg.z1))
        self.p_z1 = nn.Sequential(nn.Linear(cfg.z2, cfg.hidden), nn.SiLU(),
                                  gaussian_head(cfg.hidden, cfg.z1))
        self.dec = nn.Sequential(nn.Linear(cfg.z1, cfg.hidden), nn.SiLU(),
                                 nn.Linear(cfg.hidden, cfg.data_dim))

    def _sample(self, x: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """One joint draw z2 ~ q(z2|x), z1 ~ q(z1|x,z2) with every distribution's parameters."""
        h = self.enc(x)
        mu2, lv2 = split(self.q_z2(h))
        z2 = reparameterize(mu2, lv2, generator)
        mu1, lv1 = split(self.q_z1(torch.cat([h, z2], -1)))
        z1 = reparameterize(mu1, lv1, generator)
        pm1, plv1 = split(self.p_z1(z2))
        recon = bernoulli_nll(self.dec(z1), x.flatten(1))  # (N,) -log p(x | z1)
        return dict(mu2=mu2, lv2=lv2, z2=z2, mu1=mu1, lv1=lv1, z1=z1, pm1=pm1, plv1=plv1,
                    recon=recon)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> HVAETerms:
        """One-sample ELBO terms for x (N, ...) in [0, 1], with the KLs in closed form."""
        d = self._sample(x, generator)
        kl_top_dim = gaussian_kl_per_dim(d["mu2"], d["lv2"])
        kl_bottom_dim = gaussian_kl_two_per_dim(d["mu1"], d["lv1"], d["pm1"], d["plv1"])
        return HVAETerms(d["recon"], kl_top_dim.sum(1), kl_bottom_dim.sum(1), kl_top_dim,
                         kl_bottom_dim)

    def posterior_means(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E_q[z1 | x, z2 = mu2], E_q[z2 | x] (no sampling noise), and the prior variance
        Var_p(z1 | z2 = mu2) that sets the bottom layer's scale."""
        h = self.enc(x)
        mu2, _ = split(self.q_z2(h))
        mu1, _ = split(self.q_z1(torch.cat([h, mu2], -1)))
        return mu1, mu2, split(self.p_z1(mu2))[1].exp()

    def log_weight(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x, z1, z2) - log q(z1, z2 | x) at one joint sample: (N,). Its mean is the ELBO,
        computed from densities only (no analytic KL): an independent check of ``forward``."""
        d = self._sample(x, generator)
        zeros = torch.zeros_like(d["z2"])
        log_p = (-d["recon"] + log_normal(d["z1"], d["pm1"], d["plv1"])
                 + log_normal(d["z2"], zeros, zeros))
        return log_p - log_normal(d["z1"], d["mu1"], d["lv1"]) - log_normal(d["z2"], d["mu2"], d["lv2"])


def hvae_loss(terms: HVAETerms, *, beta: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """recon + beta * (KL_top + KL_bottom), with an optional free-bits floor per dimension."""
    if free_bits > 0:
        kl = free_bits_kl(terms.kl_top_dim, free_bits) + free_bits_kl(terms.kl_bottom_dim, free_bits)
        return terms.recon.mean() + beta * kl
    return (terms.recon + beta * (terms.kl_top + terms.kl_bottom)).mean()


def active_units(mu: torch.Tensor, threshold: float = 0.01,
                 prior_var: torch.Tensor | None = None) -> int:
    """Units whose posterior mean varies across data: Cov_x(E_q[z|x]) > threshold (Burda 2016).

    Burda's criterion assumes a N(0, 1) prior; for a layer with a learned prior the variance is
    measured in units of the mean prior variance ``prior_var`` (N, D), which makes it scale-free.
    """
    var = mu.var(0)
    if prior_var is not None:
        var = var / prior_var.mean(0)
    return int((var > threshold).sum())


@torch.no_grad()
def diagnose(model: HVAE, x: torch.Tensor) -> dict[str, float]:
    """Per-layer KL (nats), active units per layer, and the ELBO on x, with posterior means."""
    model.eval()
    terms = model(x, torch.Generator().manual_seed(0))
    mu1, mu2, prior_var1 = model.posterior_means(x)
    return {"elbo": float(terms.elbo.mean()), "recon": float(terms.recon.mean()),
            "kl_top": float(terms.kl_top.mean()), "kl_bottom": float(terms.kl_bottom.mean()),
            "active_top": active_units(mu2), "active_bottom": active_units(mu1, prior_var=prior_var1),
            # a second, stricter reading: dimensions that carry more than 0.05 nats on average
            "informative_top": int((terms.kl_top_dim.mean(0) > 0.05).sum()),
            "informative_bottom": int((terms.kl_bottom_dim.mean(0) > 0.05).sum())}


def train_hvae(x: torch.Tensor, cfg: HVAEConfig, *, epochs: int = 10, batch: int = 128,
               lr: float = 1e-3, beta: float = 1.0, warmup_steps: int = 0,
               free_bits: float = 0.0, seed: int = 0) -> HVAE:
    """Train on a tensor of images in [0, 1] with beta, KL warm-up and free bits."""
    torch.manual_seed(seed)
    model = HVAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        model.train()
        for i in range(0, len(x), batch):
            terms = model(x[perm[i:i + batch]], gen)
            b = kl_warmup(step, warmup_steps, beta)
            loss = hvae_loss(terms, beta=b, free_bits=free_bits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return model
