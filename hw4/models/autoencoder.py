"""Convolutional autoencoder and VAE for 28x28x1 images, and a classifier on their latent.

Images are ``[0, 1]``; the decoder returns Bernoulli logits (``sigmoid`` gives pixel means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class AutoencoderConfig:
    latent_dim: int = 16
    variational: bool = True  # False: a deterministic autoencoder (log_var is None)
    channels: int = 32  # conv width of the first layer; the second has twice this
    hidden: int = 256


@dataclass
class AutoencoderOutput:
    logits: torch.Tensor  # (N, 1, 28, 28) Bernoulli logits of p(x|z)
    z: torch.Tensor  # (N, D) the latent that was decoded
    mu: torch.Tensor  # (N, D) posterior mean (the code itself for an AE)
    log_var: torch.Tensor | None  # (N, D) posterior log-variance; None for an AE


def reparameterize(
    mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that is differentiable in mu, sigma."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * log_var) * eps


class Encoder(nn.Module):
    """x (N,1,28,28) -> (mu, log_var) each (N, D); log_var is None when not variational."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c = cfg.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1), nn.SiLU(),  # (N, c, 14, 14)
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),  # (N, 2c, 7, 7)
            nn.Flatten(),
            nn.Linear(2 * c * 7 * 7, cfg.hidden), nn.SiLU(),
        )
        self.mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.log_var = nn.Linear(cfg.hidden, cfg.latent_dim) if cfg.variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x)
        return self.mu(h), (self.log_var(h) if self.log_var is not None else None)


class Decoder(nn.Module):
    """z (N, D) -> Bernoulli logits (N, 1, 28, 28)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c = cfg.channels
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, 2 * c * 7 * 7), nn.SiLU(),
            nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.SiLU(),  # (N, c, 14, 14)
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """AE or VAE (``cfg.variational``) with the same encoder/decoder bodies."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> AutoencoderOutput:
        mu, log_var = self.encoder(x)
        sample = log_var is not None and self.training
        z = reparameterize(mu, log_var, generator) if sample else mu
        return AutoencoderOutput(self.decoder(z), z, mu, log_var)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: (N,1,28,28) in [0, 1]."""
        return torch.sigmoid(self.decoder(self.encoder(x)[0]))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I): (n,1,28,28) in [0, 1]. Only meaningful for a VAE."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        return self.decode(z)

    @torch.no_grad()
    def traverse(self, x: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
        """Vary one latent dimension at a time around the code of one image ``x`` (1,1,28,28).

        Returns (len(dims) * len(values), 1, 28, 28): row i moves dimension dims[i] through values.
        """
        mu = self.encoder(x)[0][:1]  # (1, D)
        z = mu.repeat(len(dims) * len(values), 1)  # (R*V, D)
        for row, d in enumerate(dims):
            z[row * len(values) : (row + 1) * len(values), d] = values.to(z)
        return self.decode(z)


@dataclass
class LatentClassifierConfig:
    num_classes: int = 10
    # probe: a linear layer on the frozen encoder's mu; finetune: the encoder trains too
    mode: Literal["probe", "finetune"] = "probe"
    hidden: int = 0  # 0: linear head; >0: one hidden layer of this width


class LatentClassifier(nn.Module):
    """Classify images from the encoder's posterior mean mu (N, D) -> logits (N, classes)."""

    def __init__(self, encoder: Encoder, latent_dim: int, cfg: LatentClassifierConfig):
        super().__init__()
        self.config = cfg
        self.encoder = encoder
        self.encoder.requires_grad_(cfg.mode == "finetune")
        if cfg.hidden:
            self.head = nn.Sequential(
                nn.Linear(latent_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.num_classes)
            )
        else:
            self.head = nn.Linear(latent_dim, cfg.num_classes)

    def train(self, mode: bool = True) -> LatentClassifier:
        super().train(mode)
        if self.config.mode == "probe":
            self.encoder.eval()  # a probe never changes the encoder
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[0])
