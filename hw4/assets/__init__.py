"""Pinned small models shipped with the package: the per-dataset CNN classifiers whose
penultimate features define this project's FID, verified by SHA-256 on every load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hw4.atomic_files import write_json_atomic
from hw4.checkpoint import CheckpointError, load_checkpoint, load_state
from hw4.models import config_from_dict
from hw4.models.classifier import (
    ClassifierConfig,
    ConvClassifier,
    ResNetClassifier,
    ResNetClassifierConfig,
)

ASSETS = Path(__file__).resolve().parent
MANIFEST = ASSETS / "manifest.json"


# the second judge of MNIST samples: another architecture, trained with augmentation
SECOND_JUDGE = "mnist_resnet"
ARCHITECTURES = {"classifier": (ConvClassifier, ClassifierConfig),
                 "resnet_classifier": (ResNetClassifier, ResNetClassifierConfig)}


def classifier_path(name: str) -> Path:
    """``name``: a dataset (its pinned CNN) or another pinned classifier (``SECOND_JUDGE``)."""
    return ASSETS / f"{name}_classifier.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def pin(dataset: str, metrics: dict) -> None:
    """Record the SHA-256 (and the metrics) of the freshly trained classifier."""
    entries = manifest()
    path = classifier_path(dataset)
    entries[dataset] = {"file": path.name, "sha256": sha256(path), "metrics": metrics}
    write_json_atomic(MANIFEST, entries)


def load_classifier(dataset: str) -> ConvClassifier | ResNetClassifier:
    """The pinned classifier in eval mode; a missing or altered file is a clear error."""
    path = classifier_path(dataset)
    entry = manifest().get(dataset)
    if entry is None or not path.is_file():
        raise CheckpointError(f"no pinned classifier for {dataset}; run "
                              f"`python jobs/train_classifier.py --dataset {dataset}`")
    if sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path} does not match the SHA-256 pinned in {MANIFEST}; FID "
                              f"features would not be comparable (retrain and re-pin, or restore it)")
    state = load_checkpoint(path)
    cls, config = ARCHITECTURES[state.get("kind", "classifier")]
    model = cls(config_from_dict(config, state["config"]))
    return load_state(model, state["model"], str(path)).eval()
