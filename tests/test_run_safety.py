"""What a run name and --overwrite may touch, and the run claim's locks (no Ray started)."""

import fcntl

import pytest

from hw4.errors import HW4Error
from hw4.registry import record_best
from jobs import evaluate, runs, train_ddpm, train_vae, tune_ddpm_schedule

from .conftest import cli_in_process, write_ddpm

BAD_NAMES = ["", ".", "..", "../other", "a/b", "/tmp/x", ".hidden", "a b", "x" * 101, "-rf", "ü"]


def storage_with_two_runs(root):
    """A storage folder as training leaves it: a registry and two runs."""
    for name in ("run-a", "run-b"):
        (root / name / "artifacts").mkdir(parents=True)
        (root / name / runs.RUN_MARKER).write_text("{}")
        ckpt = write_ddpm(root / name / "artifacts" / "checkpoint.pt")
    record_best(root, "ddpm", checkpoint=ckpt, metric="val_loss", value=1.0, mode="min",
                config={}, source=str(root / "run-b"))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_bad_name_is_refused_before_anything_is_touched(tmp_path, capsys, name):
    storage = tmp_path / "storage"
    before = storage_with_two_runs(storage)
    parent_before = sorted(p.name for p in tmp_path.iterdir())
    for main in (train_ddpm.main, train_vae.main):
        code, err = cli_in_process(main, [f"--name={name}", "--overwrite", "--storage-path",
                                          str(storage), "--smoke-test"], capsys)
        assert code == 2 and "--name must be one folder name" in err, err
        assert len(err.strip().splitlines()) == 1
    assert sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == parent_before


@pytest.mark.parametrize("main", [evaluate.main, tune_ddpm_schedule.main])
def test_sweep_and_report_names_are_checked_too(tmp_path, capsys, main):
    code, err = cli_in_process(main, ["--name", "..", "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and "--name must be one folder name" in err, err


def test_run_dir_refuses_a_bad_name_from_any_caller(tmp_path):
    with pytest.raises(HW4Error, match="one folder name"):
        runs.run_dir(str(tmp_path), "")
    assert runs.run_dir(str(tmp_path), "demo-ddpm.v2_1") == tmp_path.resolve() / "demo-ddpm.v2_1"
    # a sweep's trial: <sweep>-runs/<trial id>, each part a folder name
    trial = runs.run_dir(str(tmp_path), "s-runs/a1_00000")
    assert trial == tmp_path.resolve() / "s-runs" / "a1_00000"
    for bad in ("s-runs/..", "s/a1", "s-runs/a/b"):
        with pytest.raises(HW4Error, match="one folder name"):
            runs.run_dir(str(tmp_path), bad)


def test_overwrite_deletes_only_a_folder_of_ours(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    cfg = train_ddpm.DDPMJobConfig(name="notes", storage_path=str(tmp_path), overwrite=True)
    with pytest.raises(HW4Error, match="not a run folder of this project"):
        runs.check_rerun(cfg)
    assert (notes / "thesis.tex").read_text() == "years of work"
    # what a folder contains proves nothing: Ray's snapshot and checkpoints without the marker
    (notes / runs.RAY_SNAPSHOT).write_text("{}")
    (notes / "checkpoint_1").mkdir()
    (notes / "checkpoint_1" / "config.json").write_text("{}")
    with pytest.raises(HW4Error, match="not a run folder of this project"):
        runs.check_rerun(cfg)
    assert (notes / "thesis.tex").is_file()


def test_the_lock_helper_opens_read_write_and_takes_a_shared_lock(tmp_path):
    """NFSv4 emulates flock with byte-range locks, and a read lock needs a file open for reading
    (EBADF otherwise): the lock file must be open read-write."""
    held = runs._flock(tmp_path / "run" / runs.WORKERS_LOCK, fcntl.LOCK_SH, 0.0)
    assert held is not None and held.readable() and held.writable()
    other = runs._flock(tmp_path / "run" / runs.WORKERS_LOCK, fcntl.LOCK_SH, 0.0)
    assert other is not None  # shared: a second worker joins
    assert runs._flock(tmp_path / "run" / runs.WORKERS_LOCK, fcntl.LOCK_EX, 0.0) is None
    held.close(), other.close()


def refuse_lock(f, mode):
    raise OSError(9, "Bad file descriptor")  # what NFSv4 answers a read lock on a write-only file


def test_a_lock_that_fails_for_another_reason_is_one_line_naming_the_storage(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", refuse_lock)
    with pytest.raises(HW4Error, match="could not lock") as err:
        runs._flock(tmp_path / "run" / runs.DRIVER_LOCK, fcntl.LOCK_EX, 0.0)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_the_lock_file_is_closed_when_locking_fails(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def spy(*args, **kwargs):
        f = real_open(*args, **kwargs)
        opened.append(f)
        return f

    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr(fcntl, "flock", refuse_lock)
    with pytest.raises(HW4Error):
        runs._flock(tmp_path / runs.DRIVER_LOCK, fcntl.LOCK_EX, 0.0)
    assert opened and all(f.closed for f in opened)
