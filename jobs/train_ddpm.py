"""Train the U-Net DDPM on MNIST with Ray Train.

    python jobs/train_ddpm.py --epochs 20 --num-workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_ddpm.py

Without RAY_ADDRESS a local Ray is started. Rerunning with the same --name resumes the run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.tensorboard import SummaryWriter

from hw4 import data, evaluation, train, viz
from hw4.assets import SECOND_JUDGE
from hw4.checkpoint import load_state, save_checkpoint, unwrap
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig
from hw4.trained import TrainedDDPM, ddpm_from_state
from jobs import cli, driver, finish, worker
from jobs.cli import opt

_UNET = UNetConfig()


@dataclass
class DDPMJobConfig(cli.RunOptions):
    name: str = opt("ddpm", "run name; the same name resumes")
    train_subset: int | None = opt(None, "train on this many MNIST images")
    val_subset: int = opt(2000, "held-out images for the validation loss")
    # the U-Net's own fields, with its defaults (saved apart as the checkpoint's model_config)
    base_channels: int = opt(_UNET.base_channels, "U-Net width")
    channel_mults: tuple[int, ...] = opt(_UNET.channel_mults, "width per level")
    num_res_blocks: int = opt(_UNET.num_res_blocks, "ResNet blocks per level")
    attention_resolutions: tuple[int, ...] = opt(_UNET.attention_resolutions,
                                                 "downsample factors that attend")
    num_heads: int = opt(_UNET.num_heads, "attention heads")
    dropout: float = opt(_UNET.dropout, "dropout in ResNet blocks")
    groups: int = opt(_UNET.groups, "GroupNorm groups")
    conditional: bool = opt(True, "class-conditional U-Net (the homework's), with a null label")
    p_uncond: float = opt(0.1, "probability that a training label is dropped to the null label")
    guidance: float = opt(1.0, "guidance weight w of sample grids and FIDs (0: no guidance)")
    schedule: Literal["linear", "cosine", "sigmoid"] = opt("linear", "noise schedule")
    timesteps: int = opt(1000, "diffusion steps T")
    prediction: Literal["eps", "x0", "v"] = opt("eps", "network target")
    loss_weight: Literal["uniform", "min-snr"] = opt(
        "uniform", "per-timestep loss weight: min-snr = min(SNR, gamma) in x0 space (Hang et al.)")
    snr_gamma: float = opt(5.0, "gamma of --loss-weight min-snr")
    epochs: int = opt(20, "passes over the training set (with --train-minutes: at most)")
    train_minutes: float | None = opt(
        None, "train for this much wall-clock instead: the step count is fixed at the start "
              "from the time of a few steps (so the cosine decay knows its length); the last "
              "epoch is cut short")
    batch_size: int = opt(128, "global batch size (split over workers)")
    lr: float = opt(2e-4, "AdamW learning rate")
    warmup_steps: int = opt(500, "linear LR warm-up steps")
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant", "after the warm-up: constant, or cosine decay to 1%% at the last step")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    ema_decay: float = opt(0.999, "EMA decay of the weights (the cap of its warm-up)")
    ema_warmup: Literal["ramp", "power", "half-life"] = opt(
        "ramp", "how the EMA decay rises to --ema-decay (hw4.train.ema_decay_at)")
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "autocast: auto = bf16 on CUDA at >= 512 images per worker, else fp32")
    compile: bool = opt(False, "torch.compile the U-Net (pays off on GPUs; minutes to compile)")
    sample_every: int = opt(5, "epochs between TensorBoard sample grids")
    num_samples: int = opt(64, "images in samples.png")
    sampler: Literal["ddim", "dpm++2m"] = opt("ddim", "sampler of sample grids and FID")
    sample_steps: int = opt(50, "sampler steps (network calls) for sample grids and FID")
    sample_eta: float = opt(0.0, "DDIM eta of sample grids and FID (1: DDPM-like noise)")
    fid_every: int = opt(0, "epochs between FIDs of DDIM samples (0: none; sweeps use it)")
    fid_samples: int = opt(500, "samples (and real images) per FID")

    def validate(self) -> None:
        super().validate()
        c = cli.check
        c(self.timesteps >= 2, f"--timesteps must be >= 2, got {self.timesteps}")
        c(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        c(self.train_minutes is None or self.train_minutes > 0,
          f"--train-minutes must be positive, got {self.train_minutes}")
        c(self.batch_size >= self.num_workers, "--batch-size must be at least --num-workers")
        c(self.lr > 0, f"--lr must be positive, got {self.lr}")
        c(0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        c(self.snr_gamma > 0, f"--snr-gamma must be positive, got {self.snr_gamma}")
        c(0 <= self.p_uncond <= 1, f"--p-uncond must be in [0, 1], got {self.p_uncond}")
        c(self.guidance >= 0, f"--guidance must be >= 0, got {self.guidance}")
        c(1 <= self.sample_steps <= self.timesteps, "--sample-steps must be in 1..--timesteps")
        c(0 <= self.sample_eta <= 1, f"--sample-eta must be in [0, 1], got {self.sample_eta}")
        c(len(self.channel_mults) >= 1, "--channel-mults needs at least one level")
        c(self.fid_every >= 0 and self.fid_samples >= 2, "--fid-every >= 0, --fid-samples >= 2")
        widths = [self.base_channels * m for m in self.channel_mults] + [self.base_channels]
        c(all(w % self.groups == 0 and w % self.num_heads == 0 for w in widths),
          f"--groups {self.groups} and --num-heads {self.num_heads} must divide every width {widths}")

    def unet(self) -> UNetConfig:
        return UNetConfig(base_channels=self.base_channels, channel_mults=self.channel_mults,
                          num_res_blocks=self.num_res_blocks,
                          attention_resolutions=self.attention_resolutions,
                          num_heads=self.num_heads, dropout=self.dropout, groups=self.groups,
                          num_classes=NUM_CLASSES if self.conditional else None)


NUM_CLASSES = 10  # MNIST digits
# The small U-Net and recipe that fit a 2-core CPU's budget: make demo and the schedule sweep.
# The v target, Min-SNR-5 weights and the cosine LR decay: chosen by bench/recipe.py's ablation
# (BENCHMARKS.md, "DDPM recipe")
SMALL = dict(base_channels=16, channel_mults=(1, 2, 4), attention_resolutions=(4,), dropout=0.0,
             lr=1e-3, warmup_steps=100, ema_decay=0.995, prediction="v", loss_weight="min-snr",
             lr_schedule="cosine")
SMOKE = dict(train_subset=256, val_subset=64, base_channels=8, channel_mults=(1, 2),
             attention_resolutions=(2,), num_heads=2, groups=4, timesteps=50, epochs=2,
             batch_size=32, warmup_steps=2, num_samples=10, sample_steps=5, sample_every=1)


def render_samples(trained: TrainedDDPM, cfg: DDPMJobConfig, n: int, seed: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` DDIM samples in [0, 1] (n, 1, 28, 28); a conditional model draws the digits in
    order, each ``n // 10`` times (one grid row per digit with ``nrow = n // 10``)."""
    labels = digit_rows(n) if trained.conditional else None
    return trained.sample(n, method=cfg.sampler, steps=cfg.sample_steps, eta=cfg.sample_eta,
                          labels=labels, guidance=cfg.guidance if trained.conditional else 0.0,
                          seed=seed, device=device)


