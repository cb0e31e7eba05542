"""Glue shared by the Ray Tune sweeps: each trial drives one Ray Train run of a training job (the
pattern Ray Train V2 wants: a function trainable that fits a ``TorchTrainer`` and forwards its
reports with ``TuneReportCallback``), an interrupted sweep resumes with ``Tuner.restore``, and
the end writes the results table and registers the best trial's checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from hw4.atomic_files import write_bytes_atomic, write_json_atomic
from jobs import common
from jobs.common import check, opt


@dataclass
class SweepOptions:
    name: str = opt("sweep", "sweep name; rerunning the same name resumes it")
    storage_path: str = opt("results", "where trials, tables and the registry live")
    num_samples: int = opt(1, "samples of the search space (each grid point this many times)")
    max_concurrent: int = opt(1, "trials running at once")
    num_workers: int = opt(1, "Ray Train workers per trial")
    cpus_per_worker: int | None = opt(None, "CPUs per Train worker (default: the cluster's "
                                            "CPUs shared among concurrent trials)")
    gpu: bool | None = opt(None, "use GPUs; default: when the cluster has them")
    seed: int = opt(0, "seed of every trial")
    smoke_test: bool = opt(False, "tiny trials (for tests)")
    register: bool | None = opt(None, "register the best trial when it beats the registry's "
                                      "entry by the same metric (default: yes, but not for "
                                      "--smoke-test)")
    promote: bool = opt(False, "replace the registry's entry even when it was ranked by another "
                               "metric")

    def validate(self) -> None:
        check(self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}")
        check(self.max_concurrent >= 1, f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        check(self.num_workers >= 1, f"--num-workers must be >= 1, got {self.num_workers}")
        check(self.cpus_per_worker is None or self.cpus_per_worker >= 1,
              "--cpus-per-worker must be >= 1")


@dataclass
class TrialSpec:
    """What a trial needs to run one training job (picklable: shipped to the trial actor)."""

    job_cls: type
    train_func: Callable[[dict], None]
    render: Callable[[dict, Path], None]
    base: dict  # the job config every trial starts from
    sweep: str
    storage_path: str


def run_trial(config: dict, spec: TrialSpec) -> None:
    """Tune's trainable: one training run with this trial's parameters, artifacts included."""
    trial_id = tune.get_context().get_trial_id()
    job = spec.job_cls(**{**spec.base, **config, "name": f"{spec.sweep}-runs/{trial_id}",
                          "storage_path": spec.storage_path})
    job.validate()
    result = common.fit(spec.train_func, job, metric="val_loss", mode="min",
                        callbacks=[TuneReportCallback()])
    # the final checkpoint is the one whose metrics Tune saw last
    common.finalize(result, job, family="", metric="val_loss", mode="min", render=spec.render,
                    select="final", register=False)


def sweep(spec: TrialSpec, opts: SweepOptions, param_space: dict, *, metric: str,
          mode: Literal["min", "max"], scheduler: Any = None) -> tune.ResultGrid:
    """Run (or resume) the sweep ``opts.name`` under ``opts.storage_path``."""
    common.init_ray()
    if opts.cpus_per_worker is None:  # each trial's driver holds 0.1 CPU besides its workers
        total = common.default_cpus_per_worker(1)
        spare = total - 0.1 * opts.max_concurrent
        opts.cpus_per_worker = max(1, int(spare // (opts.max_concurrent * opts.num_workers)))
        spec.base["cpus_per_worker"] = opts.cpus_per_worker
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": 0.1})
    path = Path(opts.storage_path) / opts.name
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming the sweep in {path} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=opts.num_samples,
                                        max_concurrent_trials=opts.max_concurrent,
                                        scheduler=scheduler),
            run_config=tune.RunConfig(name=opts.name, storage_path=opts.storage_path))
    return tuner.fit()


def trial_rows(grid: tune.ResultGrid, params: list[str], metrics: list[str],
               storage_path: str, sweep_name: str) -> list[dict]:
    """One row per trial: its parameters, its last reported metrics, its artifact if any."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id")
        artifact = Path(storage_path) / f"{sweep_name}-runs" / str(trial_id) / "artifacts" / \
            "checkpoint.pt"
        rows.append({**{p: r.config.get(p) for p in params},
                     **{k: m.get(k) for k in metrics},
                     "epochs": m.get("training_iteration"), "trial_id": trial_id,
                     "status": "error" if r.error else ("done" if artifact.is_file() else "stopped"),
                     "checkpoint": str(artifact) if artifact.is_file() else None})
    return rows


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv and results.md (numbers to 4 significant digits in the Markdown)."""
    cols = [c for c in rows[0] if c != "checkpoint"] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "results.csv", buf.getvalue().encode())

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    write_bytes_atomic(out / "results.md", ("\n".join(lines) + "\n").encode())


def register_best(rows: list[dict], *, family: str, metric: str, mode: Literal["min", "max"],
                  opts: SweepOptions, out: Path) -> dict | None:
    """Write the best finished trial (by ``metric``) to ``best.json`` and offer it to the
    registry, which takes it when it beats the entry by the same metric (or ``--promote``)."""
    done = [r for r in rows if r["checkpoint"] and r.get(metric) is not None]
    if not done:
        print("no finished trial has a checkpoint; nothing registered")
        return None
    best = (min if mode == "min" else max)(done, key=lambda r: r[metric])
    best["registered"] = common.should_register(opts) and common.register_checkpoint(
        opts.storage_path, family, checkpoint=best["checkpoint"], metric=metric, value=best[metric],
        mode=mode, config=best, source=str(Path(opts.storage_path) / opts.name), promote=opts.promote)
    write_json_atomic(out / "best.json", best)
    print(json.dumps({"best": best}, indent=2, default=str))
    return best


def options_dict(opts: SweepOptions) -> dict:
    """The RunOptions fields a trial inherits from the sweep's options."""
    keep = ("num_workers", "cpus_per_worker", "gpu", "seed")
    return {k: v for k, v in dataclasses.asdict(opts).items() if k in keep}
