"""The DDPM job's configuration: its flags (one per field), the recipe every preset trains, and
the presets (``--preset full|small|smoke``), each a typed set of field values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from hw4 import samplers
from hw4.diffusion import ZERO_TERMINAL_SNR
from hw4.models.unet import UNetConfig
from jobs import cli
from jobs.cli import opt

_UNET = UNetConfig()
# the U-Net's fields that are flags of the job (flat: --base-channels), with their help; the
# config itself is hw4.models.unet.UNetConfig, nested in the job's as ``model``
UNET_FLAGS = {"base_channels": "U-Net width", "channel_mults": "width per level",
              "num_res_blocks": "ResNet blocks per level",
              "attention_resolutions": "downsample factors that attend",
              "num_heads": "attention heads", "dropout": "dropout in ResNet blocks",
              "groups": "GroupNorm groups"}
# The recipe every preset trains, chosen by bench/recipe.py's ablation at the demo's budget, judged
# by both classifiers and the background share (docs/sweeps.md, "The recipe"): the v target,
# Min-SNR-5 loss weights and a cosine LR decay. The job's defaults are read from here.
RECIPE = dict(prediction="v", loss_weight="min-snr", lr_schedule="cosine")


@dataclass
class DDPMJobConfig(cli.RunOptions):
    name: str = opt("ddpm", "run name; the same name resumes")
    train_subset: int | None = opt(None, "train on this many MNIST images")
    val_subset: int = opt(2000, "held-out images for the validation loss")
    model: UNetConfig = cli.nested(UNetConfig, "the U-Net (its class count set by --conditional)",
                                   UNET_FLAGS)
    conditional: bool = opt(True, "class-conditional U-Net (the homework's), with a null label")
    p_uncond: float = opt(0.1, "probability that a training label is dropped to the null label")
    guidance: float = opt(1.0, "guidance weight w of sample grids and FIDs (0: no guidance)")
    schedule: Literal["linear", "cosine", "sigmoid"] = opt("linear", "noise schedule")
    timesteps: int = opt(1000, "diffusion steps T")
    prediction: Literal["eps", "x0", "v"] = opt(RECIPE["prediction"], "network target")
    loss_weight: Literal["uniform", "min-snr"] = opt(
        RECIPE["loss_weight"],
        "per-timestep loss weight: min-snr = min(SNR, gamma) in x0 space (Hang et al.)")
    snr_gamma: float = opt(5.0, "gamma of --loss-weight min-snr")
    epochs: int = opt(20, "passes over the training set (with --train-minutes: at most)")
    train_minutes: float | None = opt(
        None, "train for this much wall-clock instead: the step count is fixed at the start "
              "from the time of a few steps (so the cosine decay knows its length); the last "
              "epoch is cut short")
    batch_size: int = opt(128, "global batch size (split over workers)")
    lr: float = opt(2e-4, "AdamW learning rate")
    warmup_steps: int = opt(500, "linear LR warm-up steps")
    lr_schedule: Literal["constant", "cosine"] = opt(
        RECIPE["lr_schedule"], "after the warm-up: constant, or cosine decay to 1%% at the last step")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    ema_decay: float = opt(0.999, "EMA decay of the weights (the cap of its warm-up)")
    ema_warmup: Literal["ramp", "power", "half-life"] = opt(
        "ramp", "how the EMA decay rises to --ema-decay (hw4.train.ema_decay_at)")
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "autocast: auto = bf16 on CUDA at >= 512 images per worker and on a CPU with "
                "AVX-512 BF16 or AMX, else fp32")
    compile: bool = opt(False, "torch.compile the U-Net (pays off on GPUs; minutes to compile)")
    sample_every: int = opt(5, "epochs between TensorBoard sample grids")
    num_samples: int = opt(64, "images in samples.png")
    sampler: Literal[samplers.NAMES] = opt(  # type: ignore[valid-type]
        samplers.DEFAULT_SAMPLER, "sampler of sample grids and FIDs (hw4.samplers)")
    sample_steps: int | None = opt(None, "its network calls (default: the sampler's own)")
    sample_eta: float = opt(0.0, "DDIM's eta for sample grids and FIDs (1: DDPM-like noise)")
    fid_every: int = opt(0, "epochs between FIDs of DDIM samples (0: none; sweeps use it)")
    fid_samples: int = opt(500, "samples (and real images) per FID")

    def validate(self) -> None:
        super().validate()
        c = cli.check
        c(self.timesteps >= 2, f"--timesteps must be >= 2, got {self.timesteps}")
        c(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        c(self.train_minutes is None or self.train_minutes > 0,
          f"--train-minutes must be positive, got {self.train_minutes}")
        c(self.batch_size >= self.num_workers, "--batch-size must be at least --num-workers")
        c(self.lr > 0, f"--lr must be positive, got {self.lr}")
        c(0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        c(self.snr_gamma > 0, f"--snr-gamma must be positive, got {self.snr_gamma}")
        c(self.schedule not in ZERO_TERMINAL_SNR or self.prediction != "eps",
          f"--schedule {self.schedule} needs --prediction v or x0: at SNR 0 eps says nothing of x0")
        c(0 <= self.p_uncond <= 1, f"--p-uncond must be in [0, 1], got {self.p_uncond}")
        c(self.guidance >= 0, f"--guidance must be >= 0, got {self.guidance}")
        c(self.sample_steps is None or 1 <= self.sample_steps <= self.timesteps,
          "--sample-steps must be in 1..--timesteps")
        c(0 <= self.sample_eta <= 1, f"--sample-eta must be in [0, 1], got {self.sample_eta}")
        m = self.model
        c(len(m.channel_mults) >= 1, "--channel-mults needs at least one level")
        c(self.fid_every >= 0 and self.fid_samples >= 2, "--fid-every >= 0, --fid-samples >= 2")
        widths = [m.base_channels * k for k in m.channel_mults] + [m.base_channels]
        c(all(w % m.groups == 0 and w % m.num_heads == 0 for w in widths),
          f"--groups {m.groups} and --num-heads {m.num_heads} must divide every width {widths}")

    def unet(self) -> UNetConfig:
        """The U-Net to build: ``model`` with the class count ``--conditional`` implies."""
        return dataclasses.replace(self.model, num_classes=NUM_CLASSES if self.conditional else None)


NUM_CLASSES = 10  # MNIST digits
# The small U-Net and optimiser settings that fit a 2-core CPU's budget: make demo and the sweeps
SMALL = dict(base_channels=16, channel_mults=(1, 2, 4), attention_resolutions=(4,), dropout=0.0,
             lr=1e-3, warmup_steps=100, ema_decay=0.995)
SMOKE = dict(train_subset=256, val_subset=64, base_channels=8, channel_mults=(1, 2),
             attention_resolutions=(2,), num_heads=2, groups=4, timesteps=50, epochs=2,
             batch_size=32, warmup_steps=2, num_samples=10, sample_steps=5, sample_every=1)
PRESETS = {"full": {}, "small": SMALL, "smoke": {**SMOKE, "smoke_test": True}}


def _flags(values: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for k, v in values.items())


PRESET_HELP = (f"full (the default): the homework's U-Net (--base-channels {_UNET.base_channels} "
               f"--channel-mults {' '.join(map(str, _UNET.channel_mults))}); small: the demo's "
               f"({_flags(SMALL)}); smoke: a tiny one for tests. Every preset trains the recipe "
               f"chosen by the ablation: {_flags(RECIPE)}")
