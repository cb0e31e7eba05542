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
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from hw4 import data, epochs, evaluation, precision, samplers, train, viz
from hw4.assets import SECOND_JUDGE
from hw4.checkpoint import load_state, save_checkpoint, unwrap
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet
from hw4.trained import TrainedDDPM, ddpm_from_state
from jobs import cli, driver, finish, worker
from jobs.ddpm_config import NUM_CLASSES, PRESET_HELP, PRESETS, SMOKE, DDPMJobConfig


def sample_request(trained: TrainedDDPM, cfg: DDPMJobConfig, n: int, seed: int,
                   labels: torch.Tensor | None) -> samplers.SampleRequest:
    """What the job's grids and FIDs ask for: the configured sampler; a conditional model's
    ``labels`` guided with ``--guidance`` (an unconditional model gets no labels)."""
    rows = tuple(labels.tolist()) if labels is not None and trained.conditional else None
    return samplers.SampleRequest(n, cfg.sampler, cfg.sample_steps, cfg.sample_eta, seed, rows,
                                  cfg.guidance)


def render_samples(trained: TrainedDDPM, cfg: DDPMJobConfig, n: int, seed: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` samples of the configured sampler; a conditional model draws the digits in order,
    each ``n // 10`` times (one grid row per digit with ``nrow = n // 10``)."""
    req = sample_request(trained, cfg, n, seed, digit_rows(n))
    return trained.draw([req], device=device)[0]  # as Serve draws a request


def digit_rows(n: int) -> torch.Tensor:
    """Labels 0,0,...,1,1,...: ``n // 10`` of each digit (n a multiple of 10), or 0..9 cycling."""
    if n % NUM_CLASSES == 0:
        return torch.arange(NUM_CLASSES).repeat_interleave(n // NUM_CLASSES)
    return evaluation.balanced_labels(0, n, NUM_CLASSES)


def sample_fid(trained: TrainedDDPM, cfg: DDPMJobConfig, device: torch.device) -> dict:
    """FID of ``fid_samples`` samples of the configured sampler against as many MNIST train
    images (pinned features); a conditional model's samples are class-balanced and scored for
    class accuracy too."""
    labels = evaluation.balanced_labels(0, cfg.fid_samples, NUM_CLASSES) if trained.conditional else None
    req = sample_request(trained, cfg, cfg.fid_samples, cfg.seed, labels)
    images = trained.draw([req], device=device)[0]
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
    per_step = epochs.seconds_per_step(lambda: step_on(probe, opt, avg, *next(batches), g),
                                      steps=PROBE_STEPS, device=w.device)
    steps = epochs.steps_in_budget(cfg.train_minutes * 60, per_step, len(w.loader) * cfg.epochs)
    return worker.agree_min(steps, w.device)


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = cli.build(DDPMJobConfig, config)  # the U-Net nested, as dataclasses.asdict gives it
    w = worker.setup_worker(cfg, "mnist", normalization="symmetric")
    model = UNet(cfg.unet()).to(w.device)
    ema = train.EMA(model, cfg.ema_decay, cfg.ema_warmup)
    optimizer = train.make_optimizer(model.parameters(), cfg.lr, w.device)
    schedule = DiffusionSchedule.named(cfg.schedule, cfg.timesteps).to(w.device)
    autocast = precision.autocast_dtype(cfg.precision, w.device, cfg.batch_size // w.world)
    model.channels_last = precision.channels_last(w.device, autocast)
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
        tr = epochs.run_epoch(w.loader, step, device=w.device, desc=f"epoch {epoch}",
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
    cfg = cli.parse_config(DDPMJobConfig, argv, SMOKE, __doc__, PRESETS, PRESET_HELP)
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
