"""Evaluation of trained models: sample quality (FID with the data floor), likelihood bounds of
the VAE, and adversarial robustness of three classifiers. Pure functions of models and tensors;
``jobs/evaluate.py`` spreads the sampling over Ray workers and writes the report folder."""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hw4 import data, metrics, objectives, samplers
from hw4.assets import SECOND_JUDGE, classifier_path, load_classifier, sha256
from hw4.atomic_files import write_bytes_atomic
from hw4.errors import HW4Error
from hw4.models.autoencoder import Autoencoder, reparameterize
from hw4.trained import TrainedDDPM, load_ddpm

# --- sample quality ---------------------------------------------------------------------------


def reference_stats(dataset: str, n: int, cache_dir: str | os.PathLike,
                    split: str = "train", judge: str | None = None) -> metrics.FeatureStats:
    """Feature statistics of ``n`` real images (a seed-0 subset of ``split``) in the features of
    the pinned classifier ``judge`` (default: the dataset's own), cached on disk under a name
    that includes that classifier's hash, so a new extractor never reuses them."""
    judge = judge or dataset
    key = sha256(classifier_path(judge))[:12]
    path = Path(cache_dir) / f"{dataset}-{split}-{n}-{judge}-{key}.pt"
    if path.is_file():
        return metrics.FeatureStats.from_dict(torch.load(path, weights_only=True))
    x = data.load_dataset(dataset, split, subset=n, seed=0).tensors[0]
    if len(x) < n:
        raise HW4Error(f"{dataset} {split} has {len(x)} images, fewer than the {n} asked for")
    stats = metrics.stats_from_features(
        metrics.extract_features(load_classifier(judge).features, x))
    buf = io.BytesIO()
    torch.save(stats.to_dict(), buf)
    write_bytes_atomic(path, buf.getvalue())
    return stats


def sample_quality(images: torch.Tensor, dataset: str, reference: metrics.FeatureStats,
                   labels: torch.Tensor | None = None) -> dict:
    """FID against ``reference``, and what the pinned classifier makes of the images: its mean
    confidence, the share it is sure of (p > 0.9), and the entropy of its class histogram. With
    the ``labels`` the images were asked for: ``class_accuracy``, the share the classifier assigns
    to the requested class, and ``label_confidence``, its mean probability of that class."""
    clf = load_classifier(dataset)
    with torch.no_grad():
        feats = metrics.extract_features(clf.features, images)
        probs = clf.head(feats).softmax(1)
    hist = metrics.class_histogram(probs)
    conf = probs.max(1).values
    out = {"fid": metrics.frechet_distance(metrics.stats_from_features(feats), reference),
           "n": len(images), "confidence": float(conf.mean()),
           "confident_fraction": float((conf > 0.9).float().mean()),
           "class_entropy": hist["entropy"], "class_histogram": hist["histogram"]}
    if labels is not None:
        labels = labels.to(probs.device)
        out["class_accuracy"] = float((probs.argmax(1) == labels).float().mean())
        out["label_confidence"] = float(probs.gather(1, labels[:, None]).mean())
    return out


BACKGROUND_ROWS, BACKGROUND_LEVEL = 3, 0.02


def grey_backgrounds(images: torch.Tensor) -> torch.Tensor:
    """Which images (N, 1, 28, 28) in [0, 1] have a grey or speckled background: their top and
    bottom ``BACKGROUND_ROWS`` rows average above ``BACKGROUND_LEVEL``. A person sees it at once;
    a tolerant classifier does not. (N,) bool."""
    edge = torch.cat([images[..., :BACKGROUND_ROWS, :], images[..., -BACKGROUND_ROWS:, :]], dim=-2)
    return edge.flatten(1).mean(1) > BACKGROUND_LEVEL


def background_share(images: torch.Tensor) -> float:
    """The share of ``grey_backgrounds`` (MNIST's own share is the yardstick)."""
    return float(grey_backgrounds(images).float().mean())


