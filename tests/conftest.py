import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def have_data() -> bool:
    d = os.environ.get("HW4_DATA_DIR")
    return bool(d) and (Path(d) / "MNIST" / "raw").is_dir()


needs_data = pytest.mark.skipif(
    not have_data(), reason="set HW4_DATA_DIR to a folder with MNIST/ and FashionMNIST/ (CI does)"
)
