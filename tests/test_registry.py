"""The registry's promises: like-with-like comparisons, explicit promotion, immutable registered
checkpoints, a lock around read-compare-write, damaged records as clear errors; and the rerun
rule of the jobs (same name + different config is refused unless --resume or --overwrite)."""

import json
import multiprocessing
import random
from pathlib import Path

import pytest

from hw4.errors import HW4Error
from hw4.registry import RegistryError, read_best, record_best


def ckpt(path: Path, content: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def register(storage, checkpoint, value, metric="val_loss", mode="min", **kw) -> bool:
    return record_best(storage, "ddpm", checkpoint=checkpoint, metric=metric, value=value,
                       mode=mode, config={}, source="test", **kw)


def test_only_like_is_compared_with_like(tmp_path):
    a, b = ckpt(tmp_path / "a.pt", b"a"), ckpt(tmp_path / "b.pt", b"b")
    assert register(tmp_path, a, 0.5)
    assert not register(tmp_path, b, 0.6)  # worse by the same metric
    assert not register(tmp_path, b, 10.0, metric="fid")  # another yardstick: not compared
    assert read_best(tmp_path, "ddpm")["registered_from"] == str(a.resolve())
    assert register(tmp_path, b, 10.0, metric="fid", promote=True)  # unless promoted
    assert read_best(tmp_path, "ddpm")["metric"] == "fid"
    assert register(tmp_path, a, 9.0, metric="fid")  # better FID


def test_a_registered_checkpoint_never_changes_under_the_entry(tmp_path):
    run = ckpt(tmp_path / "run" / "artifacts" / "checkpoint.pt", b"first weights")
    register(tmp_path, run, 0.5)
    entry = Path(read_best(tmp_path, "ddpm")["checkpoint"])
    run.write_bytes(b"a rerun overwrote the artifact")  # same --name, worse model
    assert not register(tmp_path, run, 0.9)
    assert Path(read_best(tmp_path, "ddpm")["checkpoint"]) == entry
    assert entry.read_bytes() == b"first weights" and entry.parent.name == "checkpoints"


def draws(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def _hammer(storage: str, seed: int, n: int) -> None:
    for i, value in enumerate(draws(seed, n)):
        path = ckpt(Path(storage) / f"w{seed}" / f"{i}.pt", f"{seed}-{i}".encode())
        register(storage, path, value)


def test_two_processes_registering_at_once_leave_the_best(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), seed, 25)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert read_best(tmp_path, "ddpm")["value"] == min(draws(1, 25) + draws(2, 25))


def test_a_damaged_record_is_a_clear_error(tmp_path):
    a = ckpt(tmp_path / "a.pt")
    register(tmp_path, a, 0.5)
    (tmp_path / "registry" / "ddpm.json").write_text("{truncated")
    with pytest.raises(RegistryError, match="damaged"):
        read_best(tmp_path, "ddpm")
    with pytest.raises(RegistryError, match="damaged"):
        register(tmp_path, a, 0.1)


def test_a_job_keeps_its_run_when_the_registry_is_damaged(tmp_path, capsys):
    from jobs import finish

    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "ddpm.json").write_text("{truncated")
    a = ckpt(tmp_path / "a.pt")
    assert not finish.register_checkpoint(str(tmp_path), "ddpm", checkpoint=a, metric="val_loss",
                                          value=0.1, mode="min", config={}, source="x")
    assert "not registered" in capsys.readouterr().err and a.is_file()


def saved_run(storage: Path, name: str, **fields) -> None:
    from jobs.train_ddpm import DDPMJobConfig

    cfg = DDPMJobConfig(name=name, storage_path=str(storage), **fields)
    ckpt_dir = storage / name / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt_dir.mkdir(parents=True)
    import dataclasses

    from jobs.runs import mark_run_folder
    mark_run_folder(storage / name)  # as the job that created it did
    (ckpt_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))


