"""Shared pieces of the benchmark scripts: interleaved timing, the machine, JSON results.

Every comparison times its contenders in the same process, alternating A, B, A, B, ... after a
warm-up, so slow drift of the machine (another process, thermal state) hits both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hw4.atomic_files import write_bytes_atomic

RESULTS = Path(__file__).resolve().parent / "measurements"


def summary(times: list[float]) -> dict:
    """Median and spread of repeated measurements (seconds)."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "repeats": len(times), "all": times}


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, dict]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` untimed calls each."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: summary(ts) for name, ts in times.items()}


def ratio(slow: dict, fast: dict) -> dict:
    """slow / fast on medians, and the spread of the per-round ratios (rounds are paired)."""
    per_round = [s / f for s, f in zip(slow["all"], fast["all"], strict=True)]
    return {"median": slow["median"] / fast["median"], "min": min(per_round), "max": max(per_round)}


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work so a timer measures it (no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def write_result(path: str | Path, result: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join([f"python -m bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])
    result = {"machine": machine(), "command": command, **result}
    return write_bytes_atomic(out, (json.dumps(result, indent=2) + "\n").encode())


def fmt(s: dict, unit: float = 1.0, digits: int = 3) -> str:
    """'median (min–max)' of a summary, scaled by ``unit``."""
    return (f"{s['median'] * unit:.{digits}f} ({s['min'] * unit:.{digits}f}–"
            f"{s['max'] * unit:.{digits}f})")


def matmul_peak(dtype: torch.dtype, sizes: list[int], dev: torch.device, repeats: int) -> dict:
    """Best rate of (n x n) @ (n x n) over ``sizes`` in ``dtype``: 2 n^3 FLOPs each."""
    best = {"flops_per_s": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        reps = max(1, int(2e10 // (2 * n**3))) if dev.type == "cuda" else 1
        torch.mm(a, b)
        sync(dev)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            sync(dev)
            rate = 2 * n**3 * reps / (time.perf_counter() - t0)
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "n": n}
    return {**best, "dtype": str(dtype).removeprefix("torch."), "sizes": sizes}
