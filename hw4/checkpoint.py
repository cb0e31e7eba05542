"""One checkpoint format for every model: atomic writes, ``weights_only`` loads, clear errors.

A checkpoint is a dict of tensors and plain Python values:
``{"format": 1, "kind", "config", "model_config", "model", "ema", "optimizer", "scaler", "step",
"epoch", "metrics", "extra"}``. ``model_config`` is the model's own constructor config (the
fields of its config dataclass), kept apart from ``config``, the run's options: a loader rebuilds
the model from it without knowing any job's flags. Older checkpoints have no ``model_config``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from hw4.atomic_files import write_atomic
from hw4.errors import HW4Error

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "kind", "config", "model", "step", "epoch", "metrics")


class CheckpointError(HW4Error):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: dict, model: nn.Module,
                    model_config: dict | None = None, step: int = 0, epoch: int = 0,
                    metrics: dict | None = None,
                    ema: dict | None = None, optimizer: torch.optim.Optimizer | None = None,
                    scaler: dict | None = None, extra: dict | None = None) -> Path:
    """Save atomically; a crash mid-write leaves the previous file intact."""
    state = {
        "format": FORMAT_VERSION, "kind": kind, "config": config, "model_config": model_config,
        "model": unwrap(model).state_dict(), "ema": ema,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler, "step": int(step), "epoch": int(epoch),
        "metrics": metrics or {}, "extra": extra or {},
    }
    path = Path(path)
    write_atomic(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``; raise ``CheckpointError`` saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise CheckpointError(f"{path} is not a readable checkpoint (not a torch.save file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {str(err)[:200]}"
        ) from err
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not an hw4 checkpoint (expected keys {REQUIRED_KEYS})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {state['format']}, this hw4 reads {FORMAT_VERSION}")
    return state


def load_state(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> nn.Module:
    """``load_state_dict(strict=True)`` with a one-line error on a mismatched architecture."""
    try:
        unwrap(model).load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{source} does not fit the model (different config?): {' '.join(first[:3])[:300]}"
        ) from err
    return model
