"""Framework-free training steps, EMA and LR schedules. Ray workers and plain scripts call the
same code; ``hw4.epochs`` runs a step over an epoch.

A step takes a model (bare or DDP-wrapped), a batch already on the right device, and an
optimizer; it returns a dict of detached scalar tensors, left on the device: reading a number
back (``.item()``) would make the host wait for the accelerator after every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hw4 import diffusion, objectives
from hw4.checkpoint import unwrap
from hw4.diffusion import DiffusionSchedule, LossWeight, Prediction
from hw4.errors import HW4Error
from hw4.models.autoencoder import reparameterize
from hw4.objectives import Reconstruction

EMAWarmup = Literal["ramp", "power", "half-life"]
EMA_WARMUPS = ("ramp", "power", "half-life")


def ema_decay_at(n: int, cap: float, warmup: EMAWarmup = "ramp") -> float:
    """The EMA decay at update ``n`` (1, 2, ...), never above ``cap``. Early on an average with
    the cap's decay would be dominated by the random init, so each rule ramps it up:
    ``ramp``: (1 + n) / (10 + n) (TensorFlow's ExponentialMovingAverage with num_updates);
    ``power``: 1 - (1 + n)^(-2/3) (diffusers' EMAModel warm-up, inv_gamma 1, power 2/3);
    ``half-life``: 0.5^(1 / h) with a half-life of h = 0.05 n updates (EDM's ema_rampup_ratio),
    so the average always spans about the last 5-10% of training until the cap takes over."""
    if warmup == "ramp":
        d = (1 + n) / (10 + n)
    elif warmup == "power":
        d = 1 - (1 + n) ** (-2 / 3)
    elif warmup == "half-life":
        d = 0.5 ** (1 / max(0.05 * n, 1e-8))
    else:
        raise HW4Error(f"unknown EMA warm-up {warmup!r}; use one of {', '.join(EMA_WARMUPS)}")
    return min(cap, d)


class EMA:
    """Exponential moving average of a model's weights, its decay warmed up by ``warmup``."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: EMAWarmup = "ramp"):
        ema_decay_at(1, decay, warmup)  # an unknown rule fails here, not at the first step
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = ema_decay_at(self.num_updates, self.decay, self.warmup)
        floats, others = ([], []), ([], [])
        for k, v in unwrap(model).state_dict().items():
            pair = floats if v.dtype.is_floating_point else others
            pair[0].append(self.shadow[k])
            pair[1].append(v.detach())
        # one fused kernel per dtype/device group instead of one lerp per tensor
        if floats[0]:
            torch._foreach_lerp_(floats[0], floats[1], 1 - d)
        if others[0]:
            torch._foreach_copy_(others[0], others[1])

    def copy_to(self, model: nn.Module) -> nn.Module:
        unwrap(model).load_state_dict(self.shadow)
        return model

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.warmup = state.get("warmup", "ramp")  # checkpoints from before the choice: ramp
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


LRSchedule = Literal["constant", "cosine"]
LR_SCHEDULES = ("constant", "cosine")


def warmup_lambda(warmup_steps: int, schedule: LRSchedule = "constant", total_steps: int = 0,
                  final_fraction: float = 0.01) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: linear from ~0 to 1 over ``warmup_steps``; then 1
    (``constant``), or a half cosine from 1 down to ``final_fraction`` at ``total_steps``
    (``cosine``; Loshchilov & Hutter 2017 without restarts), held there if training runs on."""
    if schedule not in LR_SCHEDULES:
        raise HW4Error(f"unknown LR schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if schedule == "cosine" and total_steps <= warmup_steps:
        raise HW4Error(f"a cosine LR schedule needs more steps ({total_steps}) than warm-up "
                       f"({warmup_steps})")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def make_optimizer(params: Iterable[nn.Parameter], lr: float,
                   device: torch.device | str = "cpu", **kwargs) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for every parameter, same math)."""
    return torch.optim.AdamW(params, lr=lr, fused=torch.device(device).type == "cuda", **kwargs)


def _optimize(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
              grad_clip: float | None = None) -> torch.Tensor:
    """Backward, optional global-norm clipping, step. Returns the pre-clip gradient norm (a
    tensor on the device: clipping scales by min(1, clip / norm) without a host sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return norm.detach()


# --- autoencoder / VAE ------------------------------------------------------------------------

def autoencoder_losses(model: nn.Module, x: torch.Tensor, *, beta: float = 1.0,
                       reconstruction: Reconstruction = "bernoulli", free_bits: float = 0.0,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Scalar loss, batch-mean metrics (detached tensors) and the per-dimension KL (N, D)
    (None for an AE)."""
    out = model(x, generator=generator)
    recon = objectives.reconstruction_nll(reconstruction, out.logits, x)  # (N,)
    if out.log_var is None:
        loss = recon.mean()
        return loss, {"loss": loss.detach(), "recon": recon.mean().detach()}, None
    kl_dim = objectives.gaussian_kl_per_dim(out.mu, out.log_var)  # (N, D)
    terms = objectives.beta_elbo(recon, kl_dim.sum(1), beta)
    if free_bits > 0:
        loss = recon.mean() + beta * objectives.free_bits_kl(kl_dim, free_bits)
    else:
        loss = terms.loss.mean()
    metrics = {"loss": loss.detach(), "recon": terms.recon.mean().detach(),
               "kl": terms.kl.mean().detach(), "elbo": terms.elbo.mean().detach()}
    return loss, metrics, kl_dim


def autoencoder_train_step(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer,
                           **loss_kwargs) -> dict[str, torch.Tensor]:
    model.train()
    loss, metrics, _ = autoencoder_losses(model, x, **loss_kwargs)
    metrics["grad_norm"] = _optimize(loss, model, optimizer)
    return metrics


@torch.no_grad()
def evaluate_autoencoder(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                         reconstruction: Reconstruction = "bernoulli",
                         active_threshold: float = 0.01) -> dict:
    """Test-set ELBO parts (one posterior sample), KL per dim and active units.

    A unit is active when Cov_x(E_q[z_d | x]) > ``active_threshold`` (Burda et al. 2016).
    """
    model.eval()
    sums: dict[str, float] = {}
    kl_dim_sum, mus, n = None, [], 0
    gen = torch.Generator(device=device).manual_seed(0)
    for x, _ in loader:
        x = x.to(device)
        mu, log_var = unwrap(model).encoder(x)
        if log_var is None:  # AE: only the reconstruction
            recon = objectives.reconstruction_nll(reconstruction, unwrap(model).decoder(mu), x)
            sums["recon"] = sums.get("recon", 0.0) + float(recon.sum())
        else:
            z = reparameterize(mu, log_var, gen)
            recon = objectives.reconstruction_nll(reconstruction, unwrap(model).decoder(z), x)
            kl_dim = objectives.gaussian_kl_per_dim(mu, log_var)
            kl_dim_sum = kl_dim.sum(0) if kl_dim_sum is None else kl_dim_sum + kl_dim.sum(0)
            for k, v in (("recon", recon), ("kl", kl_dim.sum(1))):
                sums[k] = sums.get(k, 0.0) + float(v.sum())
        mus.append(mu)
        n += x.shape[0]
    out = {k: v / n for k, v in sums.items()}
    mu_all = torch.cat(mus)  # (N, D)
    out["active_units"] = int((mu_all.var(0) > active_threshold).sum())
    if kl_dim_sum is not None:
        out["elbo"] = -(out["recon"] + out["kl"])
        out["kl_per_dim"] = (kl_dim_sum / n).tolist()
    out["loss"] = out["recon"] + out.get("kl", 0.0)
    return out


# --- classifiers ------------------------------------------------------------------------------

def classifier_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    _optimize(loss, model, optimizer)
    return {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean().detach()}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += x.shape[0]
    return {"loss": loss / n, "accuracy": correct / n}


# --- DDPM -------------------------------------------------------------------------------------

def draw_timesteps_and_noise(x0: torch.Tensor, num_timesteps: int,
                             generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{0..T-1} (N,) and eps ~ N(0, I) like x0, drawn on x0's device (``generator`` must
    live there too): no host-to-device copy per step."""
    t = torch.randint(0, num_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    return t, torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)


def ddpm_train_step(model: nn.Module, schedule: DiffusionSchedule, x0: torch.Tensor,
                    optimizer: torch.optim.Optimizer, *, labels: torch.Tensor | None = None,
                    p_uncond: float = 0.0, prediction: Prediction = "eps",
                    weighting: LossWeight = "uniform", snr_gamma: float = 5.0,
                    ema: EMA | list[EMA] | None = None,
                    grad_clip: float | None = 1.0, autocast_dtype: torch.dtype | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One denoising-loss step on x0 in [-1, 1]: uniform t, fresh noise, the loss weighted per
    sample (``diffusion.loss_weights``), clip, step, EMA (or several, each with its own rule).

    With ``labels`` (a class-conditional model) each label is replaced by the model's null label
    with probability ``p_uncond`` (the homework's training algorithm)."""
    model.train()
    t, noise = draw_timesteps_and_noise(x0, schedule.num_timesteps, generator)
    if labels is not None and p_uncond > 0:
        labels = diffusion.drop_labels(labels, p_uncond, unwrap(model).null_label, generator)
    ctx = (torch.autocast(x0.device.type, dtype=autocast_dtype) if autocast_dtype
           else nullcontext())
    with ctx:
        loss = diffusion.training_losses(model, schedule, x0, t, noise, prediction, labels,
                                         weighting, snr_gamma).mean()
    norm = _optimize(loss.float(), model, optimizer, grad_clip)
    for average in ema if isinstance(ema, list) else [ema] if ema is not None else []:
        average.update(model)
    return {"loss": loss.detach().float(), "grad_norm": norm}


@torch.no_grad()
def ddpm_validation_loss(model: nn.Module, schedule: DiffusionSchedule, loader: Iterable, *,
                         prediction: Prediction = "eps", device: torch.device | str = "cpu",
                         seed: int = 0, conditional: bool = False) -> dict[str, float]:
    """Denoising loss on held-out data with seeded t and noise, so epochs compare fairly. A
    conditional model is scored on the true labels (the guided sampler's conditional half)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for x0, y in loader:
        t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, t, noise = x0.to(device), t.to(device), noise.to(device)
        labels = y.to(device) if conditional else None
        total += float(diffusion.training_losses(model, schedule, x0, t, noise, prediction,
                                                 labels).sum())
        n += x0.shape[0]
    return {"loss": total / n}
