"""Quality against training minutes for the demo's DDPM run: where does the recipe flatten?

    python -m bench.quality_curve train       # the demo's run in process, the EMA saved 8 times
    python -m bench.quality_curve score       # each saved EMA by both judges; draws the figure

The run is what ``make demo`` trains (``bench.quality``'s starting point: the small preset, the
chosen recipe, 50,000 MNIST images, batch 128, seed 0, 4 epochs = 1,560 steps, bf16 autocast
where the CPU has it), in this process with the job's own step (``bench.recipe.train_in_process``),
so the learning-rate schedule is the demo's. Every saved EMA is scored with the served sampler
at w = 1 on ``--n`` class-balanced samples: FID over its floor by both judges, and the
background share over MNIST's. Results: ``results/quality_curve/``; the figure:
docs/images/fid_vs_minutes.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench import quality, recipe
from hw4 import samplers, viz
from hw4.atomic_files import write_bytes_atomic
from jobs import cli, train_ddpm

OUT = Path("results/quality_curve")
FIGURE = Path("docs/images/fid_vs_minutes.png")
DEMO_STEPS = 4 * (50_000 // 128)  # the demo's 4 epochs of full batches
SPEC = (f"{samplers.DEFAULT_SAMPLER}:{samplers.kind(samplers.DEFAULT_SAMPLER).default_steps}", 1.0)


def train(out: Path, steps: int, points: int, threads: int) -> None:
    cfg = cli.build(train_ddpm.DDPMJobConfig, {**quality.START, "seed": 0, "name": "quality-curve"})
    cfg.validate()
    recipe.train_in_process(cfg, steps, 0, out, threads, "curve", [cfg.ema_warmup], points=points)


def score(out: Path, n: int, threads: int, figure: Path) -> list[dict]:
    """Score every saved EMA (resuming where an earlier call stopped) and draw the figure."""
    torch.set_num_threads(threads)
    refs, floors = recipe.judges(out, n)
    done = out / "scores.json"
    rows = json.loads(done.read_text())["rows"] if done.is_file() else []
    spec, w = SPEC
    for point in json.loads((out / "log.json").read_text()):
        if any(r["step"] == point["step"] for r in rows):
            continue
        path = out / f"step{point['step']}-ramp.pt"
        rows.append({"step": point["step"], "train_minutes": point["train_seconds"] / 60,
                     **recipe.score(path, spec, n, w, refs)})
        print(json.dumps(rows[-1]), flush=True)
        write_bytes_atomic(done, json.dumps({"floor": floors, "rows": rows}, indent=1).encode())
    rows.sort(key=lambda r: r["step"])
    xs = [r["train_minutes"] for r in rows]
    viz.line_plot({"pinned judge's FID / floor": (xs, [r["fid"] / floors["fid"] for r in rows]),
                   "second judge's FID / floor": (
                       xs, [r["second_fid"] / floors["second_fid"] for r in rows]),
                   "background share / MNIST's": (
                       xs, [r["background_share"] / floors["background_share"] for r in rows])},
                  figure, xlabel="training minutes (2-core CPU, in process)",
                  ylabel="times the data's own value (log scale)", logy=True,
                  title=f"the demo's run, {samplers.SamplerSpec.parse(spec).label} at w = {w:g}, "
                        f"n = {n}")
    return rows


def table(out: Path) -> str:
    got = json.loads((out / "scores.json").read_text())
    f = got["floor"]
    rows = [[str(r["step"]), f"{r['train_minutes']:.1f}", f"{r['fid'] / f['fid']:.2f}x",
             f"{r['second_fid'] / f['second_fid']:.2f}x", f"{r['class_accuracy']:.3f}",
             f"{r['background_share']:.1%}"] for r in sorted(got["rows"], key=lambda r: r["step"])]
    return recipe.markdown_table(["step", "minutes", "FID (x floor)", "2nd FID (x floor)",
                                  "class acc.", "background"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["train", "score", "table"])
    p.add_argument("--steps", type=int, default=DEMO_STEPS)
    p.add_argument("--points", type=int, default=8, help="EMA checkpoints along the run")
    p.add_argument("--n", type=int, default=1000, help="class-balanced samples per score")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--figure", type=Path, default=FIGURE)
    args = p.parse_args(argv)
    if args.cmd == "train":
        train(args.out, args.steps, args.points, args.threads)
    elif args.cmd == "score":
        score(args.out, args.n, args.threads, args.figure)
    print(table(args.out) if (args.out / "scores.json").is_file() else "", flush=True)


if __name__ == "__main__":
    main()
