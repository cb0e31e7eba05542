"""Adversarially train the pinned MNIST CNN's architecture with Ray Train: the robust baseline.

    python jobs/train_robust.py --eps 0.3 --attack fgsm --epochs 15
    python jobs/train_robust.py --attack pgd --steps 10 --epochs 4 --name robust-pgd

Each step trains on the inner attack's images (hw4/adversarial_training.py: PGD, or FGSM with a
random start), with eps ramped up over the first ``--eps-ramp-epochs``. After every epoch the
validation subset is scored clean and under PGD-20 at ``--eps``; the checkpoint with the best
PGD-20 accuracy is registered as the ``robust_mnist`` family, beside the DDPM and VAE, where
``jobs/evaluate.py`` and Serve's ``/adversarial`` find it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hw4 import adversarial, adversarial_training, epochs, viz
from hw4.checkpoint import load_checkpoint, load_state, save_checkpoint, unwrap
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from jobs import cli, driver, finish, worker
from jobs.cli import opt

FAMILY = "robust_mnist"  # its registry entry
METRIC = "val_pgd_accuracy"
_CNN = ClassifierConfig()


@dataclass
class RobustJobConfig(cli.RunOptions):
    name: str = opt("robust-mnist", "run name; the same name resumes")
    train_subset: int | None = opt(None, "train on this many images")
    val_subset: int | None = opt(1000, "score each epoch on this many test images")
    eps: float = opt(0.3, "L-inf radius trained for and scored at, in [0, 1] pixel units")
    attack: Literal["fgsm", "pgd"] = opt("fgsm", "inner attack: FGSM with a random start, or PGD")
    steps: int = opt(10, "PGD steps of the inner attack (FGSM: 1)")
    step_size: float | None = opt(None, "inner step size (default: FGSM 1.25 eps, PGD 2.5 eps/steps)")
    eps_ramp_epochs: float = opt(2.0, "epochs over which eps ramps up from 0")
    epochs: int = opt(15, "epochs")
    batch_size: int = opt(100, "global batch size (split over workers)")
    lr: float = opt(1e-3, "Adam learning rate (cosine-decayed to 0 over the run)")
    eval_steps: int = opt(20, "PGD steps of the per-epoch robust score")
    channels: int = opt(_CNN.channels, "conv width of the CNN")
    feature_dim: int = opt(_CNN.feature_dim, "hidden width of the CNN's head")
    dropout: float = opt(_CNN.dropout, "dropout before the CNN's head")

    def validate(self) -> None:
        super().validate()
        c = cli.check
        c(0 < self.eps <= 1, f"--eps must be in (0, 1], got {self.eps}")
        c(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        c(self.step_size is None or self.step_size > 0, "--step-size must be > 0")
        c(self.eps_ramp_epochs >= 0, "--eps-ramp-epochs must be >= 0")
        c(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        c(self.batch_size >= self.num_workers, "--batch-size must be at least --num-workers")
        c(self.lr > 0, "--lr must be > 0")
        c(self.eval_steps >= 1, "--eval-steps must be >= 1")

    def classifier(self) -> ClassifierConfig:
        return ClassifierConfig(channels=self.channels, feature_dim=self.feature_dim,
                                dropout=self.dropout)


SMOKE = dict(train_subset=256, val_subset=64, epochs=2, batch_size=32, channels=4, feature_dim=16,
             eps_ramp_epochs=0.5, eval_steps=2)


def robust_scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: RobustJobConfig,
                  seed: int) -> dict[str, float]:
    """Clean accuracy and PGD accuracy at ``cfg.eps`` on the validation images."""
    model.eval()
    curve = adversarial.robustness_curve(model, x, y, [cfg.eps], "pgd", steps=cfg.eval_steps,
                                         generator=torch.Generator().manual_seed(seed))
    return {"val_accuracy": adversarial.accuracy(model, x, y),
            METRIC: curve[cfg.eps]["accuracy"]}


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = RobustJobConfig(**config)
    w = worker.setup_worker(cfg, "mnist", val_batch=1000)
    val_x, val_y = (t.to(w.device) for t in w.val_loader.dataset.tensors)
    net = ConvClassifier(cfg.classifier()).to(w.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    total = cfg.epochs * len(w.loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start_epoch, step_count, history = 0, 0, []
    state = worker.restore_state(w.device)
    if state is not None:
        load_state(net, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["extra"]["lr_schedule"])
        start_epoch, step_count, history = state["epoch"] + 1, state["step"], state["extra"]["history"]
    model = worker.prepare_model(net)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + w.rank)  # the attack's noise is drawn on the CPU
    ramp = round(cfg.eps_ramp_epochs * len(w.loader))

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal step_count
        eps = adversarial_training.eps_schedule(step_count, ramp, cfg.eps)
        out = adversarial_training.adversarial_train_step(
            model, x, y, optimizer, eps, attack=cfg.attack, steps=cfg.steps,
            step_size=cfg.step_size, generator=gen)
        schedule.step()
        step_count += 1
        return out

    for epoch in w.epochs(start_epoch, cfg.epochs):
        t0 = time.time()
        tr = epochs.run_epoch(w.loader, step, device=w.device, desc=f"epoch {epoch}",
                             progress=worker.progress_bar(cfg.quiet), log_every=worker.LOG_EVERY,
                             on_log=w.progress("adv-train", epoch, start_epoch, cfg.epochs))
        train_s = time.time() - t0
        scores = robust_scores(unwrap(model), val_x, val_y, cfg, cfg.seed)
        metrics = {"epoch": epoch, "step": step_count, "train_loss": tr["loss"],
                   "train_adv_accuracy": tr["accuracy"], **scores, "epoch_time_s": train_s,
                   "eps": adversarial_training.eps_schedule(step_count, ramp, cfg.eps),
                   "resumed_from_epoch": start_epoch}
        history.append(metrics)
        if w.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, float | int) and k not in ("epoch", "step"):
                    w.writer.add_scalar(k, v, epoch)
            w.writer.flush()
        save = functools.partial(
            save_checkpoint, kind="classifier", config=dataclasses.asdict(cfg),
            model_config=dataclasses.asdict(cfg.classifier()), model=model, optimizer=optimizer,
            step=step_count, epoch=epoch, metrics=metrics,
            extra={"history": list(history), "lr_schedule": schedule.state_dict()})
        worker.report(metrics, save, cfg)
    w.close()


def plot_history(history: list[dict], eps: float, out: Path) -> None:
    """training_curve.png: validation accuracy, clean and under PGD at eps, after every epoch."""
    epoch_numbers = [h["epoch"] + 1 for h in history]
    minutes = [sum(h["epoch_time_s"] for h in history[:i + 1]) / 60 for i in range(len(history))]
    viz.line_plot({"clean": (epoch_numbers, [h["val_accuracy"] for h in history]),
                   f"PGD-20 at eps {eps:g}": (epoch_numbers, [h[METRIC] for h in history])}, out,
                  xlabel="epoch", ylabel="validation accuracy (1,000 test images)",
                  title=f"adversarial training, {minutes[-1]:.0f} min of training in all",
                  point_labels={"clean": [f"{m:.0f} min" for m in minutes]})


def render(state: dict, out: Path) -> None:
    """adversarial_examples.png: 8 test digits and their PGD-20 images at the trained eps;
    training_curve.png: the run's curve (from the final checkpoint's history)."""
    from hw4 import data

    cfg = cli.config_from_state(RobustJobConfig, state)
    final = out / "final.pt"  # finalize copies it beside the selected one: its history is whole
    history = (load_checkpoint(final) if final.is_file() else state)["extra"].get("history", [])
    if history:
        plot_history(history, cfg.eps, out / "training_curve.png")
    model = load_state(ConvClassifier(cfg.classifier()), state["model"]).eval()
    x, y = data.load_tensors("mnist", "test")
    adv = adversarial.pgd(model, x[:8], y[:8], cfg.eps, steps=cfg.eval_steps,
                          generator=torch.Generator().manual_seed(cfg.seed))
    viz.save_grid(torch.cat([x[:8], adv]), out / "adversarial_examples.png", nrow=8)


def main(argv: list[str] | None = None) -> dict:
    cfg = cli.parse_config(RobustJobConfig, argv, SMOKE, __doc__)
    t0 = time.time()
    summary = driver.fit(train_func, cfg, metric=METRIC, mode="max",
                         finish=lambda result: finish.finalize(
                             result, cfg, family=FAMILY, metric=METRIC, mode="max", render=render))
    if not cfg.quiet:
        print(f"wall time {time.time() - t0:.1f}s; artifacts in {Path(summary['checkpoint']).parent}")
    return summary


if __name__ == "__main__":
    cli.run_cli(main)
