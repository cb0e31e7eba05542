"""Glue shared by the Ray jobs: CLI from config dataclasses, Ray start-up, worker-side
checkpoint/report/resume, fault injection, and the artifacts written at the end of a run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import ray
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from hw4 import data
from hw4.atomic_files import copy_atomic, write_json_atomic
from hw4.checkpoint import load_checkpoint
from hw4.errors import HW4Error
from hw4.registry import record_best

CHECKPOINT_FILE = "checkpoint.pt"


# --- options every job shares ------------------------------------------------------------------

def opt(default: Any, help: str) -> Any:
    """A dataclass field whose help text becomes the ``--flag``'s help."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class RunOptions:
    """The Ray side of a training run: where it lives, how it scales, how it survives faults."""

    name: str = opt("run", "run name; the same name resumes")
    storage_path: str = opt("results", "where runs, artifacts and the registry live")
    num_workers: int = opt(1, "Ray Train workers (data parallel)")
    cpus_per_worker: float | None = opt(
        None, "CPUs per worker (torch threads: that rounded, at least 1); default: the "
              "cluster's CPUs shared out")
    gpu: bool | None = opt(None, "use GPUs; default: when the cluster has them")
    seed: int = opt(0, "seed for init, data order and noise")
    keep_checkpoints: int = opt(3, "checkpoints kept (the best by the validation metric)")
    max_failures: int = opt(2, "worker-group restarts after a crash")
    quiet: bool = opt(False, "one progress line per phase instead of Ray's worker logs "
                             "(a local Ray only; errors still surface)")
    register: bool | None = opt(None, "record the checkpoint in the registry when it beats the "
                                      "entry by the same metric (default: yes, but not for "
                                      "--smoke-test)")
    promote: bool = opt(False, "replace the registry's entry even when it was ranked by another "
                               "metric (e.g. a sweep's FID by a training run's val_loss)")
    resume: bool = opt(False, "rerunning --name with a different config: continue its "
                              "checkpoints under the new settings (recorded in changes.json)")
    overwrite: bool = opt(False, "rerunning --name: delete that run and start afresh")
    inject_fault: Literal["raise", "kill"] | None = opt(None, "test: fail once")
    fault_epoch: int = opt(1, "test: the epoch at which to fail")
    smoke_test: bool = opt(False, "tiny data and model, a few steps (for tests)")

    def validate(self) -> None:
        check_run_name(self.name)
        check(self.num_workers >= 1, f"--num-workers must be >= 1, got {self.num_workers}")
        check(self.cpus_per_worker is None or self.cpus_per_worker > 0,
              "--cpus-per-worker must be > 0")
        check(self.keep_checkpoints >= 1, "--keep-checkpoints must be >= 1")
        check(self.max_failures >= 0, "--max-failures must be >= 0")
        check(not (self.resume and self.overwrite), "give --resume or --overwrite, not both")


# --- CLI --------------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field; help text from ``field(metadata={"help": ...})``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind, default = hints[f.name], f.default
        kw: dict[str, Any] = {"default": default, "help": f.metadata.get("help", "")}
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))  # X | None -> X
            args = typing.get_args(kind)
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            kw.update(choices=args, type=type(args[0]))
        elif typing.get_origin(kind) is tuple:
            kw.update(nargs="*", type=args[0])
        else:
            kw["type"] = kind
        kw["help"] += f" (default: {default})"
        parser.add_argument(flag, **kw)


def to_argv(values: dict[str, Any]) -> list[str]:
    """{"base_channels": 16, "channel_mults": (1, 2)} -> ["--base-channels", "16",
    "--channel-mults", "1", "2"]: settings kept as a dict, handed to a job's command line."""
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, *map(str, value if isinstance(value, tuple | list) else [value])]
    return argv


