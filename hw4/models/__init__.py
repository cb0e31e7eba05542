"""Model families and one way to build any of them from (kind, config dict)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from hw4.errors import HW4Error
from hw4.models.autoencoder import Autoencoder, AutoencoderConfig
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from hw4.models.unet import UNet, UNetConfig

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "autoencoder": (AutoencoderConfig, Autoencoder),
    "classifier": (ClassifierConfig, ConvClassifier),
    "unet": (UNetConfig, UNet),
}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, ignoring keys the class does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind not in MODEL_KINDS:
        raise HW4Error(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    cfg_cls, model_cls = MODEL_KINDS[kind]
    return model_cls(config_from_dict(cfg_cls, config))
