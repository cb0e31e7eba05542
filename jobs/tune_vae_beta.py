"""Sweep the VAE's beta (and latent size) with Ray Tune; every trial is a Ray Train run.

    python jobs/tune_vae_beta.py --betas 0.1 0.5 1 2 5 10 --latent-dims 16 --epochs 5
    python jobs/tune_vae_beta.py --search optuna --beta-range 0.1 10 --num-samples 12

Trials are compared by the test ELBO at beta = 1 (a likelihood bound, comparable across beta);
ASHA stops trials whose ELBO trails at its rungs. The table also has reconstruction, KL, active
units and the latent classifiers' accuracy. Writes ``<storage>/<name>/results.{csv,md}``,
``rate_distortion.png``, ``elbo_by_trial.png`` and ``best.json``, and registers the best
finished trial's checkpoint for Serve. Rerunning the same --name resumes an interrupted sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hw4 import viz
from jobs import cli, sweep, sweep_results, sweep_search, train_vae
from jobs.cli import check, opt

METRICS = ["val_elbo", "val_recon", "val_kl", "val_active_units", "probe_accuracy",
           "finetune_accuracy"]


@dataclass
class VAESweepConfig(sweep.SweepOptions):
    name: str = opt("vae-beta-sweep", "sweep name; rerunning the same name resumes it")
    betas: tuple[float, ...] = opt((0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "beta values (--search grid)")
    beta_range: tuple[float, ...] = opt(
        (0.1, 10.0), "LOW HIGH: beta drawn log-uniformly (--search random or optuna)")
    latent_dims: tuple[int, ...] = opt((16,), "latent sizes (crossed with beta, or drawn)")
    lrs: tuple[float, ...] = opt((1e-3,), "Adam learning rates (crossed with beta, or drawn)")
    epochs: int = opt(5, "VAE epochs per trial")
    classifier_epochs: int = opt(2, "latent-classifier epochs per trial")
    train_subset: int | None = opt(None, "train on this many images")
    val_subset: int | None = opt(None, "evaluate on this many test images")

    def validate(self) -> None:
        super().validate()
        check(len(self.betas) > 0 and all(b > 0 for b in self.betas),
              f"--betas must be positive numbers, got {list(self.betas)}")
        check(len(self.beta_range) == 2, "--beta-range takes two numbers: LOW HIGH")
        lo, hi = self.beta_range
        check(0 < lo < hi, f"--beta-range needs 0 < LOW < HIGH, got {lo} {hi}")
        check(len(self.latent_dims) > 0 and all(d >= 1 for d in self.latent_dims),
              f"--latent-dims must be >= 1, got {list(self.latent_dims)}")
        check(len(self.lrs) > 0 and all(lr > 0 for lr in self.lrs),
              f"--lrs must be positive, got {list(self.lrs)}")
        check(self.epochs >= 1 and self.classifier_epochs >= 0, "--epochs must be >= 1")

    def param_space(self) -> dict:
        grid = self.search == "grid"
        return sweep_search.search_space(
            self.search, {"beta": self.betas, "latent_dim": self.latent_dims, "lr": self.lrs}
            if grid else {"latent_dim": self.latent_dims, "lr": self.lrs},
            {} if grid else {"beta": tuple(self.beta_range)}, log=("beta",))


SMOKE = dict(betas=(0.5, 4.0), beta_range=(0.5, 4.0), epochs=1, classifier_epochs=1,
             train_subset=256, val_subset=128)
TRIAL_SMOKE = dict(train_vae.SMOKE, train_subset=256, val_subset=128, epochs=1,
                   classifier_epochs=1)


def rate_distortion_plot(rows: list[dict], out: Path) -> None:
    series, betas = {}, {}
    for d in sorted({r["latent_dim"] for r in rows}):
        pts = sorted((r["val_kl"], r["val_recon"], r["beta"]) for r in rows
                     if r["latent_dim"] == d and r["val_kl"] is not None)
        series[f"latent {d}"] = ([p[0] for p in pts], [p[1] for p in pts])
        betas[f"latent {d}"] = [f"β={p[2]:.3g}" for p in pts]
    viz.line_plot(series, out / "rate_distortion.png", xlabel="rate: KL(q(z|x) || p(z)) (nats)",
                  ylabel="distortion: reconstruction NLL (nats)", point_labels=betas,
                  title="beta-VAE rate-distortion on Fashion-MNIST (one point per trial)")


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = cli.parse_config(VAESweepConfig, argv, SMOKE, __doc__)
    base = dataclasses.asdict(train_vae.VAEJobConfig())
    base.update(TRIAL_SMOKE if cfg.smoke_test else {})
    base.update({k: getattr(cfg, k) for k in ("epochs", "classifier_epochs", "train_subset",
                                              "val_subset")}, **sweep.options_dict(cfg))
    spec = sweep.TrialSpec(train_vae.VAEJobConfig, train_vae.train_func, train_vae.render, base,
                           cfg.name, cfg.storage_path, metric="val_elbo", mode="max",
                           inject_fault=cfg.inject_fault, fault_epoch=cfg.fault_epoch)
    grid = sweep.sweep(spec, cfg, cfg.param_space(), epochs=cfg.epochs + cfg.classifier_epochs)
    out = Path(cfg.storage_path) / cfg.name
    params = ["beta", "latent_dim", "lr"]
    rows = sweep_results.rank(sweep_results.trial_rows(grid, params, METRICS, cfg), "val_elbo", "max")
    sweep_results.write_tables(rows, out)
    rate_distortion_plot([r for r in rows if r["status"] == "done"], out)
    sweep_results.plot_trials(grid, rows, metric="val_elbo", path=out / "elbo_by_trial.png",
                      label=lambda c: f"β={c['beta']:.3g} z={c['latent_dim']} lr={c['lr']:.2g}",
                      title="VAE sweep: test ELBO after each epoch (ASHA stops the weak)")
    sweep_results.register_best(rows, family="vae", metric="val_elbo", mode="max", opts=cfg, out=out)
    print(sweep_results.summarize(rows))
    print(f"table, plots and best trial in {out}")
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
