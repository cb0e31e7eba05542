"""Sample-quality metrics: FID on the features of a fixed small classifier, accuracy of that
classifier on generated images, and the entropy of its predicted class histogram.

FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) (Heusel et al. 2017), with the matrix
square root from ``scipy.linalg.sqrtm`` in float64. Without downloadable Inception weights, the
features are the penultimate layer of ``hw4.models.classifier.ConvClassifier`` trained on the
dataset itself and pinned by SHA-256, so numbers compare across runs of this project only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg


@dataclass
class FeatureStats:
    mu: np.ndarray  # (F,)
    sigma: np.ndarray  # (F, F)
    n: int

    def to_dict(self) -> dict:
        return {"mu": torch.from_numpy(self.mu), "sigma": torch.from_numpy(self.sigma), "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        return cls(d["mu"].numpy(), d["sigma"].numpy(), int(d["n"]))


def stats_from_features(features: torch.Tensor) -> FeatureStats:
    """Mean and (unbiased) covariance of features (N, F), in float64."""
    f = features.detach().double().cpu().numpy()
    return FeatureStats(f.mean(0), np.cov(f, rowvar=False), f.shape[0])


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
    diff = a.mu - b.mu
    with warnings.catch_warnings():  # n below the feature size: singular, handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():  # singular product: nudge both diagonals, as pytorch-fid does
        offset = np.eye(a.sigma.shape[0]) * 1e-6
        covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


@torch.no_grad()
def extract_features(feature_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     batch: int = 500) -> torch.Tensor:
    """feature_fn over images (N, 1, 28, 28) in [0, 1], in batches: (N, F)."""
    return torch.cat([feature_fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def fid(feature_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
        reference: FeatureStats) -> float:
    return frechet_distance(stats_from_features(extract_features(feature_fn, images)), reference)


@torch.no_grad()
def class_histogram(logits: torch.Tensor) -> dict[str, float | list[float]]:
    """Predicted-class frequencies and their entropy in nats (log 10 = 2.303 is uniform)."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"histogram": p.tolist(), "entropy": entropy, "max_entropy": math.log(logits.shape[1])}
