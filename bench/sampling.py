"""What the sampler does to a trained DDPM's backgrounds and FID: the guidance interval and
whether each step clips x-hat-0, one change at a time, on one checkpoint (the demo's by default).

    python -m bench.sampling --checkpoint results/demo-ddpm/artifacts/checkpoint.pt
    python -m bench.sampling --table                   # the Markdown table in BENCHMARKS.md

Each variant draws the same 500 class-balanced samples (seed 0, DPM-Solver++(2M)-10) and is
judged by both classifiers and the background share, as ``bench.quality`` judges training runs.
Scores go to ``results/quality/sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import recipe
from hw4 import evaluation, samplers
from hw4.atomic_files import write_bytes_atomic
from hw4.guidance import GUIDANCE_INTERVAL, guided_model, interval_timesteps
from hw4.trained import load_ddpm

OUT = Path("results/quality")
CHECKPOINT = Path("results/demo-ddpm/artifacts/checkpoint.pt")
SAMPLER, STEPS = "dpm++2m", 10
# name: (guidance weight, guidance interval as fractions of T (None: every step), clip x-hat-0)
VARIANTS = {
    "guided at every step, x0 clipped (the old default)": (1.0, None, True),
    "x0 not clipped": (1.0, None, False),
    "guided at t >= 0.1 T": (1.0, (0.1, 1.0), True),
    "guided at t <= 0.7 T": (1.0, (0.0, 0.7), True),
    "guided at 0.1 T..0.7 T": (1.0, (0.1, 0.7), True),
    "guided at 0.1 T..0.7 T, not clipped": (1.0, (0.1, 0.7), False),
    "guided at 0.2 T..0.7 T, not clipped (the default)": (1.0, GUIDANCE_INTERVAL, False),
    "the default at w = 1.5": (1.5, GUIDANCE_INTERVAL, False),
    "unguided (w = 0), x0 clipped": (0.0, None, True),
    "unguided (w = 0), not clipped (the default)": (0.0, None, False),
}


def draw(ddpm, labels: torch.Tensor, w: float, interval, clip: bool) -> torch.Tensor:
    """The variant's samples in [0, 1]: the loop called with its own interval and clip."""
    model = guided_model(ddpm.model.eval(), labels, w, ddpm.model.null_label,
                         interval_timesteps(ddpm.timesteps, interval))
    with torch.inference_mode():
        x = samplers.sample(model, ddpm.schedule, (len(labels), 1, 28, 28), method=SAMPLER,
                            steps=STEPS, prediction=ddpm.prediction, clip=clip,
                            generator=torch.Generator().manual_seed(0))
    return ((x + 1) / 2).clamp(0, 1)


def run(checkpoint: Path, out: Path, n: int, threads: int) -> None:
    torch.set_num_threads(threads)
    ddpm = load_ddpm(checkpoint)
    refs, floors = recipe.judges(out, n)
    labels = evaluation.balanced_labels(0, n)
    rows = []
    for name, (w, interval, clip) in VARIANTS.items():
        t0 = time.perf_counter()
        images = draw(ddpm, labels, w, interval, clip)
        q = evaluation.sample_quality(images, "mnist", refs["first"], labels=labels)
        row = {"variant": name, "guidance": w, "interval": interval, "clip": clip, "n": n,
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
    return recipe.markdown_table(["sampling (DPM-Solver++(2M)-10, w = 1 unless said)",
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
