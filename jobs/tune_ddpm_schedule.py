"""Sweep the conditional DDPM's recipe with Ray Tune: noise schedule, label-drop probability, T,
prediction target, loss weighting, learning rate and its schedule, EMA decay and U-Net width.

    python jobs/tune_ddpm_schedule.py --schedules linear cosine sigmoid --p-unconds 0.1 0.2 \
        --epochs 6 --fid-samples 500
    python jobs/tune_ddpm_schedule.py --search optuna --p-uncond-range 0.05 0.4 --num-samples 8
    python jobs/tune_ddpm_schedule.py --schedules linear --predictions eps v \
        --loss-weights uniform min-snr --lr-schedules constant cosine --epochs 3
    python jobs/tune_ddpm_schedule.py --train-minutes 10 --scheduler none --widths 16 32 \
        --lrs 1e-3 2e-3 --schedules linear sigmoid --train-subset 50000

--train-minutes gives every trial the same wall-clock instead of the same epochs (a wider U-Net
takes fewer steps): the fair comparison when what is spent is compute.

Trials are compared (--rank-by) by the FID of class-balanced samples at one fixed guidance
weight (--guidance), computed after every epoch, in the second judge's features by default;
the table adds the pinned FID, both classifiers' accuracy and the grey-background share. ASHA
stops trials that trail at its rungs, and only trials that trained all their epochs are ranked.
Writes ``<storage>/<name>/results.{csv,md}``, ``fid_by_trial.png`` and ``best.json``, and
registers the best finished trial's checkpoint for Serve. Rerunning the same --name resumes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hw4 import samplers
from hw4.diffusion import PREDICTIONS, SCHEDULES, ZERO_TERMINAL_SNR
from jobs import cli, ddpm_config, sweep, sweep_results, sweep_search, train_ddpm
from jobs.cli import check, opt

METRICS = ["fid", "second_fid", "class_accuracy", "second_class_accuracy", "background_share",
           "fid_confident", "val_loss", "step", "train_time_s"]
PARAMS = ["schedule", "timesteps", "prediction", "loss_weight", "lr_schedule", "p_uncond", "lr",
          "ema_decay", "base_channels"]
RANKINGS = ("second_fid", "fid")


@dataclass
class DDPMSweepConfig(sweep.SweepOptions):
    name: str = opt("ddpm-schedule-sweep", "sweep name; rerunning the same name resumes it")
    schedules: tuple[str, ...] = opt(tuple(s for s in SCHEDULES if s not in ZERO_TERMINAL_SNR),
                                     "noise schedules to try (a zero-terminal-SNR one needs the "
                                     "v or x0 target)")
    timesteps: tuple[int, ...] = opt((1000,), "numbers of diffusion steps T to try")
    # the defaults are the recipe every preset trains (jobs.ddpm_config.RECIPE)
    predictions: tuple[str, ...] = opt((ddpm_config.RECIPE["prediction"],),
                                       "network targets to try: eps, x0, v")
    loss_weights: tuple[str, ...] = opt((ddpm_config.RECIPE["loss_weight"],),
                                        "loss weightings to try: uniform, min-snr")
    lr_schedules: tuple[str, ...] = opt((ddpm_config.RECIPE["lr_schedule"],),
                                        "learning-rate schedules to try: constant, cosine")
    lrs: tuple[float, ...] = opt((ddpm_config.SMALL["lr"],), "peak learning rates to try")
    ema_decays: tuple[float, ...] = opt((ddpm_config.SMALL["ema_decay"],), "EMA decays to try")
    widths: tuple[int, ...] = opt((ddpm_config.SMALL["base_channels"],),
                                  "U-Net base channels to try (multiples of 8)")
    train_minutes: float | None = opt(None, "train every trial for this wall-clock (needs "
                                            "--scheduler none) instead of --epochs epochs")
    rank_by: str = opt("second_fid", "the metric trials are ranked and stopped by: second_fid "
                                     "(FID in the second judge's features, which sees grey "
                                     "backgrounds and mush the pinned FID misses) or fid")
    p_unconds: tuple[float, ...] = opt((0.1,), "label-drop probabilities (--search grid)")
    p_uncond_range: tuple[float, ...] = opt(
        (), "LOW HIGH: p_uncond drawn uniformly (--search random or optuna; replaces --p-unconds)")
    guidance: float = opt(0.5, "the guidance weight w of every trial's FID samples: trials are "
                               "ranked at one w, and w is tuned afterwards with evaluate.py")
    epochs: int = opt(4, "epochs per trial")
    train_subset: int | None = opt(20000, "train on this many MNIST images")
    fid_samples: int = opt(500, "samples per FID")
    sampler: Literal[samplers.NAMES] = opt(  # type: ignore[valid-type]
        samplers.DEFAULT_SAMPLER, "sampler of the FID samples (hw4.samplers; DDIM with eta 0)")
    sample_steps: int | None = opt(None, "its network calls (default: the sampler's own)")

    def validate(self) -> None:
        super().validate()
        bad = sorted(set(self.schedules) - set(SCHEDULES))
        check(len(self.schedules) > 0 and not bad,
              f"--schedules must be among {list(SCHEDULES)}, got {bad or 'none'}")
        bad = sorted(set(self.predictions) - set(PREDICTIONS))
        check(len(self.predictions) > 0 and not bad,
              f"--predictions must be among {list(PREDICTIONS)}, got {bad or 'none'}")
        check("eps" not in self.predictions or not set(self.schedules) & set(ZERO_TERMINAL_SNR),
              "a zero-terminal-SNR schedule needs --predictions v or x0, not eps")
        calls = self.sample_steps or samplers.kind(self.sampler).default_steps or 1
        check(len(self.timesteps) > 0 and all(t >= calls for t in self.timesteps),
              f"--timesteps must be >= the sampler's steps ({calls}), got {list(self.timesteps)}")
        check(len(self.p_unconds) > 0 and all(0 <= p <= 1 for p in self.p_unconds),
              f"--p-unconds must be in [0, 1], got {list(self.p_unconds)}")
        check(len(self.p_uncond_range) in (0, 2), "--p-uncond-range takes two numbers: LOW HIGH")
        if self.p_uncond_range:
            lo, hi = self.p_uncond_range
            check(0 <= lo < hi <= 1, f"--p-uncond-range needs 0 <= LOW < HIGH <= 1, got {lo} {hi}")
            check(self.search != "grid", "--p-uncond-range needs --search random or optuna")
        check(self.guidance >= 0, f"--guidance must be >= 0, got {self.guidance}")
        check(self.rank_by in RANKINGS, f"--rank-by must be one of {list(RANKINGS)}")
        check(len(self.loss_weights) > 0 and set(self.loss_weights) <= {"uniform", "min-snr"},
              f"--loss-weights must be among uniform, min-snr, got {list(self.loss_weights)}")
        check(len(self.lr_schedules) > 0 and set(self.lr_schedules) <= {"constant", "cosine"},
              f"--lr-schedules must be among constant, cosine, got {list(self.lr_schedules)}")
        check(self.epochs >= 1, "--epochs must be >= 1")
        check(len(self.lrs) > 0 and all(lr > 0 for lr in self.lrs), "--lrs must be positive")
        check(len(self.ema_decays) > 0 and all(0 <= d < 1 for d in self.ema_decays),
              "--ema-decays must be in [0, 1)")
        check(len(self.widths) > 0 and all(w > 0 and w % 8 == 0 for w in self.widths),
              f"--widths must be positive multiples of 8, got {list(self.widths)}")
        if self.train_minutes is not None:
            check(self.train_minutes > 0, "--train-minutes must be positive")
            check(self.scheduler == "none", "--train-minutes needs --scheduler none: ASHA's "
                  "rungs count epochs, which differ between trials of one wall-clock budget")
        check(self.fid_samples >= 2, "--fid-samples must be >= 2")

    def param_space(self) -> dict:
        choices = {"schedule": self.schedules, "timesteps": self.timesteps,
                   "prediction": self.predictions, "loss_weight": self.loss_weights,
                   "lr_schedule": self.lr_schedules, "lr": self.lrs,
                   "ema_decay": self.ema_decays, "base_channels": self.widths}
        if not self.p_uncond_range:
            choices["p_uncond"] = self.p_unconds
        ranges = {"p_uncond": tuple(self.p_uncond_range)} if self.p_uncond_range else {}
        return sweep_search.search_space(self.search, choices, ranges)


SMOKE = dict(schedules=("linear", "cosine"), timesteps=(50,), epochs=2, train_subset=256,
             fid_samples=32, sample_steps=5, widths=(8,))


def label(config: dict) -> str:
    return (f"{config['schedule']} T={config['timesteps']} {config['prediction']} "
            f"{config['loss_weight']} {config['lr_schedule']} lr={config['lr']:g} "
            f"ema={config['ema_decay']:g} width={config['base_channels']} "
            f"p_uncond={config['p_uncond']:.2g}")


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = cli.parse_config(DDPMSweepConfig, argv, SMOKE, __doc__)
    base = dataclasses.asdict(train_ddpm.DDPMJobConfig())
    base.update(ddpm_config.SMOKE if cfg.smoke_test else ddpm_config.SMALL)
    base.update(epochs=cfg.epochs, train_minutes=cfg.train_minutes, train_subset=cfg.train_subset,
                fid_every=1, fid_samples=cfg.fid_samples, sampler=cfg.sampler,
                sample_steps=cfg.sample_steps, guidance=cfg.guidance,
                sample_every=cfg.epochs, conditional=True, **sweep.options_dict(cfg))
    spec = sweep.TrialSpec(train_ddpm.DDPMJobConfig, train_ddpm.train_func, train_ddpm.render,
                           base, cfg.name, cfg.storage_path, metric=cfg.rank_by, mode="min",
                           inject_fault=cfg.inject_fault, fault_epoch=cfg.fault_epoch)
    grid = sweep.sweep(spec, cfg, cfg.param_space(), epochs=cfg.epochs)
    out = Path(cfg.storage_path) / cfg.name
    rows = sweep_results.rank(sweep_results.trial_rows(grid, PARAMS, METRICS, cfg), cfg.rank_by,
                              "min")
    sweep_results.write_tables(rows, out)
    sweep_results.plot_trials(grid, rows, metric=cfg.rank_by, path=out / "fid_by_trial.png",
                              label=label, title=f"DDPM sweep: {cfg.rank_by} at w = "
                                                 f"{cfg.guidance:g} after each epoch")
    sweep_results.register_best(rows, family="ddpm", metric=cfg.rank_by, mode="min", opts=cfg,
                                out=out)
    print(sweep_results.summarize(rows))
    print(f"table, plot and best trial in {out}")
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
