"""The precision of a training step: fp32, or bf16 autocast where it was measured to pay off
(on CUDA at large batches, on a CPU with native bf16), read from the CPU's flags; and the
activations' memory layout that goes with it."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
# On an H100 the DDPM step with bf16 autocast was slower than fp32 at batch 128 (54 vs 39 ms:
# the step is bound by kernel launches, which autocast adds) and faster at 512 (40 vs 53 ms).
BF16_MIN_BATCH = 512
# CPU flags (Linux /proc/cpuinfo names) under which oneDNN runs bf16 matmuls and convolutions
# natively; without them bf16 autocast emulates and is slower than fp32
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable: not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def autocast_dtype(precision: Precision, device: torch.device | str, batch_size: int,
                   flags: set[str] | None = None) -> torch.dtype | None:
    """The autocast dtype of a training step, None for plain fp32. ``auto``: bf16 on CUDA at a
    per-device batch of at least ``BF16_MIN_BATCH``, and on a CPU with native bf16 (AVX-512 BF16
    or AMX: ``flags``, by default this machine's), where each was measured to pay off
    (BENCHMARKS.md, "The training step on a CPU"); fp32 elsewhere."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if batch_size >= BF16_MIN_BATCH else None
    if kind == "cpu":
        native = set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags)
        return torch.bfloat16 if native else None
    return None


def channels_last(device: torch.device | str, autocast: torch.dtype | None) -> bool:
    """Whether a U-Net runs on channels-last (NHWC) activations: on a CPU in fp32, where oneDNN's
    NHWC convolutions were measured faster (the demo's training step 0.48 against 0.52 s, a
    128-image sampling call 0.165 against 0.191 s), and not under bf16 autocast, where its NHWC
    kernels were slower than converting NCHW tensors inside each convolution (0.48 against
    0.33 s; BENCHMARKS.md, "The training step on a CPU"). Not measured on CUDA: NCHW there."""
    return torch.device(device).type == "cpu" and autocast is None
