"""What the sampler does to a trained DDPM's backgrounds and FID: the guidance interval, whether
each step clips x-hat-0, and the timesteps DPM-Solver++ visits, one change at a time, on one
checkpoint (the demo's by default).

    python -m bench.sampling --checkpoint results/demo-ddpm/artifacts/checkpoint.pt
    python -m bench.sampling --table                   # the Markdown table in BENCHMARKS.md

Each variant draws the same 500 class-balanced samples (seed 0, DPM-Solver++(2M)-10) and is
judged by both classifiers and the background share, as ``bench.quality`` judges training runs.
Scores go to ``results/quality/sampling.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from bench import recipe
from hw4 import evaluation, reverse, samplers
from hw4.atomic_files import write_bytes_atomic
from hw4.guidance import GUIDANCE_INTERVAL
from hw4.trained import load_ddpm

OUT = Path("results/quality")
CHECKPOINT = Path("results/demo-ddpm/artifacts/checkpoint.pt")
SAMPLER, STEPS = "dpm++2m", 10


def trailing(s, steps: int) -> list[int]:
    """The grid DPM-Solver++ visited before: T-1, T-1-T/steps, ..., T/steps - 1 ("trailing")."""
    T = s.num_timesteps
    grid = torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1
    return sorted(set(grid.clamp(min=0).tolist()), reverse=True)


def lambda_spaced(end: float):
    return functools.partial(reverse.dpm_solver_timesteps, end=end)


# w = 1, guided at 0.2 T..0.7 T, x-hat-0 not clipped: the defaults for the grid comparison
GUIDED = (1.0, GUIDANCE_INTERVAL, False)
DEFAULT_GRID = lambda_spaced(reverse.DPM_SOLVER_END)
# name: (guidance weight, guidance interval as fractions of T (None: every step), clip x-hat-0,
# the grid: (schedule, steps) -> timesteps); the trailing grid unless the name says otherwise
VARIANTS = {
    "guided at every step, x0 clipped": (1.0, None, True, trailing),
    "x0 not clipped": (1.0, None, False, trailing),
    "guided at t >= 0.1 T": (1.0, (0.1, 1.0), True, trailing),
    "guided at t <= 0.7 T": (1.0, (0.0, 0.7), True, trailing),
    "guided at 0.1 T..0.7 T": (1.0, (0.1, 0.7), True, trailing),
    "guided at 0.1 T..0.7 T, not clipped": (1.0, (0.1, 0.7), False, trailing),
    "guided at 0.2 T..0.7 T, not clipped": (*GUIDED, trailing),
    "the same at w = 1.5": (1.5, GUIDANCE_INTERVAL, False, trailing),
    "the same, lambda-spaced grid to t = 0": (*GUIDED, lambda_spaced(0.0)),
    "the same, lambda-spaced grid to 0.01 T": (*GUIDED, lambda_spaced(0.01)),
    "the same, lambda-spaced grid to 0.03 T (the default)": (*GUIDED, DEFAULT_GRID),
    "unguided (w = 0), x0 clipped": (0.0, None, True, trailing),
    "unguided, not clipped": (0.0, None, False, trailing),
    "unguided, not clipped, lambda-spaced grid to t = 0": (0.0, None, False, lambda_spaced(0.0)),
    "unguided, not clipped, lambda-spaced grid to 0.01 T": (0.0, None, False, lambda_spaced(0.01)),
    "unguided, not clipped, lambda-spaced grid to 0.03 T (the default)": (0.0, None, False,
                                                                         DEFAULT_GRID),
}


def draw(ddpm, labels: torch.Tensor, w: float, interval, clip: bool, grid) -> torch.Tensor:
    """The variant's samples in [0, 1]: the loop called with its own interval, clip and grid."""
    model = ddpm.network(len(labels), labels, w, interval)
    with torch.inference_mode():
        x = samplers.sample(model, ddpm.schedule, (len(labels), 1, 28, 28), method=SAMPLER,
                            prediction=ddpm.prediction, clip=clip, visit=grid(ddpm.schedule, STEPS),
                            generator=torch.Generator().manual_seed(0))
    return ((x + 1) / 2).clamp(0, 1)


def run(checkpoint: Path, out: Path, n: int, threads: int) -> None:
    torch.set_num_threads(threads)
    ddpm = load_ddpm(checkpoint)
    refs, floors = recipe.judges(out, n)
    labels = evaluation.balanced_labels(0, n)
    rows = []
    for name, (w, interval, clip, grid) in VARIANTS.items():
        t0 = time.perf_counter()
        images = draw(ddpm, labels, w, interval, clip, grid)
        q = evaluation.sample_quality(images, "mnist", refs["first"], labels=labels)
        row = {"variant": name, "guidance": w, "interval": interval, "clip": clip, "n": n,
               "timesteps": grid(ddpm.schedule, STEPS),
               "fid": q["fid"], "class_accuracy": q["class_accuracy"],
               **evaluation.second_opinion(images, refs["second"], labels),
               "seconds": time.perf_counter() - t0}
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