def digit_rows(n: int) -> torch.Tensor:
    """Labels 0,0,...,1,1,...: ``n // 10`` of each digit (n a multiple of 10), or 0..9 cycling."""
    if n % NUM_CLASSES == 0:
        return torch.arange(NUM_CLASSES).repeat_interleave(n // NUM_CLASSES)
    return evaluation.balanced_labels(0, n, NUM_CLASSES)


def sample_fid(trained: TrainedDDPM, cfg: DDPMJobConfig, device: torch.device) -> dict:
    """FID of ``fid_samples`` DDIM samples against as many MNIST train images (pinned features);
    a conditional model's samples are class-balanced and scored for class accuracy too."""
    labels = evaluation.balanced_labels(0, cfg.fid_samples, NUM_CLASSES) if trained.conditional else None
    images = trained.sample(cfg.fid_samples, method=cfg.sampler, steps=cfg.sample_steps,
                            eta=cfg.sample_eta, labels=labels,
                            guidance=cfg.guidance if trained.conditional else 0.0,
                            seed=cfg.seed, device=device)
    ref = evaluation.reference_stats("mnist", cfg.fid_samples,
                                     Path(cfg.storage_path) / "eval" / "fid_stats")
    q = evaluation.sample_quality(images, "mnist", ref, labels=labels)
    ref2 = evaluation.reference_stats("mnist", cfg.fid_samples,
                                      Path(cfg.storage_path) / "eval" / "fid_stats", judge=SECOND_JUDGE)
    second = evaluation.second_opinion(images, ref2, labels)  # what the pinned judge misses
    out = {"fid": q["fid"], "fid_confident": q["confident_fraction"],
           "second_fid": second["second_fid"], "background_share": second["background_share"]}
    if labels is not None:
        out["class_accuracy"] = q["class_accuracy"]
        out["second_class_accuracy"] = second["second_class_accuracy"]
    return out


PROBE_STEPS = 8  # timed steps that fix a --train-minutes run's length


def budget_steps(cfg: DDPMJobConfig, model: torch.nn.Module, step_on: Callable[..., dict],
                 w: worker.Worker) -> int:
    """The optimiser steps that fit in ``--train-minutes`` (at most ``--epochs`` epochs), from
    the speed of a few steps on a throwaway copy of the model, optimiser and EMA; workers
    agree on the smallest count (data-parallel workers must take the same steps)."""
    probe = copy.deepcopy(model)
    opt = train.make_optimizer(probe.parameters(), cfg.lr, w.device)
    avg = train.EMA(probe, cfg.ema_decay, cfg.ema_warmup)
    batches = itertools.cycle(list(itertools.islice(iter(w.loader), PROBE_STEPS)))
    g = torch.Generator(device=w.device).manual_seed(cfg.seed)
    per_step = train.seconds_per_step(lambda: step_on(probe, opt, avg, *next(batches), g),
                                      steps=PROBE_STEPS, device=w.device)
    steps = train.steps_in_budget(cfg.train_minutes * 60, per_step, len(w.loader) * cfg.epochs)
    return worker.agree_min(steps, w.device)


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = DDPMJobConfig(**config)
    w = worker.setup_worker(cfg, "mnist", normalization="symmetric")
    model = UNet(cfg.unet()).to(w.device)
    ema = train.EMA(model, cfg.ema_decay, cfg.ema_warmup)
    optimizer = train.make_optimizer(model.parameters(), cfg.lr, w.device)
    schedule = DiffusionSchedule.named(cfg.schedule, cfg.timesteps).to(w.device)
    autocast = train.autocast_dtype(cfg.precision, w.device, cfg.batch_size // w.world)
    gen = w.generator()

    def step_on(net: torch.nn.Module, opt: torch.optim.Optimizer, avg: train.EMA,
                x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        return train.ddpm_train_step(
            net, schedule, x, opt, labels=y if cfg.conditional else None, p_uncond=cfg.p_uncond,
            prediction=cfg.prediction, weighting=cfg.loss_weight, snr_gamma=cfg.snr_gamma,
            ema=avg, grad_clip=cfg.grad_clip, autocast_dtype=autocast, generator=g)

    start_epoch, history = 0, []
    state = worker.restore_state(w.device)
    if state is not None:  # resume: the run's length was fixed when it started
        planned = state["extra"].get("planned_steps", len(w.loader) * cfg.epochs)
    elif cfg.train_minutes is not None:
        planned = budget_steps(cfg, model, step_on, w)
    else:
        planned = len(w.loader) * cfg.epochs
    n_epochs = -(-planned // len(w.loader))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, train.warmup_lambda(
        cfg.warmup_steps, cfg.lr_schedule, max(planned, cfg.warmup_steps + 1)))
    if state is not None:  # resume: a restarted worker group or a rerun with the same name
        load_state(model, state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["extra"]["lr_scheduler"])
        start_epoch, history = state["epoch"] + 1, state["extra"]["history"]
    model = worker.prepare_model(model)
    forward = torch.compile(model) if cfg.compile else model
    ema_model = copy.deepcopy(unwrap(model))

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        metrics = step_on(forward, optimizer, ema, x, y, gen)
        lr_sched.step()
        return metrics

    train_time = history[-1].get("train_time_s", 0.0) if history else 0.0
    for epoch in w.epochs(start_epoch, n_epochs):
        t0 = time.time()
        tr = train.run_epoch(w.loader, step, device=w.device, desc=f"epoch {epoch}",
                             progress=worker.progress_bar(cfg.quiet), log_every=worker.LOG_EVERY,
                             on_log=w.progress("DDPM", epoch, start_epoch, n_epochs),
                             max_steps=planned - epoch * len(w.loader))
        train_time += time.time() - t0
        ema.copy_to(ema_model)
        trained = TrainedDDPM.from_model(ema_model, cfg)
        val = train.ddpm_validation_loss(ema_model, schedule, w.val_loader, prediction=cfg.prediction,
                                         device=w.device, seed=cfg.seed, conditional=cfg.conditional)
        metrics = {"epoch": epoch, "step": int(lr_sched.last_epoch), "train_loss": tr["loss"],
                   "grad_norm": tr["grad_norm"], "val_loss": val["loss"],
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": time.time() - t0,
                   "train_time_s": train_time, "planned_steps": planned,
                   "resumed_from_epoch": start_epoch}
        last = epoch + 1 == n_epochs
        fid_epoch = cfg.fid_every and ((epoch + 1) % cfg.fid_every == 0 or last)
        if fid_epoch and w.rank == 0:  # Tune reads rank 0's report
            metrics.update(sample_fid(trained, cfg, w.device))
        history.append(metrics)
        if w.writer is not None:
            log_epoch(w.writer, metrics, trained, cfg, epoch, w.device, last)
        save = functools.partial(
            save_checkpoint, kind="unet", config=dataclasses.asdict(cfg),
            model_config=dataclasses.asdict(cfg.unet()), model=model, ema=ema.state_dict(),
            optimizer=optimizer, step=metrics["step"], epoch=epoch, metrics=metrics,
            extra={"lr_scheduler": lr_sched.state_dict(), "history": list(history),
                   "planned_steps": planned})
        worker.report(metrics, save, cfg)
    w.close()


def log_epoch(writer: SummaryWriter, metrics: dict, trained: TrainedDDPM, cfg: DDPMJobConfig,
              epoch: int, device: torch.device, last: bool) -> None:
    for k in ("train_loss", "val_loss", "grad_norm", "lr", "epoch_time_s", "fid", "class_accuracy",
              "second_fid", "second_class_accuracy", "background_share"):
        if k in metrics:
            writer.add_scalar(k, metrics[k], metrics["step"])
    if (epoch + 1) % cfg.sample_every == 0 or last:
        grid = render_samples(trained, cfg, 20, cfg.seed, device)
        writer.add_image("samples_ema", viz.make_grid(grid, nrow=2 if trained.conditional else 4),
                         metrics["step"])
    writer.flush()


def render(state: dict, out: Path) -> None:
    """samples.png from the EMA weights of the best checkpoint (one row per digit when the
    model is conditional)."""
    cfg = cli.config_from_state(DDPMJobConfig, state)
    trained = ddpm_from_state(state)
    n = cfg.num_samples
    viz.save_grid(render_samples(trained, cfg, n, cfg.seed),
                  out / "samples.png", nrow=max(n // NUM_CLASSES, 1) if trained.conditional else 8)


def main(argv: list[str] | None = None) -> dict:
    cfg = cli.parse_config(DDPMJobConfig, argv, SMOKE, __doc__)
    data.load_tensors("mnist", "test")  # fail fast, on the driver, when the data is missing
    t0 = time.time()
    summary = driver.fit(train_func, cfg, metric="val_loss", mode="min",
                         finish=lambda result: finish.finalize(
                             result, cfg, family="ddpm", metric="val_loss", mode="min",
                             render=render))
    if not cfg.quiet:
        print(f"wall time {time.time() - t0:.1f}s; artifacts in {Path(summary['checkpoint']).parent}")
    return summary


if __name__ == "__main__":
    cli.run_cli(main)
