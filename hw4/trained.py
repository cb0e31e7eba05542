"""Trained models rebuilt from the checkpoints the training jobs write: the one place that knows
how a job's saved config maps to a model, which weights to use (EMA for the DDPM), and which
extra heads a VAE checkpoint carries. Evaluation, Serve and the theory report all load here."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from hw4 import precision, reverse, samplers
from hw4.checkpoint import CheckpointError, load_checkpoint, load_state
from hw4.diffusion import DiffusionSchedule
from hw4.errors import HW4Error
from hw4.guidance import GUIDANCE_INTERVAL, guided_model, interval_timesteps
from hw4.models import config_from_dict
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    LatentClassifier,
    LatentClassifierConfig,
)
from hw4.models.unet import UNet, UNetConfig
from hw4.registry import read_best


def resolve_checkpoint(storage: str | os.PathLike, family: str,
                       checkpoint: str | os.PathLike | None = None) -> Path:
    """An explicit checkpoint path, else the registry's best of ``family`` ("vae", "ddpm")
    under ``storage``. (A checkpoint's own ``kind`` names its architecture: "unet", ...)"""
    path = Path(checkpoint) if checkpoint else Path(read_best(storage, family)["checkpoint"])
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def training_history(path: str | os.PathLike) -> list[dict]:
    """The per-epoch metrics the training job wrote beside the artifact (none if absent or
    unreadable)."""
    try:
        return json.loads((Path(path).parent / "metrics.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []


def _expect_kind(state: dict, kind: str, path: Path) -> None:
    if state.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {state.get('kind')!r} model, not a {kind!r} one")


@dataclass
class TrainedVAE:
    """An AE/VAE with the latent classifiers trained on it (``None`` when the run had none)."""

    vae: Autoencoder
    probe: LatentClassifier | None
    finetune: LatentClassifier | None
    config: dict
    metrics: dict
    path: Path


def reconstruction(vae: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(decoder(mu(x))) with gradients (``Autoencoder.reconstruct`` runs without)."""
    return torch.sigmoid(vae.decoder(vae.encoder(x)[0]))


class Purified(torch.nn.Module):
    """Reconstruct-then-classify: the VAE as a purifier in front of a pixel classifier,
    ``classifier(sigmoid(decoder(mu(x))))``; differentiable, so attacks see through both."""

    def __init__(self, vae: Autoencoder, classifier: torch.nn.Module):
        super().__init__()
        self.vae, self.classifier = vae, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(reconstruction(self.vae, x))


def load_vae(path: str | os.PathLike) -> TrainedVAE:
    path = Path(path)
    state = load_checkpoint(path)
    _expect_kind(state, "autoencoder", path)
    cfg = state["config"]
    ae_cfg = config_from_dict(AutoencoderConfig, model_config(state))
    if state.get("model_config") is None and "model" in cfg:  # an older job config: --model ae|vae
        ae_cfg.variational = cfg["model"] == "vae"
    vae = load_state(Autoencoder(ae_cfg), state["model"], str(path)).eval()
    probe = finetune = None
    heads = state.get("extra", {}).get("classifiers")
    if heads:
        probe = LatentClassifier(vae.encoder, ae_cfg.latent_dim, LatentClassifierConfig(mode="probe"))
        load_state(probe.head, heads["probe_head"], f"{path} (probe head)")
        finetune = LatentClassifier(Autoencoder(ae_cfg).encoder, ae_cfg.latent_dim,
                                    LatentClassifierConfig(mode="finetune"))
        load_state(finetune, heads["finetune"], f"{path} (fine-tuned classifier)")
        probe.eval(), finetune.eval()
    return TrainedVAE(vae, probe, finetune, cfg, state.get("metrics", {}), path)


class SamplingStopped(Exception):
    """A sampler run (or any loop of network calls) ended early on purpose: its caller left."""


class StopSignal(Protocol):
    """What a long run polls between network calls: a ``threading.Event`` or anything with
    ``is_set`` (Serve's flag is also set once every caller sharing a batch has left)."""

    def is_set(self) -> bool: ...


def stoppable(net: Callable[..., torch.Tensor], stop: StopSignal) -> Callable[..., torch.Tensor]:
    """``net`` that refuses to run once ``stop`` is set (raising ``SamplingStopped``)."""
    def call(*args: torch.Tensor) -> torch.Tensor:
        if stop.is_set():
            raise SamplingStopped
        return net(*args)
    return call


@dataclass
class ChainStep:
    """One step of a sampler run: ``step`` of ``total``; the x-hat-0 preview (n, 1, 28, 28) in
    [0, 1] when one was asked for at this step; the samples after the last step."""

    step: int
    total: int
    preview: torch.Tensor | None
    final: torch.Tensor | None


@dataclass
class TrainedDDPM:
    """A U-Net with its EMA weights, the schedule it was trained with and its target."""

    model: UNet
    schedule: DiffusionSchedule
    prediction: Literal["eps", "x0", "v"]
    config: dict
    metrics: dict
    path: Path

    @classmethod
    def from_model(cls, model: UNet, config: Any, path: Path | None = None) -> TrainedDDPM:
        """A model in training (e.g. the EMA copy) with its job config's schedule and target."""
        cfg = config if isinstance(config, dict) else dataclasses.asdict(config)
        sched = DiffusionSchedule.named(cfg.get("schedule", "linear"), int(cfg.get("timesteps", 1000)))
        return cls(model, sched, cfg.get("prediction", "eps"), cfg, {}, path)

    @property
    def timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def conditional(self) -> bool:
        return self.model.null_label is not None

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_classes

    def sample(self, n: int, *, method: str = samplers.DEFAULT_SAMPLER, steps: int | None = None,
               eta: float = 0.0, labels: torch.Tensor | None = None,
               guidance: float | torch.Tensor = 0.0,
               interval: tuple[float, float] | None = GUIDANCE_INTERVAL,
               seed: int = 0, generator: reverse.Generators = None,
               device: str | torch.device = "cpu", progress: bool = False,
               stop: StopSignal | None = None) -> torch.Tensor:
        """``n`` samples in [0, 1], (n, 1, 28, 28); the same seed gives the same images.
        ``labels`` (n,): the class of each row (``num_classes``, the null label, for an
        unguided unconditional row) for a conditional model, guided with weight ``guidance`` (a
        number, or one per row) at the noise levels of ``interval`` (fractions of T; None: all).
        ``generator`` (e.g. per-request blocks of a served batch) replaces the seed. Setting
        ``stop`` (from another thread) ends the run with ``SamplingStopped`` before its next
        network call."""
        model = self.network(n, labels, guidance, interval, device, stop)
        gen = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
        x = samplers.sample(model, self.schedule, (n, 1, 28, 28), method=method, steps=steps,
                             eta=eta, prediction=self.prediction, generator=gen, device=device,
                             progress=progress)
        return ((x + 1) / 2).clamp(0, 1).cpu()

    def sample_chain(self, n: int, *, every: int = 1, method: str = samplers.DEFAULT_SAMPLER,
                     steps: int | None = None, eta: float = 0.0,
                     labels: torch.Tensor | None = None, guidance: float | torch.Tensor = 0.0,
                     interval: tuple[float, float] | None = GUIDANCE_INTERVAL,
                     seed: int = 0, device: str | torch.device = "cpu") -> Iterator[ChainStep]:
        """``sample`` one network call at a time: a ``ChainStep`` after every step, with the
        x-hat-0 preview (in [0, 1]) after the first step (a watcher sees the chain after one
        network call), then every ``every`` steps, and the samples after the last, which equal
        ``sample``'s for the same arguments. Whoever stops iterating stops the sampler:
        no network call runs after the step in progress."""
        model = self.network(n, labels, guidance, interval, device)
        gen = torch.Generator(device=device).manual_seed(seed)
        total = len(samplers.timesteps(method, self.schedule, steps))
        chain = samplers.sample_progressive(model, self.schedule, (n, 1, 28, 28), method=method,
                                             steps=steps, eta=eta, prediction=self.prediction,
                                             generator=gen, device=device)
        for i in range(total):
            with torch.inference_mode():
                out = next(chain)
            last = i + 1 == total
            preview = None
            if last or i == 0 or (i + 1) % every == 0:
                preview = ((out.pred_original_sample + 1) / 2).clamp(0, 1).cpu()
            final = ((out.prev_sample + 1) / 2).clamp(0, 1).cpu() if last else None
            yield ChainStep(i + 1, total, preview, final)

    def draw(self, requests: list[samplers.SampleRequest], *, device: str | torch.device = "cpu",
             stop: StopSignal | None = None) -> list[torch.Tensor]:
        """The samples of ``requests`` (one ``batch_key``: the same sampler settings), drawn as
        one batch: a tensor per request in [0, 1], each with its own seed, labels and guidance
        (``samplers.batch_rows``), so that it gets the images it would get alone."""
        if len({r.batch_key() for r in requests}) != 1:
            raise HW4Error("requests drawn as one batch need the same sampler settings")
        first = requests[0]
        labels, guidance = samplers.batch_rows(requests, self.model.null_label)
        blocks = [(torch.Generator().manual_seed(r.seed), r.n) for r in requests]
        images = self.sample(sum(r.n for r in requests), method=first.sampler, steps=first.steps,
                             eta=first.eta, labels=labels, guidance=guidance, generator=blocks,
                             device=device, stop=stop)
        return list(images.split([r.n for r in requests]))

    def chain(self, req: samplers.SampleRequest, *, every: int = 1,
              device: str | torch.device = "cpu") -> Iterator[ChainStep]:
        """``sample_chain`` of one request, its rows labelled as ``draw`` labels them."""
        labels, guidance = samplers.batch_rows([req], self.model.null_label)
        return self.sample_chain(req.n, every=every, method=req.sampler, steps=req.steps,
                                 eta=req.eta, labels=labels, guidance=guidance, seed=req.seed,
                                 device=device)

    def network(self, n: int, labels: torch.Tensor | None, guidance: float | torch.Tensor,
                interval: tuple[float, float] | None = GUIDANCE_INTERVAL,
                device: str | torch.device = "cpu", stop: StopSignal | None = None):
        """The network on ``device`` as the samplers call it, ``model(x_t, t)``: in eval mode and
        the layout sampling runs in, ``labels`` (n,) checked and guided with weight ``guidance``
        within ``interval`` (fractions of T), refusing to run once ``stop`` is set."""
        if labels is not None:
            labels = self.check_labels(labels, n)
        net = self.model.to(device).eval()
        net.channels_last = precision.channels_last(device, None)  # sampling runs in fp32
        return guided_model(net if stop is None else stoppable(net, stop), labels, guidance,
                            self.model.null_label, interval_timesteps(self.timesteps, interval))

    def check_labels(self, labels: torch.Tensor | list[int], n: int) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if not self.conditional:
            raise HW4Error("this DDPM is unconditional: it takes no labels")
        if labels.shape[0] != n:
            raise HW4Error(f"{labels.shape[0]} labels for {n} samples: give one per sample")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) <= self.num_classes):
            raise HW4Error(f"labels must be in 0..{self.num_classes - 1} "
                           f"({self.num_classes} for unconditional)")
        return labels


def model_config(state: dict) -> dict:
    """The model's own constructor config; checkpoints from before it was saved apart carry
    only the job's config, whose model fields have the same names."""
    return state.get("model_config") or state["config"]


def unet_from_state(state: dict, source: str = "checkpoint") -> UNet:
    """The U-Net of a DDPM checkpoint with its EMA weights (the raw weights if it has no EMA)."""
    model = UNet(config_from_dict(UNetConfig, model_config(state)))
    ema = state.get("ema")
    weights, what = (ema["shadow"], "EMA weights") if ema else (state["model"], "weights")
    return load_state(model, weights, f"{source} ({what})").eval()


def ddpm_from_state(state: dict, path: Path | None = None) -> TrainedDDPM:
    trained = TrainedDDPM.from_model(unet_from_state(state, str(path or "checkpoint")),
                                     state["config"], path)
    trained.metrics = state.get("metrics", {})
    return trained


def load_ddpm(path: str | os.PathLike) -> TrainedDDPM:
    path = Path(path)
    state = load_checkpoint(path)
    _expect_kind(state, "unet", path)
    return ddpm_from_state(state, path)
