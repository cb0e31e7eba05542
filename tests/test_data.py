import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hw4.data import (
    FOLDERS,
    data_root,
    load_dataset,
    load_tensors,
    make_loader,
    pin_data_dir,
    read_idx,
)
from hw4.errors import HW4Error
from hw4.viz import make_grid

from .conftest import ROOT, needs_data


@needs_data
@pytest.mark.parametrize("name,mean", [("mnist", 0.1307), ("fashion_mnist", 0.2861)])
def test_loads_full_train_split(name, mean):
    ds = load_dataset(name, "train")
    assert len(ds) == 60_000
    x, y = ds.tensors
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert float(x.mean()) == pytest.approx(mean, abs=1e-3)
    assert sorted(y.unique().tolist()) == list(range(10))
    assert len(load_dataset(name, "test")) == 10_000


@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_own_idx_reader_gives_torchvision_tensors(name):
    from torchvision import datasets

    images, labels = load_tensors(name, "test")
    root, _ = data_root()
    ref = getattr(datasets, FOLDERS[name])(root=str(root), train=False, download=False)
    assert torch.equal(images, ref.data.unsqueeze(1).float() / 255) and torch.equal(labels, ref.targets)


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.delenv("HW4_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data, where a download would go
    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(HW4Error, match="could not download mnist into data: Error downloading"):
        load_tensors("mnist", "test")


def test_a_file_that_is_not_idx_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))  # float32, not unsigned bytes
    with pytest.raises(HW4Error, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "f")
    (tmp_path / "g").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(4))
    with pytest.raises(HW4Error, match="4 bytes of data for shape"):
        read_idx(tmp_path / "g")


def test_importing_the_library_and_the_jobs_does_not_import_torchvision():
    """torchvision costs every Ray worker and replica about 1.5 s of start-up (it imports
    torch._dynamo); only a download imports it."""
    code = ("import sys, jobs.train_ddpm, jobs.train_vae, jobs.evaluate, serve.app\n"
            "assert 'torchvision' not in sys.modules\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("n, nrow", [(1, 8), (5, 2), (16, 4), (10, 10)])
@pytest.mark.parametrize("channels", [1, 3])
def test_make_grid_matches_torchvision(n, nrow, channels):
    from torchvision.utils import make_grid as reference

    images = torch.rand(n, channels, 7, 5)
    torch.testing.assert_close(make_grid(images, nrow=nrow), reference(images, nrow=nrow), rtol=0, atol=0)


@needs_data
def test_subset_normalisation_and_loader():
    a = load_dataset("mnist", "test", subset=100, seed=1)
    b = load_dataset("mnist", "test", subset=100, seed=1, normalization="symmetric")
    torch.testing.assert_close(a.tensors[0] * 2 - 1, b.tensors[0])
    assert len(a) == 100 and torch.equal(a.tensors[1], b.tensors[1])
    std = load_dataset("mnist", "test", subset=100, seed=1, normalization="standard")
    torch.testing.assert_close(std.tensors[0], (a.tensors[0] - 0.1307) / 0.3081)
    x, y = next(iter(make_loader(a, 32, shuffle=True)))
    assert x.shape == (32, 1, 28, 28)


def test_missing_data_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HW4_DATA_DIR", str(tmp_path))
    with pytest.raises(HW4Error, match="HW4_DATA_DIR"):
        load_dataset("mnist")
    with pytest.raises(HW4Error, match="unknown dataset"):
        load_dataset("cifar10")


def test_a_relative_data_dir_is_pinned_to_where_it_was_given(tmp_path, monkeypatch):
    """README's `HW4_DATA_DIR=../shared/data make test`: Ray Train starts each worker in its run's
    folder, where the relative path pointed nowhere (every training test failed)."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    monkeypatch.setenv("HW4_DATA_DIR", "../data")
    pin_data_dir()
    monkeypatch.chdir(ROOT)
    assert data_root() == (tmp_path.resolve() / "data", False)
    monkeypatch.delenv("HW4_DATA_DIR")
    pin_data_dir()  # unset stays unset: ./data and a download
    assert data_root() == (Path("data"), True)


def test_import_hw4_loads_no_ray():
    code = ("import sys, importlib, pkgutil, hw4\n"
            "for m in pkgutil.walk_packages(hw4.__path__, 'hw4.'): importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
            "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
