"""The homework's diffusion figures: the forward process under each noise schedule with its SNR,
and the reverse process (x_t and the predicted x_0) along a chain of each sampler from one x_T.
``python -m hw4.figures`` draws them with the others."""

from __future__ import annotations

from pathlib import Path

import torch

from hw4 import diffusion, samplers
from hw4.diffusion import SCHEDULES, DiffusionSchedule
from hw4.trained import TrainedDDPM
from hw4.viz import TIGHT, image_rows, pyplot, save_figure


def forward_process(x0: torch.Tensor, path: Path, T: int = 1000,
                    ts: tuple[int, ...] = (0, 50, 100, 200, 300, 500, 700, 850, 999)) -> dict:
    """One image at x_t for each schedule, the same noise, with SNR = abar / (1 - abar) per column."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    rows, snr = [], {}
    for name in SCHEDULES:
        s = DiffusionSchedule.named(name, T)
        t = torch.tensor(ts)
        x0s, noises = (x0 * 2 - 1).expand(len(ts), -1, -1, -1), noise.expand(len(ts), -1, -1, -1)
        xt = diffusion.add_noise(s, x0s, noises, t)  # (len(ts), 1, 28, 28)
        rows.append(((xt + 1) / 2).clamp(0, 1))
        ab = s.alphas_cumprod[t]
        snr[name] = (ab / (1 - ab)).tolist()
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(ts), figsize=(1.05 * len(ts) + 1.2, 1.3 * len(rows) + 0.5),
                             squeeze=False)
    for i, (name, row) in enumerate(zip(SCHEDULES, rows, strict=True)):
        for j, t in enumerate(ts):
            ax = axes[i][j]
            ax.imshow(row[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(f"SNR {snr[name][j]:.2g}", fontsize=7)
            if i == 0:
                ax.set_title(f"t = {t}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"Forward process q(x_t | x_0), T = {T}: the same image and noise under each schedule",
                 fontsize=10)
    save_figure(fig, path, **TIGHT)
    return {"timesteps": list(ts), "snr": snr}


def reverse_process(ddpm: TrainedDDPM, path: Path, label: int | None = 7, guidance: float = 1.0,
                    columns: int = 9, seed: int = 0) -> None:
    """x_t and the predicted x_0 at evenly spaced steps of one DDPM chain and two DDIM chains
    (eta = 1 and the deterministic eta = 0, DDIM's default steps), all from the same x_T."""
    labels = torch.tensor([label]) if label is not None and ddpm.conditional else None
    model = ddpm.network(1, labels, guidance if labels is not None else 0.0)
    rows, names = [], []
    ddim = min(samplers.kind("ddim").default_steps, ddpm.timesteps)
    for method, steps, eta in (("ddpm", None, 1.0), ("ddim", ddim, 1.0), ("ddim", ddim, 0.0)):
        g = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            chain = list(samplers.sample_progressive(
                model, ddpm.schedule, (1, 1, 28, 28), method=method, steps=steps, eta=eta,
                prediction=ddpm.prediction, generator=g))
        keep = torch.linspace(0, len(chain) - 1, columns).round().long().tolist()
        rows.append(torch.cat([(chain[i].prev_sample + 1) / 2 for i in keep]).clamp(0, 1))
        rows.append(torch.cat([(chain[i].pred_original_sample + 1) / 2 for i in keep]).clamp(0, 1))
        name = samplers.kind(method).describe(len(chain), eta)
        names += [f"{name}: x_t", f"{name}: x0 pred."]
    cond = f", digit {label}, w = {guidance:g}" if labels is not None else ""
    done = [f"{100 * c // (columns - 1)}%" for c in range(columns)]
    image_rows(rows, path, row_labels=names, col_labels=done,
               title=f"Reverse process from the same x_T{cond} (columns: share of the chain done)")