def config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main``; a user mistake becomes one line on stderr and exit code 2."""
    try:
        main()
    except HW4Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str, flag: str = "--name") -> None:
    """A name that becomes a folder under the storage path: one path component, non-empty, not
    ``.`` or ``..``, no separator, letters, digits, ``.``, ``_`` and ``-`` only, starting with a
    letter or digit (so no hidden or relative names), at most 100 characters. ``--name ""``
    (an unset shell variable) would otherwise be the storage folder itself, and ``--overwrite``
    would empty it."""
    check(isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None,
          f"{flag} must be one folder name: letters, digits, '.', '_' or '-', starting with a "
          f"letter or digit, at most 100 characters; got {name!r}")


def check_run_name(name: str) -> None:
    """A run's name: one folder name, or ``<sweep>-runs/<trial id>`` for a sweep's trial."""
    parts = name.split("/") if isinstance(name, str) else [name]
    check(len(parts) == 1 or (len(parts) == 2 and parts[0].endswith("-runs")),
          f"--name must be one folder name; got {name!r}")
    for part in parts:
        check_name(part)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise HW4Error(message)


# --- Ray on the driver ------------------------------------------------------------------------

SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


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


THREADS_ENV = "HW4_TORCH_THREADS"


def torch_thread_cap() -> int | None:
    """``HW4_TORCH_THREADS``, the most torch threads a worker may use, if set."""
    cap = os.environ.get(THREADS_ENV)
    if cap is None:
        return None
    if not cap.strip().isdigit() or int(cap) < 1:
        raise HW4Error(f"{THREADS_ENV} must be a whole number >= 1, not {cap!r}")
    return int(cap)


def set_worker_threads(cpus: float | None) -> None:
    """Torch intra-op threads = the CPUs Ray reserved for this worker (a fraction of a CPU, as
    concurrent sweep trials get, is one thread), at most ``HW4_TORCH_THREADS``. On cores shared
    with other work, the threads of one op wait on whichever of them is descheduled: the test
    suite (two pytest workers on 2 cores) runs its workers on one thread each."""
    if cpus:
        threads, cap = max(1, round(cpus)), torch_thread_cap()
        torch.set_num_threads(threads if cap is None else min(threads, cap))


def parse_config(cls: type, argv: list[str] | None, smoke: dict, doc: str) -> Any:
    """argv -> validated config; ``--smoke-test`` makes ``smoke`` the defaults."""
    parser = ArgumentParser(description=doc.strip().splitlines()[0])
    add_config_args(parser, cls)
    if parser.parse_args(argv).smoke_test:
        parser.set_defaults(**smoke)  # smoke values replace defaults; explicit flags still win
    cfg = config_from_args(cls, parser.parse_args(argv))
    cfg.storage_path = str(Path(cfg.storage_path).resolve())
    cfg.validate()
    return cfg


def fit(train_func: Callable[[dict], None], cfg: Any, *, metric: str,
        mode: Literal["min", "max"], callbacks: list | None = None,
        finish: Callable[[ray.train.Result], Any] | None = None) -> Any:
    """Build and run the TorchTrainer every job uses: keep the best ``keep_checkpoints`` by
    ``metric``, restart from the latest checkpoint up to ``max_failures`` times. ``callbacks``:
    e.g. Tune's ``TuneReportCallback`` when a sweep trial drives this run. The run's folder is
    this driver's alone while it runs (``sole_writer``), and while ``finish`` (``finalize``: the
    artifacts and the registry) runs on the result; returns what ``finish`` returns."""
    with sole_writer(run_dir(cfg.storage_path, cfg.name)):
        result = _fit(train_func, cfg, metric=metric, mode=mode, callbacks=callbacks)
        return finish(result) if finish is not None else result


def _fit(train_func: Callable[[dict], None], cfg: Any, *, metric: str,
         mode: Literal["min", "max"], callbacks: list | None) -> ray.train.Result:
    check_rerun(cfg)
    mark_run_folder(run_dir(cfg.storage_path, cfg.name))
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

PROGRESS_FILE = "progress.json"
LOG_EVERY = 10  # steps between metric reads (one host sync) and progress-file writes


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


# options that change how a run executes, not what it trains: a rerun may change them freely
OPERATIONAL = {"name", "storage_path", "num_workers", "cpus_per_worker", "gpu", "keep_checkpoints",
               "max_failures", "inject_fault", "fault_epoch", "quiet", "register", "promote",
               "resume", "overwrite", "compile", "precision"}


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # what Ray Train has recorded for a run


# --- one writer per run folder -----------------------------------------------------------------

DRIVER_LOCK, WORKERS_LOCK = ".driver.lock", ".workers.lock"
IN_USE_WAIT_S = 20.0  # how long a driver waits for another writer of its run to go


def _flock(path: Path, mode: int, wait_s: float) -> typing.TextIO | None:
    """``path`` opened and flock-ed (``mode``: LOCK_EX or LOCK_SH), retried for ``wait_s``;
    None if it stayed taken. The lock lasts while the file is open, and dies with the process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # read-write ("a+"), never write-only: on NFSv4 Linux emulates flock with byte-range locks,
    # and a shared (read) lock on a file not open for reading fails with EBADF
    f = open(path, "a+")  # noqa: SIM115 - the open file is the lock
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.2)
        except OSError as err:  # a file system without working locks (some NFS mounts)
            f.close()
            raise HW4Error(f"could not lock {path} ({err.strerror or err}): the storage under "
                           f"{path.parent.parent} must support flock (a local disk, or NFSv4 "
                           "such as EFS mounted without 'nolock'); see README, 'Shared "
                           "storage'") from err


