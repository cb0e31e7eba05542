"""A small pixel-space CNN for 28x28x1 images: the baseline classifier and a feature extractor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    channels: int = 32
    feature_dim: int = 128
    dropout: float = 0.25


class ConvClassifier(nn.Module):
    """x (N,1,28,28) in [0,1] -> logits (N, classes); ``features`` gives the penultimate layer."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.config = cfg
        c = cfg.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, c, 14, 14)
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 2c, 7, 7)
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * c * 7 * 7, cfg.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
