import subprocess
import sys

import pytest
import torch

from hw4.data import load_dataset, make_loader
from hw4.errors import HW4Error

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


def test_import_hw4_loads_no_ray():
    code = ("import sys, importlib, pkgutil, hw4\n"
            "for m in pkgutil.walk_packages(hw4.__path__, 'hw4.'): importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
            "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
