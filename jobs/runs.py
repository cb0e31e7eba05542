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
from jobs.cli import check_run_name, flat

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


RUN_MARKER = ".hw4-run"  # written by the job that created the folder, and only then
# names at the storage root that hold something else of ours (the registry, evaluation reports):
# never a run's folder, even before they exist
RESERVED_NAMES = frozenset({"registry", "eval"})


def is_run_folder(run: Path) -> bool:
    """Whether ``run`` is a run folder of this project: one that holds the marker written when a
    job created it (``claim_run_folder``). What a folder merely contains (Ray's snapshot,
    checkpoints) proves nothing: a user's folder, or the registry, may hold such files too."""
    return (run / RUN_MARKER).is_file() and not run.is_symlink()


def mark_run_folder(run: Path) -> None:
    write_json_atomic(run / RUN_MARKER, {"created_by": "hw4", "name": run.name})


def claim_run_folder(run: Path) -> bool:
    """Make ``run`` this project's run folder, or refuse with one line. A new name: the folder is
    created here (it must not exist a moment before) and marked at once. An existing folder is
    used only when it holds the marker, so a job never adopts, and ``--overwrite`` never empties,
    a folder it did not create: the registry, an evaluation's reports, a sweep's own folder or a
    user's notes. Returns whether the folder was created now."""
    if run.name in RESERVED_NAMES:
        raise HW4Error(f"--name {run.name!r} is reserved: {', '.join(sorted(RESERVED_NAMES))} at the "
                       "storage path hold the registry and evaluation reports; choose another --name")
    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        run.mkdir()
    except FileExistsError:
        if not is_run_folder(run):
            raise HW4Error(f"{run} exists and was not created by a run of this project (no "
                           f"{RUN_MARKER} in it), so it is left as it is; choose another --name"
                           ) from None
        return False
    mark_run_folder(run)
    return True


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
    if cfg.overwrite:  # all but what makes it this driver's run: the marker and the claim
        if not is_run_folder(run):  # claim_run_folder ran first; never delete what is not ours
            raise HW4Error(f"--overwrite refused: {run} is not a run folder of this project")
        for child in run.iterdir():
            if child.name in (RUN_MARKER, DRIVER_LOCK, WORKERS_LOCK):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
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
    # in the command line's terms (a nested config's flags at the top), tuples as lists, as saved
    new = flat(type(cfg), json.loads(json.dumps(dataclasses.asdict(cfg))))
    old = flat(type(cfg), old)  # saved nested, or flat by an older version
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
