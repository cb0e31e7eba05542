import json
import shutil

import pytest

from hw4 import assets, data, train
from hw4.checkpoint import CheckpointError
from hw4.metrics import extract_features

from .conftest import needs_data


@needs_data
@pytest.mark.parametrize("dataset,floor", [("mnist", 0.97), ("fashion_mnist", 0.88)])
def test_pinned_classifiers_load_and_classify(dataset, floor):
    model = assets.load_classifier(dataset)
    test = data.load_dataset(dataset, "test", subset=2000, seed=0)
    acc = train.evaluate_classifier(model, data.make_loader(test, 500, shuffle=False))["accuracy"]
    assert acc >= floor
    assert extract_features(model.features, test.tensors[0][:10]).shape == (10, 128)


def test_a_changed_or_missing_classifier_is_refused(tmp_path, monkeypatch):
    shutil.copy(assets.classifier_path("mnist"), tmp_path / "mnist_classifier.pt")
    shutil.copy(assets.MANIFEST, tmp_path / "manifest.json")
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    monkeypatch.setattr(assets, "MANIFEST", tmp_path / "manifest.json")
    assets.load_classifier("mnist")  # an intact copy loads
    with open(tmp_path / "mnist_classifier.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="SHA-256"):
        assets.load_classifier("mnist")
    (tmp_path / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(CheckpointError, match="no pinned classifier"):
        assets.load_classifier("mnist")
