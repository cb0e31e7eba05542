"""What cleans the demo DDPM's backgrounds and lifts its unguided quality: each candidate change
trained at the demo's wall-clock and judged by both classifiers and the background share.

    python -m bench.quality train --variant recipe     # one run; see VARIANTS
    python -m bench.quality eval                       # score every finished run
    python -m bench.quality table                      # the Markdown table in BENCHMARKS.md

Every run starts from what ``python jobs/train_ddpm.py --preset small`` trains (the demo's
U-Net and the chosen recipe, bf16 autocast where the CPU has it) on the demo's data, seed 0, and
changes one thing; each trains for the same ``--minutes`` of step time, so a wider U-Net pays
for its width with fewer steps. The training loop is ``bench.recipe.train_in_process`` (the
job's own step). Runs go to ``results/quality/<variant>/``; scores to ``scores.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench import recipe
from hw4.atomic_files import write_bytes_atomic
from jobs import cli, ddpm_config, train_ddpm

START = dict(ddpm_config.SMALL, conditional=True, p_uncond=0.1, train_subset=50_000,
             batch_size=128)
VARIANTS = {
    "recipe": {},
    "width24": dict(base_channels=24),
    "width32": dict(base_channels=32),
    "res2": dict(num_res_blocks=2),
    "attn14": dict(attention_resolutions=(2, 4)),  # 14x14 as well as 7x7 (and the middle)
    "zero-snr": dict(schedule="linear-zero-snr"),
    "lr2e-3": dict(lr=2e-3),
    "ema0.999": dict(ema_decay=0.999),
    # the data range: the recipe trained on images in [-s, s] (backgrounds at -s) instead of
    # [-1, 1], mapped back before it is judged; scaling the data by s multiplies every
    # timestep's SNR by s^2 (Chen 2023, "On the importance of noise scheduling")
    "range0.5": {},
    "range2": {},
}
DATA_SCALES = {"range0.5": 0.5, "range2": 2.0}  # the others: 1
SPECS = [("dpm++2m:10", 1.0), ("dpm++2m:10", 0.0)]  # the served default, and unguided
OUT = Path("results/quality")
DEMO_MINUTES = 9.0


def train(variant: str, minutes: float, out: Path, threads: int) -> None:
    cfg = cli.build(train_ddpm.DDPMJobConfig, {**START, **VARIANTS[variant], "seed": 0,
                                               "name": f"quality-{variant}"})
    cfg.validate()
    recipe.train_in_process(cfg, None, 0, out / variant, threads, variant, [cfg.ema_warmup],
                            budget_s=minutes * 60, data_scale=DATA_SCALES.get(variant, 1.0))


def evaluate(out: Path, n: int, threads: int) -> None:
    """The final EMA of every finished run, under ``SPECS``; resumes where it stopped."""
    torch.set_num_threads(threads)
    refs, floors = recipe.judges(out, n)
    done = out / "scores.json"
    scores = json.loads(done.read_text())["scores"] if done.is_file() else []
    for variant in VARIANTS:
        log = out / variant / "log.json"
        if not log.is_file():
            continue
        last = json.loads(log.read_text())[-1]
        path = out / variant / f"step{last['step']}-ramp.pt"
        if not path.is_file():
            continue
        for spec, w in SPECS:
            if any(r["variant"] == variant and r["sampler"] == spec and r["guidance"] == w
                   for r in scores):
                continue
            # the budget's minutes at the probe's pace (train_seconds also counts other work
            # that shared the cores)
            pace = last.get("probe_seconds_per_step")
            row = {"variant": variant, "steps": last["step"],
                   "train_minutes": last["train_seconds"] / 60,
                   "budget_minutes": pace * last["step"] / 60 if pace else None,
                   **recipe.score(path, spec, n, w, refs, DATA_SCALES.get(variant, 1.0))}
            scores.append(row)
            print(json.dumps(row), flush=True)
            write_bytes_atomic(done, json.dumps({"floor": floors, "scores": scores},
                                                indent=1).encode())


def table(out: Path) -> str:
    got = json.loads((out / "scores.json").read_text())
    f = got["floor"]
    rows = [[r["variant"], str(r["steps"]), f"{r['guidance']:g}", f"{r['fid'] / f['fid']:.2f}x",
             f"{r['class_accuracy']:.3f}", f"{r['second_fid'] / f['second_fid']:.2f}x",
             f"{r['second_class_accuracy']:.3f}", f"{r['background_share']:.0%}"]
            for r in got["scores"]]
    rows.append(["MNIST test (the floor)", "", "", f"FID {f['fid']:.1f}", "", f"{f['second_fid']:.2f}",
                 "", f"{f['background_share']:.0%}"])
    return recipe.markdown_table(["change", "steps", "w", "FID (x floor)", "acc.", "2nd FID (x floor)",
                                  "2nd acc.", "background"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["train", "eval", "table"])
    p.add_argument("--variant", choices=list(VARIANTS), default="recipe")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="step time of each run")
    p.add_argument("--n", type=int, default=500, help="class-balanced samples per score")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.cmd == "train":
        train(args.variant, args.minutes, args.out, args.threads)
    elif args.cmd == "eval":
        evaluate(args.out, args.n, args.threads)
    else:
        print(table(args.out))


if __name__ == "__main__":
    main()
