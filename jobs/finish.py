"""The end of a run: its artifacts (checkpoints, images, metrics, config) and the registry."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import ray.train

from hw4.atomic_files import copy_atomic, write_json_atomic
from hw4.checkpoint import load_checkpoint
from hw4.errors import HW4Error
from hw4.registry import record_best
from jobs.runs import run_dir
from jobs.worker import CHECKPOINT_FILE


def should_register(cfg: Any) -> bool:
    """--register, or by default any run but a smoke test (which must never change what is
    served)."""
    return cfg.register if cfg.register is not None else not cfg.smoke_test


def register_checkpoint(storage: str, family: str, **kwargs: Any) -> bool:
    """``record_best``, except that a damaged registry does not throw the run away: the
    checkpoint is already in the run's artifacts, and the error says how to register it."""
    try:
        return record_best(storage, family, **kwargs)
    except HW4Error as err:
        print(f"warning: not registered: {err}; the checkpoint is kept at {kwargs['checkpoint']}",
              file=sys.stderr)
        return False


def finalize(result: ray.train.Result, cfg: Any, *, family: str, metric: str,
             mode: Literal["min", "max"], render: Callable[[dict, Path], None],
             select: Literal["best", "final"] = "best", register: bool = True) -> dict:
    """Copy the selected (best by ``metric``, or final) and the final checkpoint into
    ``<run>/artifacts``, render images, write ``metrics.json`` and ``config.json``, and register
    the selected checkpoint (a sweep registers only its best trial, at the end)."""
    if result.error is not None:
        raise result.error
    out = run_dir(cfg.storage_path, cfg.name) / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    best = result.checkpoint
    if select == "best":
        best = result.get_best_checkpoint(metric, mode) or best
    for ckpt, fname in ((best, "checkpoint.pt"), (result.checkpoint, "final.pt")):
        with ckpt.as_directory() as d:
            copy_atomic(Path(d) / CHECKPOINT_FILE, out / fname)  # fsynced, then renamed
    state = load_checkpoint(out / "checkpoint.pt")
    final = load_checkpoint(out / "final.pt")
    render(state, out)
    summary = {
        "best": state["metrics"], "final": final["metrics"],
        "history": final["extra"].get("history", []), "best_epoch": state["epoch"],
        "checkpoint": str(out / "checkpoint.pt"), "config": dataclasses.asdict(cfg),
    }
    write_json_atomic(out / "metrics.json", summary)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    summary["registered"] = False
    if register and should_register(cfg):
        summary["registered"] = register_checkpoint(
            cfg.storage_path, family, checkpoint=out / "checkpoint.pt", metric=metric,
            value=state["metrics"][metric], mode=mode, config=dataclasses.asdict(cfg),
            source=str(run_dir(cfg.storage_path, cfg.name)), promote=cfg.promote)
    if not cfg.quiet:
        print(json.dumps({k: summary[k] for k in ("best", "best_epoch", "checkpoint", "registered")},
                         indent=2, default=str))
    return summary
