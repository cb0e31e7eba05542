"""The best-checkpoint registry: one JSON record per model family under the storage path.

Training and Tune write it; Serve and ``jobs/evaluate.py`` read it. ``<storage>/registry/
<family>.json`` holds ``{"family", "checkpoint", "metric", "value", "mode", "config", "source",
"time"}``. What it promises:

- the served model changes only when someone meant it to: a new checkpoint replaces the entry
  only when it is better by the same metric (a validation loss never displaces an FID), or when
  the caller asks to ``promote`` it across metrics;
- a registered checkpoint never changes under the entry: it is copied to a content-addressed
  file ``registry/checkpoints/<family>-<sha256>.pt`` that no run writes again;
- two writers never interleave: read-compare-write runs under an exclusive lock on
  ``registry/<family>.json.lock``;
- a damaged record is a clear ``RegistryError``, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hw4.atomic_files import copy_atomic, write_json_atomic
from hw4.errors import HW4Error


class RegistryError(HW4Error):
    """A registry record that is missing or unreadable."""


def registry_path(storage: str | os.PathLike, family: str) -> Path:
    return Path(storage) / "registry" / f"{family}.json"


def read_best(storage: str | os.PathLike, family: str) -> dict[str, Any]:
    path = registry_path(storage, family)
    if not path.is_file():
        raise RegistryError(f"no registered {family} checkpoint under {storage} (train one first)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RegistryError(f"{path} is damaged ({err}); delete it and register a checkpoint "
                            "again (a training run's artifacts/checkpoint.pt)") from err
    if not isinstance(record, dict) or "checkpoint" not in record:
        raise RegistryError(f"{path} is damaged (no checkpoint in it); delete it and register again")
    return record


def is_better(value: float, old: float, mode: Literal["min", "max"]) -> bool:
    return value < old if mode == "min" else value > old


LOCK_WAIT_S = 60.0  # a registry write takes well under a second: longer means a stuck writer


@contextlib.contextmanager
def locked(storage: str | os.PathLike, family: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """An exclusive lock beside the record, held for a read-compare-write. Waits at most
    ``wait_s`` for another writer; a lock that cannot be taken is a ``RegistryError``."""
    lock = registry_path(storage, family).with_suffix(".json.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = lock.open("a")
    except OSError as err:
        raise RegistryError(f"cannot open the registry lock {lock}: {err.strerror or err}") from err
    with f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryError(f"{lock} stayed locked by another writer for {wait_s:.0f} s; "
                                        "retry when it is done") from None
                time.sleep(0.1)
            except OSError as err:  # a file system without working locks
                raise RegistryError(f"cannot lock {lock} ({err.strerror or err}): the storage must "
                                    "support flock") from err
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frozen_copy(storage: str | os.PathLike, family: str, checkpoint: str | os.PathLike) -> Path:
    """The checkpoint copied under a name made of its SHA-256: immutable once written. The copy
    is fsynced before its rename; an existing copy is reused only if its content still has
    that hash (a copy cut short by a crash, or damaged since, is written again)."""
    digest = file_digest(checkpoint)
    out = Path(storage).resolve() / "registry" / "checkpoints" / f"{family}-{digest[:20]}.pt"
    if not out.is_file() or file_digest(out) != digest:
        copy_atomic(checkpoint, out)
    return out


def recorded_value(record: dict, path: Path) -> float:
    """The record's metric value; NaN (a run that diverged) counts as beaten by any number."""
    value = record.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RegistryError(f"{path} is damaged (its value is {value!r}, not a number); delete it "
                            "and register a checkpoint again")
    return float(value)


def record_best(storage: str | os.PathLike, family: str, *, checkpoint: str | os.PathLike,
                metric: str, value: float, mode: Literal["min", "max"], config: dict,
                source: str, promote: bool = False) -> bool:
    """Register ``checkpoint`` when it beats the current record by the same ``metric``, when
    the record's checkpoint is gone, or (``promote``) whatever the record's metric. Returns
    whether the registry changed."""
    path = registry_path(storage, family)
    if not math.isfinite(value):
        raise RegistryError(f"{metric} = {value} is not a finite number: a diverged run is never "
                            "registered")
    with locked(storage, family):
        old = read_best(storage, family) if path.is_file() else None
        if old is not None and Path(old["checkpoint"]).is_file() and not promote:
            if old.get("metric") != metric:
                return False  # a different yardstick: only an explicit promotion replaces it
            old_value = recorded_value(old, path)
            if not math.isnan(old_value) and not is_better(value, old_value, mode):
                return False
        write_json_atomic(path, {
            "family": family, "checkpoint": str(frozen_copy(storage, family, checkpoint)),
            "metric": metric, "value": float(value), "mode": mode, "config": config,
            "source": source, "registered_from": str(Path(checkpoint).resolve()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    return True
