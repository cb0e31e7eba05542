import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from hw4.checkpoint import save_checkpoint
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    LatentClassifier,
    LatentClassifierConfig,
)
from hw4.models.unet import UNet, UNetConfig

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


# --- tiny checkpoints in the format the training jobs write (no training) ---------------------

VAE_CFG = dict(model="vae", latent_dim=4, channels=8, hidden=32, beta=1.0)
DDPM_CFG = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[2],
                num_heads=2, groups=4, dropout=0.0, schedule="linear", timesteps=20, prediction="eps")


def write_vae(path, with_heads=True):
    vae = Autoencoder(AutoencoderConfig(latent_dim=4, channels=8, hidden=32))
    extra = {}
    if with_heads:
        probe = LatentClassifier(vae.encoder, 4, LatentClassifierConfig(mode="probe"))
        fine = LatentClassifier(Autoencoder(vae.config).encoder, 4,
                                LatentClassifierConfig(mode="finetune"))
        extra["classifiers"] = {"probe_head": probe.head.state_dict(),
                                "finetune": fine.state_dict(), "optimizers": {}}
    return save_checkpoint(path, kind="autoencoder", config=VAE_CFG, model=vae,
                           metrics={"val_loss": 1.0}, extra=extra)


def write_ddpm(path, num_classes: int | None = 10):
    """A tiny DDPM checkpoint, class-conditional (10 digits + the null label) by default."""
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                     groups=4, dropout=0.0, num_classes=num_classes)
    unet = UNet(cfg)
    ema = {"decay": 0.9, "shadow": {k: v + 0.01 for k, v in unet.state_dict().items()}}
    return save_checkpoint(path, kind="unet", config={**DDPM_CFG, "conditional": bool(num_classes)},
                           model_config=dataclasses.asdict(cfg), model=unet, ema=ema,
                           metrics={"val_loss": 1.0})


def make_storage(root: Path) -> Path:
    """A storage folder whose registry points at a tiny VAE and a tiny DDPM."""
    from hw4.registry import record_best

    for kind, write in (("vae", write_vae), ("ddpm", write_ddpm)):
        path = write(root / kind / "checkpoint.pt")
        record_best(root, kind, checkpoint=path, metric="val_loss", value=1.0, mode="min",
                    config={}, source=str(root / kind))
    return root


def stop_ray_head(gcs_port: int) -> None:
    """Stop the processes of the local Ray head started with ``--port=gcs_port``, by PID, and
    leave any other Ray on this machine alone (``ray stop`` would stop them all)."""
    def mine() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if proc.name.isdigit() and int(proc.name) != os.getpid() and any(
                    a.endswith(f":{gcs_port}".encode()) or a in (f"--port={gcs_port}".encode(),
                                                                 f"--gcs_server_port={gcs_port}".encode())
                    for a in args):
                pids.append(int(proc.name))
        return pids

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in mine():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while mine() and time.time() < deadline:
            time.sleep(0.5)