@contextlib.contextmanager
def sole_writer(run: Path, wait_s: float | None = None) -> Iterator[None]:
    """Claim ``run`` for this driver for the block, or refuse with one line: another driver of
    the same ``--name`` holds ``.driver.lock``, or training workers of an earlier run still hold
    ``.workers.lock`` (``hold_for_worker``). Those outlive a driver killed with SIGKILL by a few
    seconds, writing checkpoints and Ray's snapshot into the run a rerun is resuming; so a driver
    waits up to ``IN_USE_WAIT_S`` for them before it refuses. Workers on other nodes are seen
    where the storage's file system shares flock locks between machines (NFS does)."""
    wait_s = IN_USE_WAIT_S if wait_s is None else wait_s

    def refuse(lock: str, who: str) -> typing.NoReturn:
        raise HW4Error(f"run {run.name!r} is in use by {who}: waited {wait_s:.0f} s for "
                       f"{run / lock} to be released; rerun when it is, or choose a new --name")

    driver = _flock(run / DRIVER_LOCK, fcntl.LOCK_EX, wait_s)
    if driver is None:
        refuse(DRIVER_LOCK, "another driver of this --name")
    try:
        workers = _flock(run / WORKERS_LOCK, fcntl.LOCK_EX, wait_s)
        if workers is None:
            refuse(WORKERS_LOCK, "training workers of an earlier run (a killed driver's workers "
                                 "stop within seconds)")
        workers.close()  # free again for this run's own workers
        yield
    finally:
        driver.close()


def hold_for_worker(run: Path) -> typing.TextIO:
    """A training worker's share of ``run``'s workers lock, held until the returned file is
    closed or the process ends (``sole_writer`` waits for it)."""
    held = _flock(run / WORKERS_LOCK, fcntl.LOCK_SH, 60.0)  # only a checking driver holds it, briefly
    if held is None:
        raise HW4Error(f"could not share {run / WORKERS_LOCK} with this run's driver")
    return held


RUN_MARKER = ".hw4-run"  # written into a run's folder before its training starts
# what marks a folder as a run of ours: the marker, or what older runs left (Ray's snapshot, the
# artifacts' config); a storage root (it holds registry/) never counts, whatever else is there
RUN_MARKERS = (RUN_MARKER, RAY_SNAPSHOT, "artifacts/config.json", "checkpoint_*/config.json")


