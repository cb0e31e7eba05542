"""Sweep the DDPM's noise schedule, number of timesteps and prediction target with Ray Tune.

    python jobs/tune_ddpm_schedule.py --schedules linear cosine sigmoid --timesteps 1000 \
        --predictions eps v --epochs 4 --fid-samples 500

Trials are compared by sample quality: the FID of DDIM samples (pinned MNIST features) computed
after every epoch; ASHA stops trials whose intermediate FID is poor. Writes
``<storage>/<name>/results.{csv,md}``, ``fid_by_trial.png`` and ``best.json``, and registers the
best finished trial's checkpoint for Serve. Rerunning the same --name resumes the sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from hw4 import viz
from hw4.diffusion import PREDICTIONS, SCHEDULES
from jobs import common, sweep, train_ddpm
from jobs.common import check, opt

METRICS = ["fid", "fid_confident", "val_loss"]


@dataclass
class DDPMSweepConfig(sweep.SweepOptions):
    name: str = opt("ddpm-schedule-sweep", "sweep name; rerunning the same name resumes it")
    schedules: tuple[str, ...] = opt(SCHEDULES, "noise schedules to try")
    timesteps: tuple[int, ...] = opt((1000,), "numbers of diffusion steps T to try")
    predictions: tuple[str, ...] = opt(("eps",), "network targets to try: eps, x0, v")
    epochs: int = opt(4, "epochs per trial (ASHA's max_t)")
    grace_epochs: int = opt(1, "epochs before ASHA may stop a trial")
    train_subset: int | None = opt(20000, "train on this many MNIST images")
    base_channels: int = opt(train_ddpm.SMALL["base_channels"], "U-Net width of every trial")
    fid_samples: int = opt(500, "DDIM samples per FID")
    sample_steps: int = opt(50, "DDIM steps of the FID samples")

    def validate(self) -> None:
        super().validate()
        bad = sorted(set(self.schedules) - set(SCHEDULES))
        check(len(self.schedules) > 0 and not bad,
              f"--schedules must be among {list(SCHEDULES)}, got {bad or 'none'}")
        bad = sorted(set(self.predictions) - set(PREDICTIONS))
        check(len(self.predictions) > 0 and not bad,
              f"--predictions must be among {list(PREDICTIONS)}, got {bad or 'none'}")
        check(len(self.timesteps) > 0 and all(t >= self.sample_steps for t in self.timesteps),
              f"--timesteps must be >= --sample-steps ({self.sample_steps}), got {list(self.timesteps)}")
        check(self.epochs >= 1 and 1 <= self.grace_epochs <= self.epochs,
              "--epochs must be >= 1 and --grace-epochs in 1..--epochs")
        check(self.fid_samples >= 2, "--fid-samples must be >= 2")

    def param_space(self) -> dict:
        return {"schedule": tune.grid_search(list(self.schedules)),
                "timesteps": tune.grid_search(list(self.timesteps)),
                "prediction": tune.grid_search(list(self.predictions))}


SMOKE = dict(schedules=("linear", "cosine"), timesteps=(50,), epochs=2, train_subset=256,
             fid_samples=32, sample_steps=5)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = common.parse_config(DDPMSweepConfig, argv, SMOKE, __doc__)
    base = dataclasses.asdict(train_ddpm.DDPMJobConfig())
    base.update(train_ddpm.SMOKE if cfg.smoke_test else dict(
        train_ddpm.SMALL, base_channels=cfg.base_channels))
    base.update(epochs=cfg.epochs, train_subset=cfg.train_subset, fid_every=1,
                fid_samples=cfg.fid_samples, sample_steps=cfg.sample_steps,
                sample_every=cfg.epochs, **sweep.options_dict(cfg))
    spec = sweep.TrialSpec(train_ddpm.DDPMJobConfig, train_ddpm.train_func, train_ddpm.render,
                           base, cfg.name, cfg.storage_path)
    # max_t one past the last epoch: ASHA only ever stops weak trials early, and a trial that
    # completes finishes on its own (writing its artifacts) instead of being stopped at max_t
    asha = ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs + 1,
                         grace_period=cfg.grace_epochs, reduction_factor=2)
    grid = sweep.sweep(spec, cfg, cfg.param_space(), metric="fid", mode="min", scheduler=asha)
    out = Path(cfg.storage_path) / cfg.name
    rows = sweep.trial_rows(grid, ["schedule", "timesteps", "prediction"], METRICS,
                            cfg.storage_path, cfg.name)
    rows.sort(key=lambda r: (r["fid"] is None, r["fid"] or 0.0))
    sweep.write_tables(rows, out)
    curves = {}
    for r in grid:  # every report of every trial, including the ones ASHA stopped
        df = r.metrics_dataframe
        if df is not None and "fid" in df:
            df = df.dropna(subset=["fid"])
            label = f"{r.config['schedule']} T={r.config['timesteps']} {r.config['prediction']}"
            curves[label] = ((df["epoch"] + 1).tolist(), df["fid"].tolist())
    viz.line_plot(curves, out / "fid_by_trial.png", xlabel="epoch", ylabel="FID (DDIM samples)",
                  title="DDPM schedule sweep: FID after each epoch (ASHA stops the weak)")
    sweep.register_best(rows, family="ddpm", metric="fid", mode="min", opts=cfg, out=out)
    print(f"table, plot and best trial in {out}")
    return rows


if __name__ == "__main__":
    common.run_cli(main)
