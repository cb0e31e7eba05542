"""The DDPM recipe ablation: each training change alone and all together, at the demo's budget.

    python -m bench.recipe train --variant base      # one run; --variant all, v, min-snr, cosine
    python -m bench.recipe eval                      # score the runs: results/recipe/scores.json

Each run is the demo's small class-conditional U-Net, data, batch, learning rate and step count
(1,170 steps of 128 images, seed 0), trained in this process with the same ``hw4.train`` step the
Ray job runs, so only the recipe differs. One run keeps three EMAs of its weights side by side
(``hw4.train.EMA_WARMUPS``: the warm-up rule is measured without training three times) and saves
the EMA weights at a quarter, half, three quarters and the end, with the training seconds so far.
Everything goes to ``results/recipe/<variant>/``. (Quality against training minutes, for the
current recipe: ``bench.quality_curve``.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from hw4 import data, epochs, evaluation, precision, samplers, train
from hw4.assets import SECOND_JUDGE
from hw4.atomic_files import write_bytes_atomic
from hw4.checkpoint import save_checkpoint
from hw4.diffusion import DiffusionSchedule
from hw4.guidance import GUIDANCE_INTERVAL
from hw4.models.unet import UNet
from hw4.trained import TrainedDDPM, load_ddpm
from jobs import cli, ddpm_config, train_ddpm

# the demo's recipe (jobs.demo.DDPM_ARGS: ddpm_config.SMALL, 50,000 images, 3 epochs of batch 128)
BASE = dict(ddpm_config.SMALL, conditional=True, p_uncond=0.1, train_subset=50_000, epochs=3,
            batch_size=128, prediction="eps", loss_weight="uniform", lr_schedule="constant",
            ema_warmup="ramp", precision="fp32")  # as it was measured
CHANGES = {"v": dict(prediction="v"), "min-snr": dict(loss_weight="min-snr"),
           "cosine": dict(lr_schedule="cosine")}
VARIANTS = {"base": {}, **CHANGES, "all": {k: v for c in CHANGES.values() for k, v in c.items()}}
OUT = Path("results/recipe")


def config(variant: str, steps: int, seed: int) -> train_ddpm.DDPMJobConfig:
    cfg = cli.build(train_ddpm.DDPMJobConfig, {**BASE, **VARIANTS[variant], "seed": seed,
                                               "name": f"recipe-{variant}"})
    cfg.epochs = -(-steps // (cfg.train_subset // cfg.batch_size))  # recorded as the job would
    return cfg


def run(variant: str, steps: int, seed: int, out: Path, threads: int) -> None:
    train_in_process(config(variant, steps, seed), steps, seed, out, threads, variant,
                     list(train.EMA_WARMUPS))


def train_in_process(cfg: train_ddpm.DDPMJobConfig, steps: int | None, seed: int, out: Path,
                     threads: int, label: str, ema_rules: list[str],
                     budget_s: float | None = None, points: int = 4, data_scale: float = 1.0) -> None:
    """Train ``cfg``'s U-Net in this process with the Ray job's own step (its autocast rule
    included) for ``steps`` optimiser steps, or, with ``budget_s``, for the steps that fit in it
    at the time of the first ``train_ddpm.PROBE_STEPS`` (fixed then, so the cosine decay knows
    its length and a paused process trains no less). One EMA per rule in ``ema_rules``; the
    EMA weights are saved at ``points`` evenly spaced steps (each quarter by default), with the
    training seconds so far in ``log.json``. ``data_scale`` trains on images in [-s, s] instead of
    [-1, 1] (an experiment of ``bench.quality``; score such a run with ``score(data_scale=s)``)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ds = data.load_dataset("mnist", "train", normalization="symmetric", subset=cfg.train_subset,
                           seed=seed)
    loader = data.TensorBatches(*ds.tensors, cfg.batch_size, seed=seed)
    model = UNet(cfg.unet())
    emas = {rule: train.EMA(model, cfg.ema_decay, rule) for rule in ema_rules}
    optimizer = train.make_optimizer(model.parameters(), cfg.lr)
    schedule = DiffusionSchedule.named(cfg.schedule, cfg.timesteps)
    gen = torch.Generator().manual_seed(seed)
    dtype = precision.autocast_dtype(cfg.precision, "cpu", cfg.batch_size)
    model.channels_last = precision.channels_last("cpu", dtype)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict:
        return train.ddpm_train_step(model, schedule, x * data_scale, optimizer, labels=y,
                                     p_uncond=cfg.p_uncond,
                                     prediction=cfg.prediction, weighting=cfg.loss_weight,
                                     snr_gamma=cfg.snr_gamma, ema=list(emas.values()),
                                     grad_clip=cfg.grad_clip, autocast_dtype=dtype, generator=gen)

    if budget_s is not None:  # the probe's steps train too, at the warm-up's learning rate
        probe = iter(loader)
        per_step = epochs.seconds_per_step(lambda: step(*next(probe)), steps=train_ddpm.PROBE_STEPS)
        steps = epochs.steps_in_budget(budget_s, per_step, 10**6)
        print(f"{label}: {per_step:.3f} s a step ({dtype or 'fp32'}): {steps} steps", flush=True)
    else:
        per_step = None
    cfg.epochs = -(-steps // len(loader))  # recorded as the job would
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, train.warmup_lambda(cfg.warmup_steps, cfg.lr_schedule, steps))
    saves = {round(steps * i / points) for i in range(1, points + 1)}
    log, done, seconds = [], 0, 0.0
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(cfg.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            t0 = time.perf_counter()
            m = step(x, y)
            sched.step()
            seconds += time.perf_counter() - t0
            done += 1
            if done % 50 == 0:
                print(f"{label} step {done}/{steps} loss {float(m['loss']):.4f} "
                      f"{seconds:.0f} s", flush=True)
            if done in saves:
                for rule, ema in emas.items():
                    if rule == cfg.ema_warmup or done == steps:  # the others only at the end
                        save(out / f"step{done}-{rule}.pt", model, ema, cfg, rule, done)
                log.append({"step": done, "train_seconds": seconds, "loss": float(m["loss"]),
                            "probe_seconds_per_step": per_step, "data_scale": data_scale})
                write_bytes_atomic(out / "log.json", json.dumps(log, indent=1).encode())
            if done == steps:
                return


def save(path: Path, model: UNet, ema: train.EMA, cfg: train_ddpm.DDPMJobConfig, rule: str,
         step: int) -> None:
    job = dataclasses.asdict(dataclasses.replace(cfg, ema_warmup=rule))
    save_checkpoint(path, kind="unet", config=job, model_config=dataclasses.asdict(cfg.unet()),
                    model=model, ema=ema.state_dict(), step=step)


def draw(ddpm: TrainedDDPM, labels: torch.Tensor, guidance: float, *, method: str,
         steps: int | None = None, eta: float = 0.0,
         interval: tuple[float, float] | None = GUIDANCE_INTERVAL, clip: bool = samplers.CLIP_X0,
         visit: list[int] | None = None, data_scale: float = 1.0) -> torch.Tensor:
    """Samples in [0, 1] (seed 0) as ``TrainedDDPM.sample`` draws them, with the sampler's knobs
    open to experiments: the guidance interval, x-hat-0 clipping, the grid (``visit``), and the
    data range a run was trained in ([-s, s], mapped back before display)."""
    model = ddpm.network(len(labels), labels, guidance, interval)
    with torch.inference_mode():
        x = samplers.sample(model, ddpm.schedule, (len(labels), 1, 28, 28), method=method,
                            steps=steps, eta=eta, prediction=ddpm.prediction, clip=clip, visit=visit,
                            generator=torch.Generator().manual_seed(0))
    return ((x / data_scale + 1) / 2).clamp(0, 1)


def judge(images: torch.Tensor, labels: torch.Tensor, refs: dict) -> dict:
    """Pinned FID and class accuracy, and the second judge's FID, accuracy and agreement, and
    the background share."""
    q = evaluation.sample_quality(images, "mnist", refs["first"], labels=labels)
    return {"fid": q["fid"], "class_accuracy": q["class_accuracy"],
            **evaluation.second_opinion(images, refs["second"], labels)}


def score(path: Path, spec: str, n: int, guidance: float, refs: dict,
          data_scale: float = 1.0) -> dict:
    """``judge`` of ``n`` class-balanced samples (seed 0) of the checkpoint at ``path``."""
    labels = evaluation.balanced_labels(0, n)
    t0 = time.perf_counter()
    sampler = samplers.SamplerSpec.parse(spec)
    images = draw(load_ddpm(path), labels, guidance, method=sampler.method, steps=sampler.steps,
                  eta=sampler.eta, data_scale=data_scale)
    return {"checkpoint": str(path), "sampler": spec, "guidance": guidance, "n": n,
            "sample_seconds": time.perf_counter() - t0, **judge(images, labels, refs)}


def judges(out: Path, n: int) -> tuple[dict, dict]:
    """Both judges' reference statistics of ``n`` MNIST train images, and the floors: the FIDs
    of ``n`` test images against them and MNIST's own background share."""
    cache = out / "fid_stats"
    refs = {"first": evaluation.reference_stats("mnist", n, cache),
            "second": evaluation.reference_stats("mnist", n, cache, judge=SECOND_JUDGE)}
    test = data.load_dataset("mnist", "test", subset=n, seed=0).tensors[0]
    floors = {"fid": evaluation.sample_quality(test, "mnist", refs["first"])["fid"],
              **{k: v for k, v in evaluation.second_opinion(test, refs["second"]).items()
                 if k in ("second_fid", "background_share")}}
    return refs, floors


def evaluate(out: Path, n: int, threads: int) -> None:
    """Every variant's final EMA (ramp) with DDIM-50 eta = 1 at w = 1; the base and all-changes
    runs also with DDIM-50 eta = 0, DPM-Solver++(2M)-10, the other EMA rules and the saved
    intermediate points (the FID-against-minutes curve). Results: ``out/scores.json``."""
    torch.set_num_threads(threads)
    refs, floors = judges(out, n)
    final = "step1170-ramp.pt"
    jobs = [("base", final, "ddim:50:1"), ("all", final, "ddim:50:1"), ("all", final, "dpm++2m:10"),
            ("all", final, "ddim:50:0"), *[(v, final, "ddim:50:1") for v in CHANGES]]
    for v in ("all", "base"):
        jobs += [(v, final, "ddim:50:0"), (v, final, "dpm++2m:10"),
                 (v, "step1170-power.pt", "ddim:50:1"), (v, "step1170-half-life.pt", "ddim:50:1")]
        jobs += [(v, f"step{s}-ramp.pt", "ddim:50:1") for s in (292, 585, 878)]
    done_path = out / "scores.json"  # an interrupted evaluation goes on where it stopped
    scores = json.loads(done_path.read_text())["scores"] if done_path.is_file() else []
    for variant, name, spec in dict.fromkeys(jobs):
        if any(r["variant"] == variant and r["checkpoint"].endswith(name) and r["sampler"] == spec
               for r in scores):
            continue
        if (out / variant / name).is_file():
            scores.append({"variant": variant, **score(out / variant / name, spec, n, 1.0, refs)})
            print(json.dumps(scores[-1]), flush=True)
            write_bytes_atomic(out / "scores.json",
                               json.dumps({"floor": floors, "scores": scores}, indent=1).encode())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row of cells."""
    return "\n".join(f"| {' | '.join(cells)} |"
                     for cells in [header, ["---"] * len(header), *rows])


def table(out: Path) -> str:
    """The scores as the Markdown table in BENCHMARKS.md."""
    got = json.loads((out / "scores.json").read_text())
    f = got["floor"]
    rows = [[r["variant"], Path(r["checkpoint"]).stem, r["sampler"],
             f"{r['fid']:.1f} ({r['fid'] / f['fid']:.2f}x)", f"{r['class_accuracy']:.3f}",
             f"{r['second_fid']:.1f} ({r['second_fid'] / f['second_fid']:.2f}x)",
             f"{r['second_class_accuracy']:.3f}", f"{r['agreement']:.3f}",
             f"{r['background_share']:.0%}"] for r in got["scores"]]
    rows.append(["MNIST test (the floor)", "", "", f"{f['fid']:.1f}", "", f"{f['second_fid']:.2f}",
                 "", "", f"{f['background_share']:.0%}"])
    return markdown_table(["run", "checkpoint", "sampler (w = 1)", "FID (x floor)", "class acc.",
                           "2nd judge FID (x floor)", "2nd judge acc.", "agreement",
                           "background share"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=list(VARIANTS), required=True)
    t.add_argument("--steps", type=int, default=1170)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", type=Path, default=OUT)
    e = sub.add_parser("eval")
    e.add_argument("--n", type=int, default=500)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--out", type=Path, default=OUT)
    sub.add_parser("table").add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.cmd == "table":
        print(table(args.out))
    if args.cmd == "eval":
        evaluate(args.out, args.n, args.threads)
    if args.cmd == "train":
        run(args.variant, args.steps, args.seed, args.out / args.variant, args.threads)


if __name__ == "__main__":
    main()
