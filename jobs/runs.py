"""A run's folder: its name as a path, the claim that keeps it one driver's, what a rerun of the
same name may do (resume, refuse, overwrite only a run of ours) and what Ray Train recorded."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import shutil
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hw4.atomic_files import write_json_atomic
from hw4.errors import HW4Error
from jobs.cli import check_run_name

PROGRESS_FILE = "progress.json"  # rank 0's progress, drawn by the driver of a --quiet run
PLACEMENT_GROUP_FILE = ".placement-group"  # the Train workers' placement group (hex id)

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


def run_dir(storage_path: str, name: str) -> Path:
    check_run_name(name)  # every caller, not only the CLI's: a bad name never becomes a path
    return Path(storage_path).resolve() / name


def latest_recorded_epoch(run: Path) -> int | None:
    """The epoch of the newest checkpoint Ray Train has recorded for the run in ``run`` (the one
    a restarted worker group or a ``--resume`` starts from), or None before the first."""
    try:
        kept = json.loads((run / RAY_SNAPSHOT).read_text())["checkpoint_results"]
        return max((int(r["metrics"]["epoch"]) for r in kept), default=None)
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or caught mid-write
        return None
