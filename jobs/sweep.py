"""Ray Tune sweeps of the training jobs: options, search, resources, the trial and the sweep.

Each trial drives one Ray Train run of a training job (the pattern Ray Train V2 wants: a function
trainable that fits a ``TorchTrainer`` and forwards its reports to Tune). On top of that:

- a search algorithm: a grid, seeded random draws, or Optuna's TPE (``--search``;
  ``jobs.sweep_search``);
- early stopping: ASHA stops weak trials at rungs of ``epochs_done``; a stopped trial's
  placement group is removed (``ReleasePlacementGroups``), so the next trial gets its CPUs;
- as many trials at once as the cluster fits; a crashed trial restarts from its last checkpoint;
- ``Tuner.restore`` resumes an interrupted sweep (searcher state included); ``jobs.sweep_results``
  writes the table and plot at the end and registers the best finished trial.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from jobs import cli, driver, finish, runs, sweep_search
from jobs.cli import check, opt
from jobs.runs import PLACEMENT_GROUP_FILE

TRIAL_CPU = 0.1  # a trial's own actor only waits on its Train run; Tune refuses 0
ATTEMPTS_FILE = "attempts.log"  # one line per start of a trial (a restart after a crash adds one)


@dataclass
class SweepOptions:
    name: str = opt("sweep", "sweep name; rerunning the same name resumes it")
    storage_path: str = opt("results", "where trials, tables and the registry live")
    search: Literal["grid", "random", "optuna"] = opt(
        "grid", "grid: every combination; random: seeded draws; optuna: TPE, drawing where "
                "the finished trials did well")
    num_samples: int = opt(1, "trials drawn (random, optuna), or repeats of the grid")
    scheduler: Literal["asha", "none"] = opt("asha", "asha: stop trials below the median at "
                                                     "each rung of epochs; none: run all")
    grace_epochs: int = opt(1, "epochs every trial trains before it may be stopped")
    max_concurrent: int | None = opt(None, "trials at once (default: as many as fit: one CPU, "
                                           "or one GPU, per Train worker)")
    num_workers: int = opt(1, "Ray Train workers per trial")
    cpus_per_worker: float | None = opt(None, "CPUs per Train worker (default: the cluster's "
                                              "CPUs shared among the concurrent trials)")
    gpu: bool | None = opt(None, "use GPUs; default: when the cluster has them")
    seed: int = opt(0, "seed of every trial and of the search")
    max_retries: int = opt(1, "restarts of a trial that crashed (it resumes its last checkpoint)")
    inject_fault: Literal["raise", "kill"] | None = opt(
        None, "test: the first trial's last worker fails once, at --fault-epoch (grid and "
              "random searches: their trial ids count from _00000)")
    fault_epoch: int = opt(1, "test: the epoch at which the first trial fails")
    smoke_test: bool = opt(False, "tiny trials (for tests)")
    register: bool | None = opt(None, "register the best trial when it beats the registry's "
                                      "entry by the same metric (default: yes, but not for "
                                      "--smoke-test)")
    promote: bool = opt(False, "replace the registry's entry even when it was ranked by another "
                               "metric")
    dashboard: bool = opt(True, "start the local Ray's dashboard (its state API lets Ray Train's "
                                "own cleaner exit); stopped trials' CPUs are freed either way")

    def validate(self) -> None:
        cli.check_name(self.name)
        check(self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}")
        check(self.max_concurrent is None or self.max_concurrent >= 1,
              f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        check(self.num_workers >= 1, f"--num-workers must be >= 1, got {self.num_workers}")
        check(self.cpus_per_worker is None or self.cpus_per_worker > 0,
              "--cpus-per-worker must be > 0")
        check(self.grace_epochs >= 1, f"--grace-epochs must be >= 1, got {self.grace_epochs}")
        check(self.max_retries >= 0, f"--max-retries must be >= 0, got {self.max_retries}")


def plan_resources(cpus: float, gpus: float, *, num_workers: int, use_gpu: bool,
                   max_concurrent: int | None, cpus_per_worker: float | None) -> tuple[int, float]:
    """(trials at once, CPUs per Train worker): by default as many trials as give each worker a
    whole CPU (or a GPU), the CPUs left after the trials' actors (``TRIAL_CPU`` each) shared among
    their workers in hundredths, so that Ray never sees more asked for than there is."""
    if max_concurrent is None:
        if use_gpu:
            max_concurrent = int(gpus // num_workers)
        elif cpus_per_worker is not None:
            max_concurrent = int(cpus // (num_workers * cpus_per_worker + TRIAL_CPU))
        else:
            max_concurrent = int(cpus // num_workers)
        max_concurrent = max(1, max_concurrent)
    if cpus_per_worker is None:
        spare = cpus - TRIAL_CPU * max_concurrent
        cpus_per_worker = math.floor(100 * spare / (max_concurrent * num_workers)) / 100
        check(cpus_per_worker > 0, f"{max_concurrent} trials of {num_workers} workers do not fit "
                                   f"in {cpus:g} CPUs; lower --max-concurrent")
    return max_concurrent, cpus_per_worker


def trial_metrics(metrics: dict, metric: str, mode: str) -> dict:
    """A Train report as the sweep hands it to Tune: with ``epochs_done`` (the scheduler's clock,
    right across a restart that resumed mid-run), and a non-finite ``metric`` (a diverged trial)
    replaced by the worst value and flagged ``diverged``: ASHA passes a NaN as if unranked."""
    out = dict(metrics)
    if "epoch" in out:
        out["epochs_done"] = out["epoch"] + 1
    value = out.get(metric)
    if isinstance(value, float) and not math.isfinite(value):
        out[metric], out["diverged"] = -math.inf if mode == "max" else math.inf, True
    return out


class TrialReport(TuneReportCallback):
    """Tune's report callback (it runs in the Train controller) with ``trial_metrics``."""

    def __init__(self, metric: str, mode: str):
        super().__init__()
        self.metric, self.mode = metric, mode

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        first = trial_metrics(metrics[0], self.metric, self.mode)
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


