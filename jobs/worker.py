"""Ray on the training workers: setup (seeds, threads, data shard, TensorBoard), checkpoint,
report and resume, progress, and the injected faults the tests use."""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from hw4 import data
from hw4.atomic_files import write_bytes_atomic, write_json_atomic
from hw4.checkpoint import load_checkpoint
from hw4.errors import HW4Error
from jobs.runs import PLACEMENT_GROUP_FILE, PROGRESS_FILE, hold_for_worker, latest_recorded_epoch, run_dir

CHECKPOINT_FILE = "checkpoint.pt"
LOG_EVERY = 10  # steps between metric reads (one host sync) and progress-file writes



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
    claim = hold_for_worker(run)  # before anything is written into the run: the driver waits for it
    writer = SummaryWriter(str(run / "tensorboard")) if rank == 0 else None
    if rank == 0:
        record_placement_group(run)
    return Worker(cfg, rank, world, device, loader, DataLoader(val_set, batch_size=val_batch),
                  writer, run / "fault_injected", claim)


def record_placement_group(run: Path) -> None:
    """Write the id of the placement group this worker group runs in into the run's folder, so a
    sweep can remove it when Tune stops the trial (``jobs.sweep.ReleasePlacementGroups``): Ray
    removes a placement group only when both its creator (the Train controller) and the creator's
    job (the sweep's driver) are gone, and Ray Train's own cleaner needs the dashboard's state
    API to see that the controller is gone."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is not None:
        write_bytes_atomic(run / PLACEMENT_GROUP_FILE, pg.id.hex().encode())


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Ray's ``prepare_model``: DDP across workers, none for a single worker (nothing to sync,
    and DDP's gradient buckets would only add copies)."""
    world = ray.train.get_context().get_world_size()
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)


def agree_min(value: int, device: torch.device) -> int:
    """The smallest ``value`` over the run's workers (itself for one worker)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def progress_bar(quiet: bool = False) -> Callable[..., Any] | bool:
    """Ray's tqdm (one bar per worker, shown by the driver) on rank 0; no bar elsewhere, nor
    when the run is ``quiet`` (the driver draws the progress file instead)."""
    if quiet or world_rank() != 0:
        return False
    from ray.experimental.tqdm_ray import tqdm

    return tqdm
