import pytest
import torch

from hw4.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from hw4.models import build_model
from hw4.models.autoencoder import Autoencoder, AutoencoderConfig


def make(tmp_path, latent=4):
    model = Autoencoder(AutoencoderConfig(latent_dim=latent))
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "checkpoint.pt", kind="autoencoder", config={"latent_dim": latent},
                           model=model, optimizer=opt, step=7, epoch=2, metrics={"loss": 1.5})
    return model, path


def test_round_trip(tmp_path):
    model, path = make(tmp_path)
    state = load_checkpoint(path)
    assert state["step"] == 7 and state["epoch"] == 2 and state["metrics"] == {"loss": 1.5}
    rebuilt = load_state(build_model(state["kind"], state["config"]), state["model"])
    for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert load_checkpoint(tmp_path)["step"] == 7  # a folder holding checkpoint.pt also works
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    _, path = make(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an hw4 checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_refuses_pickled_code(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary objects is refused, not executed."""
    torch.save({"format": 1, "obj": Autoencoder}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "evil.pt")


def test_mismatched_architecture(tmp_path):
    _, path = make(tmp_path, latent=4)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_state(Autoencoder(AutoencoderConfig(latent_dim=9)), load_checkpoint(path)["model"])


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, path = make(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, kind="autoencoder", config={}, model=model, step=99)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert not list(tmp_path.glob(".*tmp"))