def is_run_folder(run: Path) -> bool:
    return not (run / "registry").exists() and any(any(run.glob(m)) for m in RUN_MARKERS)


def mark_run_folder(run: Path) -> None:
    write_json_atomic(run / RUN_MARKER, {"created_by": "hw4", "name": run.name})


def saved_config(run: Path) -> dict | None:
    """The config of the run's newest checkpoint (what a rerun would resume), if any."""
    saved = sorted(run.glob("checkpoint_*/config.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(saved):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def check_rerun(cfg: Any) -> None:
    """A rerun of ``--name`` resumes it. With a different config that is refused, unless the user
    says ``--resume`` (continue under the new settings, recorded in ``changes.json``) or
    ``--overwrite`` (delete the old run and start afresh)."""
    run = run_dir(cfg.storage_path, cfg.name)
    if cfg.overwrite and run.exists():  # all but the claim this driver holds (sole_writer)
        if not is_run_folder(run):
            raise HW4Error(f"--overwrite refused: {run} does not look like a training run of "
                           f"this project (none of {', '.join(RUN_MARKERS)} in it), so nothing "
                           "was deleted; choose another --name")
        for child in run.iterdir():
            if child.name in (DRIVER_LOCK, WORKERS_LOCK):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        if not any(run.iterdir()):
            run.rmdir()
        return
    snapshot = run / RAY_SNAPSHOT
    try:
        if snapshot.is_file():
            json.loads(snapshot.read_text())
    except (OSError, ValueError):  # Ray writes it in place: a kill mid-write leaves it cut short
        raise HW4Error(f"run {cfg.name!r}: Ray's record of its checkpoints ({snapshot}) is "
                       "unreadable, as when a driver is killed while Ray writes it; the checkpoints "
                       f"are still in {run}: rerun with --overwrite to start afresh, or choose a "
                       "new --name") from None
    old = saved_config(run)
    if old is None:
        return
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as saved
    changed = {k: (old.get(k), v) for k, v in new.items() if k not in OPERATIONAL and old.get(k) != v}
    if not changed:
        return
    if not cfg.resume:
        fields = ", ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in sorted(changed.items()))
        raise HW4Error(f"run {cfg.name!r} exists with another config ({fields}): add --resume to "
                       "continue it with the new settings, --overwrite to start it afresh, or "
                       "choose a new --name")
    history = json.loads((run / "changes.json").read_text()) if (run / "changes.json").is_file() else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changed": {k: {"from": a, "to": b} for k, (a, b) in changed.items()}})
    write_json_atomic(run / "changes.json", history)


def config_from_state(cls: type, state: dict) -> Any:
    """The job config saved in a checkpoint (JSON-ish lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})


def run_dir(storage_path: str, name: str) -> Path:
    check_run_name(name)  # every caller, not only the CLI's: a bad name never becomes a path
    return Path(storage_path).resolve() / name


# --- Ray on the workers -----------------------------------------------------------------------

def world_rank() -> int:
    return ray.train.get_context().get_world_rank()


def restore_state(map_location: torch.device | str = "cpu") -> dict | None:
    """The state saved in the latest reported checkpoint, when this run is resuming."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_checkpoint(Path(d) / CHECKPOINT_FILE, map_location=map_location)


def report(metrics: dict, save: Callable[[Path], None] | None, config: Any = None) -> None:
    """Every rank reports; rank 0 attaches a checkpoint folder: ``checkpoint.pt`` written by
    ``save(path)``, with ``metrics.json`` and the job's ``config.json`` beside it."""
    if save is None or world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save(Path(d) / CHECKPOINT_FILE)
        write_json_atomic(Path(d) / "metrics.json", metrics)
        if config is not None:
            write_json_atomic(Path(d) / "config.json", dataclasses.asdict(config))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def latest_recorded_epoch(run: Path) -> int | None:
    """The epoch of the newest checkpoint Ray Train has recorded for the run in ``run`` (the one
    a restarted worker group or a ``--resume`` starts from), or None before the first."""
    try:
        kept = json.loads((run / RAY_SNAPSHOT).read_text())["checkpoint_results"]
        return max((int(r["metrics"]["epoch"]) for r in kept), default=None)
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or caught mid-write
        return None


# A report reaches Ray Train's controller at its next poll of the workers: a worker killed before
# that can take the report's checkpoint with it, and the run resumes from the one before. The
# injected fault waits (at most this long) until the previous epoch's checkpoint is recorded.
FAULT_WAIT_S = 60.0


def maybe_inject_fault(fault: str | None, fault_epoch: int, epoch: int, marker: Path) -> None:
    """Fail once (a marker file, in the run's folder, remembers it) on the last rank at the start
    of ``fault_epoch``, once Ray has recorded the checkpoint before it: raise an exception, or
    SIGKILL the worker process."""
    ctx = ray.train.get_context()
    if fault is None or epoch != fault_epoch or ctx.get_world_rank() != ctx.get_world_size() - 1:
        return
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{fault} at epoch {epoch}\n")
    deadline = time.monotonic() + FAULT_WAIT_S
    while epoch > 0 and time.monotonic() < deadline:
        latest = latest_recorded_epoch(marker.parent)
        if latest is not None and latest >= epoch - 1:
            break
        time.sleep(0.05)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault at epoch {epoch}")


@dataclasses.dataclass
class Worker:
    """What every training worker sets up the same way: seeds, threads, device, its shard of the
    data (kept on the device), the rank-0 TensorBoard writer and the fault-injection marker."""

    cfg: Any
    rank: int
    world: int
    device: torch.device
    loader: data.TensorBatches
    val_loader: DataLoader
    writer: SummaryWriter | None
    marker: Path
    claim: typing.TextIO  # this worker's share of the run (hold_for_worker)

    def epochs(self, start: int, stop: int) -> Iterator[int]:
        """Epoch numbers, each after the injected fault (if any) and the loader's reshuffle."""
        for epoch in range(start, stop):
            maybe_inject_fault(self.cfg.inject_fault, self.cfg.fault_epoch, epoch, self.marker)
            self.loader.set_epoch(epoch)
            yield epoch

    def progress(self, phase: str, epoch: int, first_epoch: int, epochs: int
                 ) -> Callable[[int, dict[str, float]], None] | None:
        """``run_epoch``'s ``on_log`` for rank 0 of a ``--quiet`` run: this phase's steps done so
        far and the running loss, written (atomically) where the driver's ``follow_progress``
        reads them."""
        if self.rank != 0 or not self.cfg.quiet:
            return None
        per_epoch = len(self.loader)

        def write(i: int, means: dict[str, float]) -> None:
            write_json_atomic(run_dir(self.cfg.storage_path, self.cfg.name) / PROGRESS_FILE, {
                "phase": phase, "epoch": epoch - first_epoch, "epochs": epochs - first_epoch,
                "done": (epoch - first_epoch) * per_epoch + i,
                "total": (epochs - first_epoch) * per_epoch, "loss": means.get("loss", float("nan"))})

        return write

    def generator(self) -> torch.Generator:
        """This rank's seeded generator on the worker's device (t, noise, label drops)."""
        return torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1000 + self.rank)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.claim.close()


def setup_worker(cfg: Any, dataset: data.DatasetName, *,
                 normalization: data.Normalization = "unit", val_batch: int = 256) -> Worker:
    """Seed, set threads, load ``dataset`` (train subset -> device-resident batches split over the
    workers; test subset -> a validation loader) and open rank 0's TensorBoard writer."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    set_worker_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    train_set = data.load_dataset(dataset, "train", normalization=normalization,
                                  subset=cfg.train_subset, seed=cfg.seed)
    val_set = data.load_dataset(dataset, "test", normalization=normalization,
                                subset=cfg.val_subset, seed=cfg.seed)
    loader = data.TensorBatches(*train_set.tensors, cfg.batch_size // world, seed=cfg.seed,
                                rank=rank, world=world, device=device)
    run = run_dir(cfg.storage_path, cfg.name)
    writer = SummaryWriter(str(run / "tensorboard")) if rank == 0 else None
    return Worker(cfg, rank, world, device, loader, DataLoader(val_set, batch_size=val_batch),
                  writer, run / "fault_injected", hold_for_worker(run))


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Ray's ``prepare_model``: DDP across workers, none for a single worker (nothing to sync,
    and DDP's gradient buckets would only add copies)."""
    world = ray.train.get_context().get_world_size()
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)


