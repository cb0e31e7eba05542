"""Ray on the driver: joining or starting Ray, sizing the workers, and ``fit``, the TorchTrainer
every job runs (with the run's claim held and one progress line per phase)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import ray
import ray.train
import ray.train.torch

from hw4 import data
from jobs.runs import PROGRESS_FILE, check_rerun, claim_run_folder, run_dir, sole_writer
from jobs.worker import torch_thread_cap

SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Serve kills an HTTP proxy not ready within this many seconds (Ray's default: 5), and
# serve.start then fails; on 2 busy cores the proxy's start alone took longer
PROXY_READY_ENV, PROXY_READY_S = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60"


def init_ray(quiet: bool = False, state_api: bool = False, num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (set by ``ray job submit`` too), else start a local Ray
    with ``num_cpus`` (default: all); ``quiet`` keeps the local Ray's worker and actor logs off
    this terminal. ``state_api`` starts the local Ray's dashboard, which serves Ray's state API.
    A sweep needs it: when Tune stops a trial, the trial's Train placement group outlives its
    Train controller, and Ray Train removes it through a detached cleaner that asks the state API
    whether the controller is gone. Without the API the cleaner only logs "Failed to query Ray
    Train Controller actor state" every second, the group stays reserved, and the next trial
    waits for its CPUs forever.

    The cleaner finds the state API through RAY_ADDRESS, else through the address `ray start`
    left in /tmp/ray, else by looking for Ray processes on the machine. Beside another Ray it
    asked the other one (seen with a `ray start` head running: "Connecting to latest cluster",
    then, not finding this run's controller there, it took the controller for dead and exited)
    or none ("Found multiple active Ray instances"). So a local Ray's GCS (and dashboard) get
    free ports chosen here, and its workers get RAY_ADDRESS pointing back at it.

    A submitted job already runs in the job's runtime environment (``--runtime-env-json``), which
    its workers inherit: passing one here too would conflict with it, so only a driver started by
    hand forwards HW4_DATA_DIR to the workers."""
    data.pin_data_dir()  # the workers run in other folders
    torch_thread_cap()  # a bad value is refused here, not in every worker
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    data_dir = os.environ.get("HW4_DATA_DIR")
    if address:
        submitted = SUBMITTED_JOB_ENV in os.environ
        env = {"env_vars": {"HW4_DATA_DIR": data_dir}} if data_dir and not submitted else None
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    os.environ.setdefault(PROXY_READY_ENV, PROXY_READY_S)  # read by the local Ray's Serve controller
    gcs_port, dashboard_port = free_ports(2)
    users = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)  # read by Ray when it starts the GCS
    try:
        own = f"{ray.util.get_node_ip_address()}:{gcs_port}"
        # no cloud provider drains a node of a local Ray: Ray Train's preemption watcher (one more
        # process per run, polling the drain state) would have nothing to watch
        env = {"RAY_ADDRESS": own, PREEMPTION_WATCHER_ENV: os.environ.get(PREEMPTION_WATCHER_ENV, "0")}
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=state_api,
                 dashboard_port=dashboard_port, runtime_env={"env_vars": env},
                 log_to_driver=not quiet, logging_level="ERROR" if quiet else "INFO")
    finally:  # as it was
        if users is None:
            del os.environ["RAY_GCS_SERVER_PORT"]
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = users


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on this machine now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def default_cpus_per_worker(num_workers: int) -> int:
    """Share the cluster's CPUs among the workers, at most one node's worth each.

    Ray gives a worker ``OMP_NUM_THREADS`` = its CPUs, so the default of 1 CPU would leave a
    laptop's other cores idle."""
    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources().get("CPU", 1)
    return max(1, int(min(max(per_node, default=1), total // num_workers)))


def fit(train_func: Callable[[dict], None], cfg: Any, *, metric: str,
        mode: Literal["min", "max"], callbacks: list | None = None,
        finish: Callable[[ray.train.Result], Any] | None = None) -> Any:
    """Build and run the TorchTrainer every job uses: keep the best ``keep_checkpoints`` by
    ``metric``, restart from the latest checkpoint up to ``max_failures`` times. ``callbacks``:
    e.g. Tune's ``TuneReportCallback`` when a sweep trial drives this run. The run's folder is
    this driver's alone while it runs (``sole_writer``), and while ``finish`` (``finalize``: the
    artifacts and the registry) runs on the result; returns what ``finish`` returns."""
    run = run_dir(cfg.storage_path, cfg.name)
    claim_run_folder(run)  # created and marked here, or already ours: else refused, untouched
    with sole_writer(run):
        result = _fit(train_func, cfg, metric=metric, mode=mode, callbacks=callbacks)
        return finish(result) if finish is not None else result


def _fit(train_func: Callable[[dict], None], cfg: Any, *, metric: str,
         mode: Literal["min", "max"], callbacks: list | None) -> ray.train.Result:
    check_rerun(cfg)
    init_ray(quiet=cfg.quiet)
    use_gpu = cluster_has_gpus() if cfg.gpu is None else cfg.gpu
    if cfg.cpus_per_worker is None:
        cfg.cpus_per_worker = default_cpus_per_worker(cfg.num_workers)
    trainer = ray.train.torch.TorchTrainer(
        train_func,
        train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric,
                checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
    )
    if not cfg.quiet:
        return trainer.fit()
    with follow_progress(run_dir(cfg.storage_path, cfg.name) / PROGRESS_FILE):
        return trainer.fit()


# --- one progress line per phase, drawn by the driver ---------------------------------------------

@contextlib.contextmanager
def follow_progress(path: Path, poll_s: float = 0.5) -> Iterator[None]:
    """Draw rank 0's progress file (``Worker.progress``) as one tqdm line per phase while the
    body runs: the driver shows progress without relaying any worker's output."""
    from tqdm.auto import tqdm

    stop = threading.Event()
    path.unlink(missing_ok=True)

    def draw() -> None:
        bar, phase = None, None
        while not stop.wait(poll_s):
            try:
                p = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if p["phase"] != phase:
                if bar is not None:
                    bar.close()
                phase = p["phase"]
                bar = tqdm(total=p["total"], initial=p["done"], desc=f"{phase:<11}", unit="step",
                           dynamic_ncols=True)
            bar.n = p["done"]
            bar.set_postfix_str(f"epoch {p['epoch'] + 1}/{p['epochs']}, loss {p['loss']:.4f}",
                                refresh=False)
            bar.refresh()
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
