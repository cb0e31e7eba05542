"""Train the autoencoder or VAE on Fashion-MNIST with Ray Train, then classifiers on its latent.

    python jobs/train_vae.py --model vae --beta 1 --latent-dim 16 --epochs 10

Phase 1 trains the AE/VAE; phase 2 trains a linear probe on the frozen encoder and a fine-tuned
copy of the encoder with its own head. Without RAY_ADDRESS a local Ray is started.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.tensorboard import SummaryWriter

from hw4 import data, epochs, objectives, train, viz
from hw4.checkpoint import load_state, save_checkpoint, unwrap
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    LatentClassifier,
    LatentClassifierConfig,
)
from jobs import cli, driver, finish, worker
from jobs.cli import opt

_AE = AutoencoderConfig()


@dataclass
class VAEJobConfig(cli.RunOptions):
    name: str = opt("vae", "run name; the same name resumes")
    train_subset: int | None = opt(None, "train on this many images")
    val_subset: int | None = opt(None, "evaluate on this many test images")
    model: Literal["ae", "vae"] = opt("vae", "autoencoder or VAE")
    # the model's own fields, with its defaults (saved apart as the checkpoint's model_config)
    latent_dim: int = opt(_AE.latent_dim, "latent size")
    channels: int = opt(_AE.channels, "conv width")
    hidden: int = opt(_AE.hidden, "fully connected width")
    beta: float = opt(1.0, "weight of the KL term")
    reconstruction: Literal["bernoulli", "gaussian"] = opt("bernoulli", "decoder likelihood")
    kl_warmup_steps: int = opt(0, "steps of linear KL warm-up (0: none)")
    free_bits: float = opt(0.0, "nats per latent dim free of KL penalty")
    epochs: int = opt(10, "AE/VAE epochs")
    classifier_epochs: int = opt(5, "epochs of the latent classifiers")
    batch_size: int = opt(128, "global batch size (split over workers)")
    lr: float = opt(1e-3, "Adam learning rate")
    classifier_lr: float = opt(1e-3, "Adam learning rate of the classifiers")
    compile: bool = opt(False, "torch.compile the autoencoder (pays off on GPUs; slow to start)")

    def validate(self) -> None:
        super().validate()
        c = cli.check
        c(self.beta >= 0, f"--beta must be >= 0, got {self.beta}")
        c(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        c(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        c(self.classifier_epochs >= 0, "--classifier-epochs must be >= 0")
        c(self.batch_size >= self.num_workers, "--batch-size must be at least --num-workers")
        c(self.lr > 0 and self.classifier_lr > 0, "learning rates must be positive")
        c(self.free_bits >= 0, f"--free-bits must be >= 0, got {self.free_bits}")

    def autoencoder(self) -> AutoencoderConfig:
        return AutoencoderConfig(latent_dim=self.latent_dim, variational=self.model == "vae",
                                 channels=self.channels, hidden=self.hidden)


SMOKE = dict(train_subset=256, val_subset=128, epochs=2, classifier_epochs=1, batch_size=32,
             channels=8, hidden=32, latent_dim=4)


class Classifiers:
    """The two latent classifiers: a probe on the VAE's frozen encoder, and a fine-tuned copy."""

    def __init__(self, vae: Autoencoder, cfg: VAEJobConfig):
        d = cfg.latent_dim
        self.probe = LatentClassifier(vae.encoder, d, LatentClassifierConfig(mode="probe"))
        self.finetune = LatentClassifier(copy.deepcopy(vae.encoder), d,
                                         LatentClassifierConfig(mode="finetune"))
        self.opts = {name: torch.optim.Adam([p for p in m.parameters() if p.requires_grad],
                                            lr=cfg.classifier_lr)
                     for name, m in self.items()}

    def items(self) -> list[tuple[str, LatentClassifier]]:
        return [("probe", self.probe), ("finetune", self.finetune)]

    def state_dict(self) -> dict:
        return {"probe_head": self.probe.head.state_dict(),
                "finetune": self.finetune.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.opts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.probe.head.load_state_dict(state["probe_head"])
        self.finetune.load_state_dict(state["finetune"])
        for k, o in self.opts.items():
            o.load_state_dict(state["optimizers"][k])

    def to(self, device: torch.device) -> Classifiers:
        self.probe.to(device)
        self.finetune.to(device)
        return self


def tensorboard_images(writer: SummaryWriter, vae: Autoencoder, x: torch.Tensor, step: int) -> None:
    vae.eval()
    writer.add_image("reconstructions", viz.make_grid(viz.pairs(x, vae.reconstruct(x)).cpu()), step)
    writer.add_image("traversal", viz.make_grid(traversal(vae, x[:1]).cpu(), nrow=9), step)


def traversal(vae: Autoencoder, x: torch.Tensor, rows: int = 8) -> torch.Tensor:
    """Traverse the ``rows`` latent dims with the largest posterior-mean variance (most used)."""
    mu = vae.encoder(x)[0] if x.shape[0] > 1 else None
    dims = list(range(min(rows, vae.config.latent_dim)))
    if mu is not None:
        dims = mu.var(0).argsort(descending=True)[:rows].tolist()
    return vae.traverse(x[:1], dims, torch.linspace(-3, 3, 9))


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = VAEJobConfig(**config)
    w = worker.setup_worker(cfg, "fashion_mnist", val_batch=512)
    fixed = w.val_loader.dataset.tensors[0][:16].to(w.device)
    vae = Autoencoder(cfg.autoencoder()).to(w.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr, fused=w.device.type == "cuda")
    start_epoch, step_count, history, clf_state = 0, 0, [], None
    state = worker.restore_state(w.device)
    if state is not None:
        load_state(vae, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step_count = state["epoch"] + 1, state["step"]
        history, clf_state = state["extra"]["history"], state["extra"].get("classifiers")
    model = worker.prepare_model(vae)
    forward = torch.compile(model) if cfg.compile else model
    gen = w.generator()
    classifiers = None

    def vae_step(x: torch.Tensor, _y: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal step_count
        beta = objectives.kl_warmup(step_count, cfg.kl_warmup_steps, cfg.beta)
        step_count += 1
        return train.autoencoder_train_step(forward, x, optimizer, beta=beta, generator=gen,
                                            reconstruction=cfg.reconstruction,
                                            free_bits=cfg.free_bits)

    def classifier_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, clf in classifiers.items():
            m = train.classifier_train_step(clf, x, y, classifiers.opts[name])
            out.update({f"{name}_train_{k}": v for k, v in m.items()})
        out["loss"] = out["finetune_train_loss"]
        return out

    for epoch in w.epochs(start_epoch, cfg.epochs + cfg.classifier_epochs):
        t0 = time.time()
        if epoch < cfg.epochs:  # phase 1: the autoencoder itself
            tr = epochs.run_epoch(w.loader, vae_step, device=w.device, desc=f"epoch {epoch}",
                                 progress=worker.progress_bar(cfg.quiet), log_every=worker.LOG_EVERY,
                                 on_log=w.progress(cfg.model.upper(), epoch, start_epoch, cfg.epochs))
        else:  # phase 2: classifiers on the latent of the trained (now fixed) encoder
            if classifiers is None:
                classifiers = Classifiers(unwrap(model), cfg).to(w.device)
                if clf_state is not None:
                    classifiers.load_state_dict(clf_state)
            tr = epochs.run_epoch(w.loader, classifier_step, device=w.device,
                                 desc=f"classifiers {epoch}", progress=worker.progress_bar(cfg.quiet),
                                 log_every=worker.LOG_EVERY,
                                 on_log=w.progress("classifiers", epoch, max(start_epoch, cfg.epochs),
                                                   cfg.epochs + cfg.classifier_epochs))
        val = train.evaluate_autoencoder(unwrap(model), w.val_loader, w.device, cfg.reconstruction)
        metrics = {"epoch": epoch, "step": step_count, "phase": "vae" if epoch < cfg.epochs
                   else "classifier", "train_loss": tr["loss"],
                   **{f"val_{k}": v for k, v in val.items()}, "epoch_time_s": time.time() - t0,
                   "resumed_from_epoch": start_epoch}
        if classifiers is not None:
            for name, clf in classifiers.items():
                metrics[f"{name}_accuracy"] = train.evaluate_classifier(clf, w.val_loader,
                                                                        w.device)["accuracy"]
        history.append(metrics)
        if w.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, float | int) and k not in ("epoch", "step"):
                    w.writer.add_scalar(k, v, epoch)
            tensorboard_images(w.writer, unwrap(model), fixed, epoch)
            w.writer.flush()
        extra = {"history": list(history),
                 "classifiers": classifiers.state_dict() if classifiers else clf_state}
        save = functools.partial(
            save_checkpoint, kind="autoencoder", config=dataclasses.asdict(cfg),
            model_config=dataclasses.asdict(cfg.autoencoder()), model=model, optimizer=optimizer,
            step=step_count, epoch=epoch, metrics=metrics, extra=extra)
        worker.report(metrics, save, cfg)
    w.close()


def render(state: dict, out: Path) -> None:
    """reconstructions.png, traversal.png and (VAE) samples.png from the checkpoint."""
    cfg = cli.config_from_state(VAEJobConfig, state)
    vae = load_state(Autoencoder(cfg.autoencoder()), state["model"]).eval()
    x = data.load_dataset("fashion_mnist", "test", subset=512, seed=cfg.seed).tensors[0]
    viz.save_grid(viz.pairs(x[:32], vae.reconstruct(x[:32])), out / "reconstructions.png")
    with torch.no_grad():
        viz.save_grid(traversal(vae, x), out / "traversal.png", nrow=9)
    if cfg.model == "vae":
        viz.save_grid(vae.sample(64, torch.Generator().manual_seed(cfg.seed)), out / "samples.png")


def main(argv: list[str] | None = None) -> dict:
    cfg = cli.parse_config(VAEJobConfig, argv, SMOKE, __doc__)
    data.load_tensors("fashion_mnist", "test")  # fail fast, on the driver, when data is missing
    t0 = time.time()
    # the final checkpoint: its classifier heads were trained on exactly this encoder. A plain
    # autoencoder registers as "ae": its loss has no KL term, so by val_loss it would always
    # "beat" the VAE that Serve serves from the "vae" entry
    summary = driver.fit(train_func, cfg, metric="val_loss", mode="min",
                         finish=lambda result: finish.finalize(
                             result, cfg, family=cfg.model, metric="val_loss", mode="min",
                             render=render, select="final"))
    if not cfg.quiet:
        print(f"wall time {time.time() - t0:.1f}s; artifacts in {Path(summary['checkpoint']).parent}")
    return summary


if __name__ == "__main__":
    cli.run_cli(main)