def progress_bar(quiet: bool = False) -> Callable[..., Any] | bool:
    """Ray's tqdm (one bar per worker, shown by the driver) on rank 0; no bar elsewhere, nor
    when the run is ``quiet`` (the driver draws the progress file instead)."""
    if quiet or world_rank() != 0:
        return False
    from ray.experimental.tqdm_ray import tqdm

    return tqdm


# --- the end of a run -------------------------------------------------------------------------

def should_register(cfg: Any) -> bool:
    """--register, or by default any run but a smoke test (which must never change what is
    served)."""
    return cfg.register if cfg.register is not None else not cfg.smoke_test


def register_checkpoint(storage: str, family: str, **kwargs: Any) -> bool:
    """``record_best``, except that a damaged registry does not throw the run away: the
    checkpoint is already in the run's artifacts, and the error says how to register it."""
    try:
        return record_best(storage, family, **kwargs)
    except HW4Error as err:
        print(f"warning: not registered: {err}; the checkpoint is kept at {kwargs['checkpoint']}",
              file=sys.stderr)
        return False


def finalize(result: ray.train.Result, cfg: Any, *, family: str, metric: str,
             mode: Literal["min", "max"], render: Callable[[dict, Path], None],
             select: Literal["best", "final"] = "best", register: bool = True) -> dict:
    """Copy the selected (best by ``metric``, or final) and the final checkpoint into
    ``<run>/artifacts``, render images, write ``metrics.json`` and ``config.json``, and register
    the selected checkpoint (a sweep registers only its best trial, at the end)."""
    if result.error is not None:
        raise result.error
    out = run_dir(cfg.storage_path, cfg.name) / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    best = result.checkpoint
    if select == "best":
        best = result.get_best_checkpoint(metric, mode) or best
    for ckpt, fname in ((best, "checkpoint.pt"), (result.checkpoint, "final.pt")):
        with ckpt.as_directory() as d:
            copy_atomic(Path(d) / CHECKPOINT_FILE, out / fname)  # fsynced, then renamed
    state = load_checkpoint(out / "checkpoint.pt")
    final = load_checkpoint(out / "final.pt")
    render(state, out)
    summary = {
        "best": state["metrics"], "final": final["metrics"],
        "history": final["extra"].get("history", []), "best_epoch": state["epoch"],
        "checkpoint": str(out / "checkpoint.pt"), "config": dataclasses.asdict(cfg),
    }
    write_json_atomic(out / "metrics.json", summary)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    summary["registered"] = False
    if register and should_register(cfg):
        summary["registered"] = register_checkpoint(
            cfg.storage_path, family, checkpoint=out / "checkpoint.pt", metric=metric,
            value=state["metrics"][metric], mode=mode, config=dataclasses.asdict(cfg),
            source=str(run_dir(cfg.storage_path, cfg.name)), promote=cfg.promote)
    if not cfg.quiet:
        print(json.dumps({k: summary[k] for k in ("best", "best_epoch", "checkpoint", "registered")},
                         indent=2, default=str))
    return summary
