"""A run never deletes what it did not create: the folder a ``--name`` names is used only when a
run of this project created it (its marker), whatever the name and whatever the storage holds.
The driver is run up to the point where Ray would start (no Ray here)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw4.errors import HW4Error
from hw4.registry import record_best
from jobs import cli, driver, runs, train_ddpm, train_vae

from .conftest import cli_in_process, needs_data, write_ddpm


class RayWouldStart(Exception):
    """Raised where the driver would start Ray: everything before it has run."""


@pytest.fixture
def no_ray(monkeypatch):
    starts = []

    def refuse(**_kw):
        starts.append(1)
        raise RayWouldStart

    monkeypatch.setattr(driver, "init_ray", refuse)
    return starts


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its bytes' hash, or "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def demo_storage(root: Path) -> None:
    """A storage folder as the demo leaves it: a registry with a checkpoint, an evaluation report,
    a run of ours, a sweep's own folder, and a folder of the user's."""
    ours = root / "run-a"
    (ours / "artifacts").mkdir(parents=True)
    runs.mark_run_folder(ours)
    ckpt = write_ddpm(ours / "artifacts" / "checkpoint.pt")
    record_best(root, "ddpm", checkpoint=ckpt, metric="val_loss", value=1.0, mode="min",
                config={}, source=str(ours))
    (root / "eval" / "demo").mkdir(parents=True)
    (root / "eval" / "demo" / "report.json").write_text("{}")
    (root / "sweep").mkdir()
    (root / "sweep" / "tuner.pkl").write_bytes(b"tune's state")
    (root / "notes").mkdir()
    (root / "notes" / "thesis.tex").write_text("years of work")


def run_driver(storage: Path, name: str, *extra: str) -> None:
    cfg = train_ddpm.DDPMJobConfig(name=name, storage_path=str(storage.resolve()),
                                   **{k.removeprefix("--"): True for k in extra})
    driver.fit(lambda c: None, cfg, metric="val_loss", mode="min")


@needs_data  # the jobs load their test set (fail fast) before they claim the run's folder
@pytest.mark.parametrize("name", ["registry", "eval", "notes", "sweep"])
def test_a_folder_not_ours_is_refused_and_the_storage_is_byte_identical(tmp_path, capsys, name, no_ray):
    demo_storage(tmp_path)
    before = snapshot(tmp_path)
    for main in (train_ddpm.main, train_vae.main):
        for flags in ([], ["--overwrite"]):
            code, err = cli_in_process(main, ["--name", name, "--storage-path", str(tmp_path),
                                              "--smoke-test", *flags], capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert "reserved" in err or "not created by a run of this project" in err, err
    assert snapshot(tmp_path) == before
    assert not no_ray  # refused before Ray


@pytest.mark.parametrize("name", ["registry", "eval"])
def test_reserved_names_are_refused_before_they_exist(tmp_path, name, no_ray):
    with pytest.raises(HW4Error, match="reserved"):
        run_driver(tmp_path, name)
    assert not (tmp_path / name).exists()


def test_overwrite_on_a_new_name_just_starts(tmp_path, no_ray):
    with pytest.raises(RayWouldStart):
        run_driver(tmp_path, "fresh", "--overwrite")
    assert runs.is_run_folder(tmp_path / "fresh") and no_ray == [1]


def test_overwrite_of_our_run_keeps_its_marker_and_empties_the_rest(tmp_path, no_ray):
    with pytest.raises(RayWouldStart):
        run_driver(tmp_path, "mine")
    (tmp_path / "mine" / "checkpoint_0").mkdir()
    (tmp_path / "mine" / "checkpoint_0" / "config.json").write_text('{"lr": 1}')
    with pytest.raises(RayWouldStart):
        run_driver(tmp_path, "mine", "--overwrite")
    left = {p.name for p in (tmp_path / "mine").iterdir()}
    assert left == {runs.RUN_MARKER, runs.DRIVER_LOCK, runs.WORKERS_LOCK}


def test_a_symlink_to_a_run_of_ours_is_not_adopted(tmp_path, no_ray):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs.mark_run_folder(elsewhere)
    (elsewhere / "keep.txt").write_text("x")
    (tmp_path / "storage").mkdir()
    os.symlink(elsewhere, tmp_path / "storage" / "link")
    with pytest.raises(HW4Error, match="not created by a run"):
        run_driver(tmp_path / "storage", "link", "--overwrite")
    assert (elsewhere / "keep.txt").read_text() == "x"


# --- the property: generated names over generated storage layouts -------------------------------

LAYOUT_ENTRIES = {  # what may already be at a name, and how to make it
    "user folder": lambda p: (p.mkdir(), (p / "f.txt").write_text("user")),
    "empty folder": lambda p: p.mkdir(),
    "user file": lambda p: p.write_text("user file"),
    "ray-looking folder": lambda p: (p.mkdir(), (p / runs.RAY_SNAPSHOT).write_text("{}"),
                                     (p / "artifacts").mkdir(),
                                     (p / "artifacts" / "config.json").write_text("{}")),
    "run of ours": lambda p: (p.mkdir(), runs.mark_run_folder(p), (p / "old.pt").write_text("ours")),
}
NAMES = st.one_of(st.sampled_from(["registry", "eval", "notes", "run-a", "sweep", "a", "fresh"]),
                  st.from_regex(cli.NAME_PATTERN, fullmatch=True))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, layout=st.dictionaries(st.sampled_from(["notes", "run-a", "a", "fresh", "x.y"]),
                                          st.sampled_from(sorted(LAYOUT_ENTRIES)), max_size=4),
       overwrite=st.booleans())
def test_no_run_deletes_a_file_it_did_not_create(tmp_path, name, layout, overwrite, no_ray):
    storage = tmp_path / "s"
    shutil.rmtree(storage, ignore_errors=True)
    demo_storage(storage)
    for entry, kind in layout.items():
        if not (storage / entry).exists():
            LAYOUT_ENTRIES[kind](storage / entry)
    before = snapshot(storage)
    existed, was_ours = (storage / name).exists(), runs.is_run_folder(storage / name)
    try:
        run_driver(storage, name, *(["--overwrite"] if overwrite else []))
    except (HW4Error, RayWouldStart):
        pass
    after = snapshot(storage)
    ours = name if runs.is_run_folder(storage / name) and not (storage / name).is_symlink() else None
    for path, digest in before.items():
        inside_ours = ours is not None and (path == ours or path.startswith(ours + "/"))
        if not inside_ours:
            assert after.get(path) == digest, f"{path} changed by --name {name!r} over {layout}"
    if ours is not None and existed:  # the run used a folder that was there: only one of ours
        assert was_ours, f"adopted {name!r}, which no run of ours had made, over {layout}"
