"""An epoch of any training step and the timing of steps: metrics summed on the device and
read back once per log interval (``run_epoch``), and how many steps fit in a time budget.

A step (``hw4.train``) returns detached scalar tensors left on the device; reading one back
after every step would make the host wait for the accelerator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm


def run_epoch(loader: Iterable, step: Callable[..., dict[str, torch.Tensor | float]], *,
              device: torch.device | str = "cpu", desc: str = "train",
              progress: bool | Callable[..., Iterable] = False, log_every: int = 50,
              on_log: Callable[[int, dict[str, float]], None] | None = None,
              max_steps: int | None = None) -> dict[str, float]:
    """Call ``step(x, y)`` on each batch (moved to ``device``), on the first ``max_steps`` only
    when given (a run's last, partial epoch); return batch-size-weighted means.

    Metrics are summed where ``step`` left them (on the device) and read back only every
    ``log_every`` steps (the running means go to ``on_log(step_index, means)`` and the bar) and at
    the end. ``progress``: True for a tqdm bar, or a tqdm-like factory (Ray passes its own)."""
    sums: dict[str, torch.Tensor | float] = {}
    n = 0
    if callable(progress):
        batches = progress(loader, desc=desc)
    else:
        batches = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches, start=1):
        if max_steps is not None and i > max_steps:
            break
        metrics = step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        b = x.shape[0]
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v * b
        n += b
        if log_every and i % log_every == 0:
            means = _means(sums, n)  # the one host sync of the interval
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", refresh=False)
            if on_log is not None:
                on_log(i, means)
    if hasattr(batches, "close"):
        batches.close()
    return _means(sums, n)


def seconds_per_step(step: Callable[[], object], *, steps: int = 8, warmup: int = 2,
                     device: torch.device | str = "cpu",
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Mean wall time of ``step()`` over ``steps`` calls, after ``warmup`` untimed ones (first
    calls pay for allocation and kernel selection); on CUDA the device is synchronised first."""
    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    t0 = clock()
    for _ in range(steps):
        step()
    sync()
    return (clock() - t0) / steps


def steps_in_budget(seconds: float, seconds_per_step: float, cap: int) -> int:
    """Whole optimiser steps that fit in ``seconds`` at ``seconds_per_step``: at least 1, at most
    ``cap`` (the run's epochs)."""
    return max(1, min(cap, int(seconds / seconds_per_step)))


def _means(sums: dict[str, torch.Tensor | float], n: int) -> dict[str, float]:
    """Running sums / n as floats, the device tensors read back in one transfer."""
    keys = [k for k, v in sums.items() if torch.is_tensor(v)]
    values = dict(zip(keys, torch.stack([sums[k].float() for k in keys]).tolist() if keys else [],
                      strict=True))
    return {k: values.get(k, v) / max(n, 1) for k, v in sums.items()}