def test_rerun_with_another_config_is_refused_unless_asked(tmp_path):
    from jobs.runs import check_rerun
    from jobs.train_ddpm import DDPMJobConfig

    saved_run(tmp_path, "r", lr=1e-3)
    same = DDPMJobConfig(name="r", storage_path=str(tmp_path), lr=1e-3, num_workers=2)
    check_rerun(same)  # same training config (workers may change): resumes as before
    other = DDPMJobConfig(name="r", storage_path=str(tmp_path), lr=2e-4, epochs=5)
    with pytest.raises(HW4Error, match=r"--epochs 20 -> 5, --lr 0.001 -> 0.0002"):
        check_rerun(other)
    check_rerun(DDPMJobConfig(name="r", storage_path=str(tmp_path), lr=2e-4, resume=True))
    changes = json.loads((tmp_path / "r" / "changes.json").read_text())
    assert changes[-1]["changed"] == {"lr": {"from": 1e-3, "to": 2e-4}}
    check_rerun(DDPMJobConfig(name="r", storage_path=str(tmp_path), lr=2e-4, overwrite=True))
    assert [p.name for p in (tmp_path / "r").iterdir()] == [".hw4-run"]  # the run's, emptied


def test_a_nan_entry_is_beaten_by_a_real_value_and_nan_is_never_registered(tmp_path):
    import json
    import math

    from hw4.registry import RegistryError, read_best, record_best, registry_path

    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"weights a")
    kw = dict(metric="val_loss", mode="min", config={}, source="s")
    with pytest.raises(RegistryError, match="never registered"):
        record_best(tmp_path, "ddpm", checkpoint=ckpt, value=math.nan, **kw)
    assert not registry_path(tmp_path, "ddpm").exists()
    # an entry written with NaN (by an older version, or by hand): any real value beats it
    record_best(tmp_path, "ddpm", checkpoint=ckpt, value=5.0, **kw)
    record = json.loads(registry_path(tmp_path, "ddpm").read_text())
    registry_path(tmp_path, "ddpm").write_text(json.dumps({**record, "value": float("nan")}))
    better = tmp_path / "b.pt"
    better.write_bytes(b"weights b")
    assert record_best(tmp_path, "ddpm", checkpoint=better, value=9.0, **kw)
    assert read_best(tmp_path, "ddpm")["value"] == 9.0


def test_a_record_without_a_value_is_a_one_line_error(tmp_path):
    import json

    from hw4.registry import RegistryError, record_best, registry_path

    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"weights")
    record_best(tmp_path, "vae", checkpoint=ckpt, value=1.0, metric="m", mode="min", config={},
                source="s")
    record = json.loads(registry_path(tmp_path, "vae").read_text())
    del record["value"]
    registry_path(tmp_path, "vae").write_text(json.dumps(record))
    with pytest.raises(RegistryError, match="damaged") as err:
        record_best(tmp_path, "vae", checkpoint=ckpt, value=0.5, metric="m", mode="min",
                    config={}, source="s")
    assert "\n" not in str(err.value)


def test_a_damaged_frozen_copy_is_written_again(tmp_path):
    from hw4.registry import frozen_copy

    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"the real weights")
    out = frozen_copy(tmp_path, "ddpm", ckpt)
    out.write_bytes(b"the real wei")  # cut short, as by a crash before the copy was synced
    assert frozen_copy(tmp_path, "ddpm", ckpt) == out
    assert out.read_bytes() == b"the real weights"


def test_a_held_registry_lock_is_a_clear_error_after_the_wait(tmp_path):
    import fcntl

    from hw4 import registry

    lock = registry.registry_path(tmp_path, "ddpm").with_suffix(".json.lock")
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as other:  # another writer, stuck
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(registry.RegistryError, match="stayed locked"):
            with registry.locked(tmp_path, "ddpm", wait_s=0.3):
                pass
    with registry.locked(tmp_path, "ddpm", wait_s=0.3):  # free again
        pass


def test_an_unlockable_registry_is_a_registry_error_not_a_traceback(tmp_path, monkeypatch):
    import fcntl

    from hw4 import registry

    def broken(_f, _mode):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(registry.RegistryError, match="No locks available"):
        with registry.locked(tmp_path, "ddpm"):
            pass


def test_an_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    import os

    from hw4 import atomic_files

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_files.write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert synced[-1] == str(tmp_path)  # the folder, after the file itself
