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


@dataclass
class ResNetClassifierConfig:
    num_classes: int = 10
    channels: int = 32
    feature_dim: int = 128


class _Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (1x1 conv when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNetClassifier(nn.Module):
    """A second judge of a different build than ``ConvClassifier``: residual blocks with batch
    norm and global average pooling instead of max-pooled plain convs and a flattening MLP, so
    an artefact that fools one is less likely to fool both. x (N,1,28,28) in [0,1] -> logits."""

    def __init__(self, cfg: ResNetClassifierConfig):
        super().__init__()
        self.config = cfg
        c = cfg.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),  # (N, c, 28, 28)
            _Residual(c, c, 1), _Residual(c, 2 * c, 2),  # (N, 2c, 14, 14)
            _Residual(2 * c, 4 * c, 2),  # (N, 4c, 7, 7)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, 4c)
            nn.Linear(4 * c, cfg.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
