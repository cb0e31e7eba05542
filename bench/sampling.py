"""What the sampler does to a trained DDPM's backgrounds and FID: the guidance interval, whether
each step clips x-hat-0, and the timesteps DPM-Solver++ and DDIM visit, one change at a time, on
one checkpoint (the demo's by default).

    python -m bench.sampling --checkpoint results/demo-ddpm/artifacts/checkpoint.pt
    python -m bench.sampling --table                   # the Markdown table in BENCHMARKS.md

Each variant draws the same 500 class-balanced samples (seed 0; DPM-Solver++(2M)-10 unless it
names DDIM-50) with ``bench.recipe.draw`` and is
judged by both classifiers and the background share, as ``bench.quality`` judges training runs.
Scores go to ``results/quality/sampling.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import recipe
from hw4 import evaluation, reverse, samplers
from hw4.atomic_files import write_bytes_atomic
from hw4.diffusion import DiffusionSchedule
from hw4.guidance import GUIDANCE_INTERVAL
from hw4.trained import load_ddpm

OUT = Path("results/quality")
CHECKPOINT = Path("results/demo-ddpm/artifacts/checkpoint.pt")
SAMPLER = "dpm++2m"


def trailing(s, steps: int) -> list[int]:
    """The grid DPM-Solver++ visited before: T-1, T-1-T/steps, ..., T/steps - 1 ("trailing")."""
    T = s.num_timesteps
    grid = torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1
    return sorted(set(grid.clamp(min=0).tolist()), reverse=True)


def lambda_spaced(end: float):
    return functools.partial(reverse.dpm_solver_timesteps, end=end)


@dataclass(frozen=True)
class Variant:
    """One sampling setting: guidance weight, interval (fractions of T; None: every step),
    x-hat-0 clipped, the grid ((schedule, steps) -> timesteps), and the sampler."""

    guidance: float
    interval: tuple[float, float] | None
    clip: bool
    grid: Callable[[DiffusionSchedule, int], list[int]]
    method: str = SAMPLER
    eta: float = 0.0
    calls: int | None = None  # network calls; None: the sampler's default

    def steps(self, s: DiffusionSchedule) -> int:
        """The network calls asked (fewer on a schedule shorter than that: tests)."""
        return min(self.calls or samplers.kind(self.method).default_steps, s.num_timesteps)


def ddim_grid(s: DiffusionSchedule, steps: int) -> list[int]:
    return samplers.timesteps("ddim", s, steps)


# w = 1, guided at 0.2 T..0.7 T, x-hat-0 not clipped: the defaults for the grid comparison
GUIDED = (1.0, GUIDANCE_INTERVAL, False)
DEFAULT_GRID = lambda_spaced(reverse.DPM_SOLVER_END)
# the trailing grid and DPM-Solver++(2M)-10 unless the name says otherwise
VARIANTS = {
    "guided at every step, x0 clipped": Variant(1.0, None, True, trailing),
    "x0 not clipped": Variant(1.0, None, False, trailing),
    "guided at t >= 0.1 T": Variant(1.0, (0.1, 1.0), True, trailing),
    "guided at t <= 0.7 T": Variant(1.0, (0.0, 0.7), True, trailing),
    "guided at 0.1 T..0.7 T": Variant(1.0, (0.1, 0.7), True, trailing),
    "guided at 0.1 T..0.7 T, not clipped": Variant(1.0, (0.1, 0.7), False, trailing),
    "guided at 0.2 T..0.7 T, not clipped": Variant(*GUIDED, trailing),
    "the same at w = 1.5": Variant(1.5, GUIDANCE_INTERVAL, False, trailing),
    "the same, lambda-spaced grid to t = 0": Variant(*GUIDED, lambda_spaced(0.0)),
    "the same, lambda-spaced grid to 0.01 T": Variant(*GUIDED, lambda_spaced(0.01)),
    "the same, lambda-spaced grid to 0.03 T (the default)": Variant(*GUIDED, DEFAULT_GRID),
    "unguided (w = 0), x0 clipped": Variant(0.0, None, True, trailing),
    "unguided, not clipped": Variant(0.0, None, False, trailing),
    "unguided, not clipped, lambda-spaced grid to t = 0": Variant(0.0, None, False, lambda_spaced(0.0)),
    "unguided, not clipped, lambda-spaced grid to 0.01 T": Variant(0.0, None, False,
                                                                   lambda_spaced(0.01)),
    "unguided, not clipped, lambda-spaced grid to 0.03 T (the default)": Variant(
        0.0, None, False, DEFAULT_GRID),
    # DDIM-50 unguided, deterministic against stochastic, on its evenly spaced grid (the
    # default, its last call at t = 0) and on lambda-spaced ones
    **{f"DDIM-50 eta = {eta:g}, unguided, {name}": Variant(0.0, None, False, grid, "ddim", eta)
       for name, grid in (("evenly spaced grid (the default)", ddim_grid),
                          ("lambda-spaced grid to t = 0", lambda_spaced(0.0)),
                          ("lambda-spaced grid to 0.01 T", lambda_spaced(0.01)),
                          ("lambda-spaced grid to 0.03 T", DEFAULT_GRID))
       for eta in (0.0, 1.0)},
    # the same 50 calls with a second-order deterministic solver: what is left of DDIM eta = 0's
    # gap to eta = 1 is then the network's ODE, not DDIM's first-order steps
    "DPM-Solver++(2M)-50, unguided, lambda-spaced grid to 0.03 T": Variant(
        0.0, None, False, DEFAULT_GRID, calls=50),
}


def run(checkpoint: Path, out: Path, n: int, threads: int) -> None:
    torch.set_num_threads(threads)
    ddpm = load_ddpm(checkpoint)
    refs, floors = recipe.judges(out, n)
    labels = evaluation.balanced_labels(0, n)
    rows = []
    for name, v in VARIANTS.items():
        t0 = time.perf_counter()
        grid = v.grid(ddpm.schedule, v.steps(ddpm.schedule))
        images = recipe.draw(ddpm, labels, v.guidance, method=v.method, eta=v.eta,
                             interval=v.interval, clip=v.clip, visit=grid)
        row = {"variant": name, "sampler": v.method, "eta": v.eta, "guidance": v.guidance,
               "interval": v.interval, "clip": v.clip, "n": n, "timesteps": grid,
               **recipe.judge(images, labels, refs), "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_bytes_atomic(out / "sampling.json", json.dumps(
        {"checkpoint": str(checkpoint), "floor": floors, "scores": rows}, indent=1).encode())


def table(out: Path) -> str:
    got = json.loads((out / "sampling.json").read_text())
    f = got["floor"]
    rows = [[r["variant"], f"{r['fid'] / f['fid']:.2f}x", f"{r['class_accuracy']:.3f}",
             f"{r['second_fid'] / f['second_fid']:.2f}x", f"{r['second_class_accuracy']:.3f}",
             f"{r['background_share']:.1%}"] for r in got["scores"]]
    rows.append(["MNIST test (the floor)", f"FID {f['fid']:.1f}", "", f"{f['second_fid']:.2f}", "",
                 f"{f['background_share']:.1%}"])
    return recipe.markdown_table(["sampling (DPM-Solver++(2M)-10, w = 1, trailing grid unless said)",
                                  "FID (x floor)", "acc.", "2nd FID (x floor)", "2nd acc.",
                                  "background"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--n", type=int, default=500, help="class-balanced samples per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="print the table of the last run")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
    else:
        run(args.checkpoint, args.out, args.n, args.threads)


if __name__ == "__main__":
    main()
