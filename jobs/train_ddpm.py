"""Train the U-Net DDPM on MNIST with Ray Train.

    python jobs/train_ddpm.py --epochs 20 --num-workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_ddpm.py

Without RAY_ADDRESS a local Ray is started. Rerunning with the same --name resumes the run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from hw4 import data, diffusion, evaluation, train, viz
from hw4.checkpoint import load_state, save_checkpoint, unwrap
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig
from hw4.trained import unet_from_state
from jobs import common
from jobs.common import opt


@dataclass
class DDPMJobConfig(common.RunOptions):
    name: str = opt("ddpm", "run name; the same name resumes")
    train_subset: int | None = opt(None, "train on this many MNIST images")
    val_subset: int = opt(2000, "held-out images for the validation loss")
    base_channels: int = opt(32, "U-Net width")
    channel_mults: tuple[int, ...] = opt((1, 2, 2), "width per level")
    num_res_blocks: int = opt(1, "ResNet blocks per level")
    attention_resolutions: tuple[int, ...] = opt((4,), "downsample factors that attend")
    num_heads: int = opt(4, "attention heads")
    dropout: float = opt(0.1, "dropout in ResNet blocks")
    groups: int = opt(8, "GroupNorm groups")
    schedule: Literal["linear", "cosine", "sigmoid"] = opt("linear", "noise schedule")
    timesteps: int = opt(1000, "diffusion steps T")
    prediction: Literal["eps", "x0", "v"] = opt("eps", "network target")
    epochs: int = opt(20, "passes over the training set")
    batch_size: int = opt(128, "global batch size (split over workers)")
    lr: float = opt(2e-4, "AdamW learning rate")
    warmup_steps: int = opt(500, "linear LR warm-up steps")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    ema_decay: float = opt(0.999, "EMA decay of the weights")
    sample_every: int = opt(5, "epochs between TensorBoard sample grids")
    num_samples: int = opt(64, "images in samples.png")
    sample_steps: int = opt(50, "DDIM steps for sample grids and FID")
    fid_every: int = opt(0, "epochs between FIDs of DDIM samples (0: none; sweeps use it)")
    fid_samples: int = opt(500, "samples (and real images) per FID")

    def validate(self) -> None:
        super().validate()
        c = common.check
        c(self.timesteps >= 2, f"--timesteps must be >= 2, got {self.timesteps}")
        c(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        c(self.batch_size >= self.num_workers, "--batch-size must be at least --num-workers")
        c(self.lr > 0, f"--lr must be positive, got {self.lr}")
        c(0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        c(1 <= self.sample_steps <= self.timesteps, "--sample-steps must be in 1..--timesteps")
        c(len(self.channel_mults) >= 1, "--channel-mults needs at least one level")
        c(self.fid_every >= 0 and self.fid_samples >= 2, "--fid-every >= 0, --fid-samples >= 2")
        widths = [self.base_channels * m for m in self.channel_mults] + [self.base_channels]
        c(all(w % self.groups == 0 and w % self.num_heads == 0 for w in widths),
          f"--groups {self.groups} and --num-heads {self.num_heads} must divide every width {widths}")

    def unet(self) -> UNetConfig:
        return UNetConfig(base_channels=self.base_channels, channel_mults=self.channel_mults,
                          num_res_blocks=self.num_res_blocks,
                          attention_resolutions=self.attention_resolutions,
                          num_heads=self.num_heads, dropout=self.dropout, groups=self.groups)


SMOKE = dict(train_subset=256, val_subset=64, base_channels=8, channel_mults=(1, 2),
             attention_resolutions=(2,), num_heads=2, groups=4, timesteps=50, epochs=2,
             batch_size=32, warmup_steps=2, num_samples=8, sample_steps=5, sample_every=1)


def render_samples(model: torch.nn.Module, cfg: DDPMJobConfig, n: int, seed: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """DDIM samples mapped to [0, 1]: (n, 1, 28, 28)."""
    sched = DiffusionSchedule.named(cfg.schedule, cfg.timesteps)
    x = diffusion.sample(model.eval(), sched, (n, 1, 28, 28), method="ddim", steps=cfg.sample_steps,
                         prediction=cfg.prediction, generator=torch.Generator().manual_seed(seed),
                         device=device)
    return (x + 1) / 2


def sample_fid(model: torch.nn.Module, cfg: DDPMJobConfig, device: torch.device) -> dict:
    """FID of ``fid_samples`` DDIM samples against as many MNIST train images (pinned features)."""
    images = render_samples(model, cfg, cfg.fid_samples, cfg.seed, device).cpu()
    ref = evaluation.reference_stats("mnist", cfg.fid_samples,
                                     Path(cfg.storage_path) / "eval" / "fid_stats")
    q = evaluation.sample_quality(images, "mnist", ref)
    return {"fid": q["fid"], "fid_confident": q["confident_fraction"]}


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = DDPMJobConfig(**config)
    rank = common.world_rank()
    torch.manual_seed(cfg.seed + rank)
    common.set_worker_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    train_set = data.load_dataset("mnist", "train", normalization="symmetric",
                                  subset=cfg.train_subset, seed=cfg.seed)
    val_set = data.load_dataset("mnist", "test", normalization="symmetric",
                                subset=cfg.val_subset, seed=cfg.seed)
    per_worker = cfg.batch_size // ray.train.get_context().get_world_size()
    loader = ray.train.torch.prepare_data_loader(
        DataLoader(train_set, batch_size=per_worker, shuffle=True, drop_last=True))
    val_loader = DataLoader(val_set, batch_size=256)

    model = UNet(cfg.unet())
    ema = train.EMA(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, train.warmup_lambda(cfg.warmup_steps))
    start_epoch, history = 0, []
    state = common.restore_state()
    if state is not None:  # resume: a restarted worker group or a rerun with the same name
        load_state(model, state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["extra"]["lr_scheduler"])
        start_epoch, history = state["epoch"] + 1, state["extra"]["history"]
    model = common.prepare_model(model)
    ema_model = copy.deepcopy(unwrap(model))
    schedule = DiffusionSchedule.named(cfg.schedule, cfg.timesteps).to(device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    writer = SummaryWriter(str(common.run_dir(cfg.storage_path, cfg.name) / "tensorboard")) \
        if rank == 0 else None
    marker = common.run_dir(cfg.storage_path, cfg.name) / "fault_injected"

    for epoch in range(start_epoch, cfg.epochs):
        common.maybe_inject_fault(cfg.inject_fault, cfg.fault_epoch, epoch, marker)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0 = time.time()

        def step(x, _y):
            metrics = train.ddpm_step(model, schedule, x, optimizer, prediction=cfg.prediction,
                                      ema=ema, grad_clip=cfg.grad_clip, autocast_dtype=autocast,
                                      generator=gen)
            lr_sched.step()
            return metrics

        tr = train.run_epoch(loader, step, device=device, desc=f"epoch {epoch}",
                             progress=common.progress_bar())
        ema.copy_to(ema_model)
        val = train.evaluate_ddpm(ema_model, schedule, val_loader, prediction=cfg.prediction,
                                  device=device, seed=cfg.seed)
        metrics = {"epoch": epoch, "step": int(lr_sched.last_epoch), "train_loss": tr["loss"],
                   "grad_norm": tr["grad_norm"], "val_loss": val["loss"],
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": time.time() - t0,
                   "resumed_from_epoch": start_epoch}
        fid_epoch = cfg.fid_every and ((epoch + 1) % cfg.fid_every == 0 or epoch + 1 == cfg.epochs)
        if fid_epoch and rank == 0:  # Tune reads rank 0's report
            metrics.update(sample_fid(ema_model, cfg, device))
        history.append(metrics)
        if writer is not None:
            for k in ("train_loss", "val_loss", "grad_norm", "lr", "epoch_time_s", "fid"):
                if k not in metrics:
                    continue
                writer.add_scalar(k, metrics[k], metrics["step"])
            if (epoch + 1) % cfg.sample_every == 0 or epoch + 1 == cfg.epochs:
                grid = render_samples(ema_model, cfg, 16, cfg.seed, device)
                writer.add_image("samples_ema", make_grid(grid.cpu(), nrow=4), metrics["step"])
            writer.flush()

        def save(path: Path, metrics: dict = metrics, epoch: int = epoch) -> None:
            save_checkpoint(path, kind="unet", config=dataclasses.asdict(cfg), model=model,
                            ema=ema.state_dict(), optimizer=optimizer, step=metrics["step"],
                            epoch=epoch, metrics=metrics,
                            extra={"lr_scheduler": lr_sched.state_dict(), "history": history})

        common.report(metrics, save, cfg)
    if writer is not None:
        writer.close()


def render(state: dict, out: Path) -> None:
    """samples.png from the EMA weights of the best checkpoint."""
    cfg = common.config_from_state(DDPMJobConfig, state)
    model = unet_from_state(state)
    viz.save_grid(render_samples(model, cfg, cfg.num_samples, cfg.seed), out / "samples.png")


def main(argv: list[str] | None = None) -> dict:
    cfg = common.parse_config(DDPMJobConfig, argv, SMOKE, __doc__)
    data.load_tensors("mnist", "test")  # fail fast, on the driver, when the data is missing
    t0 = time.time()
    result = common.fit(train_func, cfg, metric="val_loss", mode="min")
    summary = common.finalize(result, cfg, kind="ddpm", metric="val_loss", mode="min",
                              render=render)
    print(f"wall time {time.time() - t0:.1f}s; artifacts in {Path(summary['checkpoint']).parent}")
    return summary


if __name__ == "__main__":
    common.run_cli(main)