class ReleasePlacementGroups(tune.Callback):
    """Remove an ended trial's Train placement group (its id is in the trial's run folder,
    ``jobs.worker.record_placement_group``), through the GCS from the sweep's driver. Ray keeps
    a dead controller's group while the sweep's driver lives, and Ray Train's own cleaner frees it
    only through the dashboard's state API (off, or beside another local Ray perhaps answering
    for the wrong one): the next trial would wait for its CPUs forever."""

    def __init__(self, storage_path: str, sweep_name: str, grace_s: float = 5.0):
        self.storage_path, self.sweep_name, self.grace_s = storage_path, sweep_name, grace_s
        self.ended: dict[str, float] = {}  # trial id -> when it was first seen ended
        self.released: set[str] = set()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Tune calls its trial callbacks before it stops the trial's actor, so a group is
        removed once its trial has been ended for ``grace_s`` (its controller gone with it)."""
        now = time.monotonic()
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):  # a restarted trial ends again later
                self.ended.pop(trial.trial_id, None)
                self.released.discard(trial.trial_id)
            elif trial.trial_id not in self.released:
                if now - self.ended.setdefault(trial.trial_id, now) >= self.grace_s:
                    self.release(trial.trial_id)
                    self.released.add(trial.trial_id)

    def release(self, trial_id: str) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        path = trial_dir(self.storage_path, self.sweep_name, trial_id) / PLACEMENT_GROUP_FILE
        try:
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(path.read_text().strip())))
        except (OSError, ValueError):  # no group recorded (the trial never started its workers)
            return
        if ray.util.placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)


@dataclass
class TrialSpec:
    """What a trial needs to run one training job (picklable: shipped to the trial actor)."""

    job_cls: type
    train_func: Callable[[dict], None]
    render: Callable[[dict, Path], None]
    base: dict  # the job config every trial starts from
    sweep: str
    storage_path: str
    metric: str
    mode: Literal["min", "max"]
    inject_fault: str | None = None  # the first trial only
    fault_epoch: int = 1


def trial_dir(storage_path: str, sweep_name: str, trial_id: str) -> Path:
    return Path(storage_path) / f"{sweep_name}-runs" / trial_id


def run_trial(config: dict, spec: TrialSpec) -> None:
    """Tune's trainable: one training run with this trial's parameters, artifacts included.

    The Train run is named after the trial, so a restarted trial resumes it. Crashes are not
    retried inside the run (``max_failures=0``): Tune sees them, counts them and restarts."""
    trial_id = tune.get_context().get_trial_id()
    first = trial_id.endswith("_00000")
    job = cli.build(spec.job_cls, {**spec.base, **config, "name": f"{spec.sweep}-runs/{trial_id}",
                                   "storage_path": spec.storage_path, "max_failures": 0,
                                   "inject_fault": spec.inject_fault if first else None,
                                   "fault_epoch": spec.fault_epoch})
    job.validate()
    run = trial_dir(spec.storage_path, spec.sweep, trial_id)
    runs.claim_run_folder(run.resolve())  # created and marked by the first attempt, reused by a restart
    with open(run / ATTEMPTS_FILE, "a") as f:
        f.write(f"start {time.time():.3f}\n")
    # the final checkpoint is the one whose metrics Tune saw last
    driver.fit(spec.train_func, job, metric=spec.metric, mode=spec.mode,
               callbacks=[TrialReport(spec.metric, spec.mode)],
               finish=lambda result: finish.finalize(
                   result, job, family="", metric=spec.metric, mode=spec.mode,
                   render=spec.render, select="final", register=False))


def asha(opts: SweepOptions, epochs: int) -> ASHAScheduler | None:
    """ASHA over ``epochs_done`` with rungs at grace, 2·grace, 4·grace, ... below ``epochs``.

    The last epoch is no rung and there is no stop at max_t (``stop_last_trials=False``): a trial
    that survived the rungs finishes on its own, so its final checkpoint and artifacts are
    written; a stop only ever cuts a weak trial short."""
    if opts.scheduler == "none" or opts.grace_epochs >= epochs:
        return None
    return ASHAScheduler(time_attr="epochs_done", max_t=epochs - 1, grace_period=opts.grace_epochs,
                         reduction_factor=2, stop_last_trials=False)


def sweep(spec: TrialSpec, opts: SweepOptions, param_space: dict, *, epochs: int) -> tune.ResultGrid:
    """Run (or resume) the sweep ``opts.name`` under ``opts.storage_path``; ``epochs``: the
    reports each trial makes (the scheduler's rungs lie below it)."""
    driver.init_ray(quiet=True, state_api=opts.dashboard)  # Tune's table, not workers' log lines
    res = ray.cluster_resources()
    use_gpu = res.get("GPU", 0) > 0 if opts.gpu is None else opts.gpu
    opts.max_concurrent, opts.cpus_per_worker = plan_resources(
        res.get("CPU", 1), res.get("GPU", 0), num_workers=opts.num_workers, use_gpu=use_gpu,
        max_concurrent=opts.max_concurrent, cpus_per_worker=opts.cpus_per_worker)
    spec.base.update(cpus_per_worker=opts.cpus_per_worker, gpu=use_gpu)
    print(f"{opts.max_concurrent} trial(s) at once, {opts.num_workers} worker(s) each with "
          f"{opts.cpus_per_worker:g} CPU{' and 1 GPU' if use_gpu else ''}; search {opts.search}, "
          f"scheduler {opts.scheduler}")
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": TRIAL_CPU})
    path = Path(opts.storage_path) / opts.name
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming the sweep in {path} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=opts.num_samples,
                scheduler=asha(opts, epochs),
                search_alg=sweep_search.searcher(opts.search, metric=spec.metric, mode=spec.mode,
                                    seed=opts.seed, max_concurrent=opts.max_concurrent,
                                    num_samples=opts.num_samples)),
            run_config=tune.RunConfig(name=opts.name, storage_path=opts.storage_path,
                                      failure_config=tune.FailureConfig(
                                          max_failures=opts.max_retries),
                                      callbacks=[ReleasePlacementGroups(opts.storage_path,
                                                                        opts.name)]))
    return tuner.fit()


def options_dict(opts: SweepOptions) -> dict:
    """The RunOptions fields a trial inherits from the sweep's options."""
    keep = ("num_workers", "cpus_per_worker", "gpu", "seed")
    return {k: v for k, v in dataclasses.asdict(opts).items() if k in keep}