def second_opinion(images: torch.Tensor, reference: metrics.FeatureStats,
                   labels: torch.Tensor | None = None) -> dict:
    """What the second pinned MNIST judge (another architecture, trained with augmentation) makes
    of the images: FID in its features, its class accuracy, and how often it agrees with the
    first judge; plus the background share. Two judges are harder to fool with one artefact."""
    first, second = load_classifier("mnist"), load_classifier(SECOND_JUDGE)
    with torch.no_grad():
        feats = metrics.extract_features(second.features, images)
        pred2 = second.head(feats).argmax(1)
        pred1 = torch.cat([first(b).argmax(1) for b in images.split(500)])
    out = {"second_fid": metrics.frechet_distance(metrics.stats_from_features(feats), reference),
           "agreement": float((pred1 == pred2).float().mean()),
           "background_share": background_share(images)}
    if labels is not None:
        out["second_class_accuracy"] = float((pred2 == labels.to(pred2.device)).float().mean())
    return out


def data_floor(dataset: str, n: int, reference: metrics.FeatureStats) -> float:
    """FID of ``n`` real test images against the train reference: the best a model can score."""
    x = data.load_dataset(dataset, "test", subset=n, seed=0).tensors[0]
    return sample_quality(x, dataset, reference)["fid"]


def balanced_labels(first: int, count: int, num_classes: int = 10) -> torch.Tensor:
    """Labels first, first+1, ... mod ``num_classes``: chunks of a class-balanced sample."""
    return (first + torch.arange(count)) % num_classes


@functools.lru_cache(maxsize=2)
def _cached_ddpm(path: str) -> TrainedDDPM:  # one load per process, reused across its chunks
    return load_ddpm(path)


def sample_chunk(path: str, spec: str, count: int, seed: int, threads: int | None = None,
                 first_label: int | None = None, guidance: float = 0.0) -> torch.Tensor:
    """``count`` images of the DDPM at ``path`` with sampler ``spec``: one unit of work. With
    ``first_label`` (a conditional model) the chunk asks for ``balanced_labels(first_label,
    count)``, guided with weight ``guidance``."""
    if threads:
        torch.set_num_threads(threads)
    ddpm = _cached_ddpm(path)
    labels = None
    if first_label is not None:
        labels = balanced_labels(first_label, count, ddpm.num_classes)
    return samplers.SamplerSpec.parse(spec).run(ddpm, count, seed, labels, guidance)


def chunks(n: int, size: int, seed: int) -> list[tuple[int, int]]:
    """(count, seed) of each chunk: the images depend on ``seed`` and ``size``, not on how many
    workers draw the chunks."""
    return [(min(size, n - start), seed * 100_003 + i)
            for i, start in enumerate(range(0, n, size))]


# --- likelihood -------------------------------------------------------------------------------

@torch.no_grad()
def likelihood(vae: Autoencoder, x: torch.Tensor, ks: list[int], *, batch: int = 100,
               chunk: int = 500, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> dict:
    """Test ELBO (beta = 1, one posterior sample; recon + KL in nats) and IWAE_k for each k.

    IWAE_k is a lower bound of log p(x) that tightens with k (Burda et al. 2016). Each k uses
    its own seeded generator; images are processed ``batch`` at a time, samples ``chunk`` at a
    time, so k = 5000 fits in memory."""
    if not vae.config.variational:
        raise HW4Error("likelihood bounds need a VAE; this checkpoint is a plain autoencoder")
    gen = torch.Generator().manual_seed(seed)
    mu, log_var = vae.encoder(x)
    recon = objectives.bernoulli_nll(vae.decoder(reparameterize(mu, log_var, gen)), x)
    kl = objectives.gaussian_kl(mu, log_var)
    out = {"n": len(x), "recon": float(recon.mean()), "kl": float(kl.mean()),
           "elbo": float(-(recon + kl).mean()), "iwae": {}, "iwae_seconds": {}}
    for k in ks:
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed + k)
        vals = [objectives.vae_iwae(vae, x[i:i + batch], k, chunk=chunk, generator=gen)
                for i in range(0, len(x), batch)]
        out["iwae"][k] = float(torch.cat(vals).mean())
        out["iwae_seconds"][k] = time.time() - t0
        if progress:
            progress(f"IWAE k={k}: {out['iwae'][k]:.3f} nats ({out['iwae_seconds'][k]:.1f}s)")
    return out
