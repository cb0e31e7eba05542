"""The best-checkpoint registry: one JSON record per model kind under the storage path.

Training and Tune write it (only when the new checkpoint is better or the old one is gone);
Serve and ``jobs/evaluate.py`` read it. ``<storage>/registry/<kind>.json`` holds
``{"kind", "checkpoint", "metric", "value", "mode", "config", "source", "time"}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from hw4.atomic_files import write_json_atomic
from hw4.errors import HW4Error


def registry_path(storage: str | os.PathLike, kind: str) -> Path:
    return Path(storage) / "registry" / f"{kind}.json"


def read_best(storage: str | os.PathLike, kind: str) -> dict[str, Any]:
    path = registry_path(storage, kind)
    if not path.is_file():
        raise HW4Error(f"no registered {kind} checkpoint under {storage} (train one first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HW4Error(f"{path} is not valid JSON: {err}") from err


def is_better(value: float, old: float, mode: Literal["min", "max"]) -> bool:
    return value < old if mode == "min" else value > old


def record_best(storage: str | os.PathLike, kind: str, *, checkpoint: str | os.PathLike,
                metric: str, value: float, mode: Literal["min", "max"], config: dict,
                source: str, force: bool = False) -> bool:
    """Register ``checkpoint`` if it beats the current record (same metric) or ``force``.

    Returns whether the registry changed.
    """
    path = registry_path(storage, kind)
    old = json.loads(path.read_text()) if path.is_file() else None
    keep_old = (
        old is not None and not force and old.get("metric") == metric
        and Path(old.get("checkpoint", "")).is_file()
        and not is_better(value, old["value"], mode)
    )
    if keep_old:
        return False
    write_json_atomic(path, {
        "kind": kind, "checkpoint": str(Path(checkpoint).resolve()), "metric": metric,
        "value": float(value), "mode": mode, "config": config, "source": source,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return True
