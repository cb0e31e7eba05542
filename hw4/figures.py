"""The homework's practical figures, each one function of trained models and data, and one command
for all of them (docs/homework.md shows and discusses them):

    python -m hw4.figures --out docs/homework \
        --vae results/demo-vae/artifacts/checkpoint.pt --ae results/demo-ae/artifacts/checkpoint.pt \
        --ddpm results/demo-ddpm/artifacts/checkpoint.pt
    python -m hw4.figures --tiny --out /tmp/figures     # untrained tiny models: seconds, for tests

Figures: AE vs VAE (reconstructions and their error, samples from N(0, I) and, for the AE, from a
Gaussian fitted to its codes, the codes in 2-D by PCA, interpolations), a traversal of every
latent dimension ordered by KL, the forward process under each noise schedule with its SNR, the
reverse process (x_t and the predicted x_0) along a DDPM and a DDIM chain, the training curves of
both jobs, and adversarial examples at small eps.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from hw4 import adversarial, data, ddpm_figures, viz
from hw4.atomic_files import write_json_atomic
from hw4.diffusion import DiffusionSchedule
from hw4.models.autoencoder import Autoencoder, AutoencoderConfig
from hw4.models.unet import UNet, UNetConfig
from hw4.objectives import gaussian_kl_per_dim
from hw4.trained import TrainedDDPM, load_ddpm, load_vae, training_history

FASHION = data.FASHION_CLASSES


# --- AE vs VAE ----------------------------------------------------------------------------------

def codes(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Posterior means (the AE's codes): (N, D)."""
    with torch.no_grad():
        return model.encoder(x)[0]


def ae_vs_vae_reconstructions(ae: Autoencoder, vae: Autoencoder, x: torch.Tensor, path: Path,
                              shown: int = 10) -> dict:
    """The first ``shown`` test images, each model's reconstruction and its absolute error;
    returns the per-pixel MSE of each over all of ``x``."""
    with torch.no_grad():
        r_ae, r_vae = ae.reconstruct(x), vae.reconstruct(x)
    show = slice(0, shown)
    viz.image_rows([x[show], r_ae[show], (r_ae - x)[show].abs(), r_vae[show], (r_vae - x)[show].abs()], path,
               row_labels=["test image", "AE", "AE |error|", "VAE", "VAE |error|"],
               title="Reconstructions: the plain autoencoder against the VAE (same architecture)")
    return {"images": len(x), "ae_mse": float(((r_ae - x) ** 2).mean()),
            "vae_mse": float(((r_vae - x) ** 2).mean())}


def ae_vs_vae_samples(ae: Autoencoder, vae: Autoencoder, x_train: torch.Tensor, path: Path,
                      n: int = 10, seed: int = 0) -> None:
    """Decoded N(0, I) draws for both, and AE draws from a Gaussian fitted to its training codes."""
    g = torch.Generator().manual_seed(seed)
    d = ae.config.latent_dim
    z = torch.randn(n, d, generator=g)
    c = codes(ae, x_train)
    mean, cov = c.mean(0), torch.cov(c.T) + 1e-5 * torch.eye(d)
    fitted = mean + z @ torch.linalg.cholesky(cov).T
    with torch.no_grad():
        rows = [vae.decode(z), ae.decode(z), ae.decode(fitted)]
    viz.image_rows(rows, path, row_labels=["VAE, z ~ N(0, I)", "AE, z ~ N(0, I)", "AE, fitted N(m, S)"],
               title="Samples: the VAE's prior is where its decoder was trained; the AE's is not")


def latent_pca(ae: Autoencoder, vae: Autoencoder, x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    """Each model's codes projected on their first two principal components, coloured by class."""
    plt = viz.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (name, model) in zip(axes, (("autoencoder", ae), ("VAE (posterior means)", vae)), strict=True):
        c = codes(model, x)
        c = c - c.mean(0)
        _, _, v = torch.linalg.svd(c, full_matrices=False)
        xy = (c @ v[:2].T).numpy()
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y.numpy(), cmap="tab10", s=4, alpha=0.7)
        ax.set(title=f"{name}: codes by PCA", xlabel="PC 1", ylabel="PC 2")
    cbar = fig.colorbar(sc, ax=axes, ticks=range(10))
    cbar.ax.set_yticklabels(FASHION, fontsize=7)
    viz.save_figure(fig, path, **viz.TIGHT)


def interpolations(ae: Autoencoder, vae: Autoencoder, a: torch.Tensor, b: torch.Tensor, path: Path,
                   steps: int = 9) -> None:
    """Decode (1 - s) z_a + s z_b for both models, z the posterior mean (code)."""
    s = torch.linspace(0, 1, steps)[:, None]
    rows = []
    for model in (ae, vae):
        za, zb = codes(model, a), codes(model, b)
        with torch.no_grad():
            rows.append(model.decode((1 - s) * za + s * zb))
    viz.image_rows(rows, path, row_labels=["AE", "VAE"], col_labels=[f"{v:.2f}" for v in s[:, 0].tolist()],
               title="Interpolating between two test images in each latent space")


def traversal_by_kl(vae: Autoencoder, x: torch.Tensor, anchor: torch.Tensor, path: Path,
                    values: torch.Tensor | None = None) -> list[float]:
    """Every latent dimension moved from -3 to 3 around ``anchor``'s code, rows ordered by the
    dimension's mean KL over ``x`` (nats), printed beside each row."""
    values = torch.linspace(-3, 3, 9) if values is None else values
    with torch.no_grad():
        mu, log_var = vae.encoder(x)
        kl = gaussian_kl_per_dim(mu, log_var).mean(0)  # (D,)
    order = kl.argsort(descending=True).tolist()
    with torch.no_grad():
        grid = vae.traverse(anchor[:1], order, values).view(len(order), len(values), 1, 28, 28)
    viz.image_rows(list(grid), path, row_labels=[f"z{d}: {kl[d]:.2f} nats" for d in order],
               col_labels=[f"{v:g}" for v in values.tolist()],
               title="Latent traversal, every dimension, ordered by its KL")
    return [float(kl[d]) for d in order]


# --- curves and attacks -----------------------------------------------------------------------------

def training_curves(vae_history: list[dict], ddpm_history: list[dict], path: Path) -> None:
    """VAE: reconstruction and KL (validation) and the train loss; DDPM: train and val loss."""
    plt = viz.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    v = [h for h in vae_history if h.get("phase", "vae") == "vae"]
    ep = [h["epoch"] + 1 for h in v]
    axes[0].plot(ep, [h["val_recon"] for h in v], "o-", label="validation reconstruction")
    axes[0].plot(ep, [h["train_loss"] for h in v], "o--", label="train loss (recon + KL)")
    axes[0].set(title="VAE: reconstruction (nats)", xlabel="epoch")
    axes[1].plot(ep, [h.get("val_kl", float("nan")) for h in v], "o-", color="C2", label="validation KL")
    axes[1].set(title="VAE: KL(q(z|x) || p(z)) (nats)", xlabel="epoch")
    d_ep = [h["epoch"] + 1 for h in ddpm_history]
    axes[2].plot(d_ep, [h["train_loss"] for h in ddpm_history], "o--",
                 label="train (the training loss, its weights included)")
    axes[2].plot(d_ep, [h["val_loss"] for h in ddpm_history], "o-",
                 label="validation (EMA; unweighted MSE of the target)")
    axes[2].set(title="DDPM: denoising loss", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    viz.save_figure(fig, path, **viz.TIGHT)


def small_eps_attacks(classifier: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor, path: Path, epsilons: tuple[float, ...] = (0.02, 0.05, 0.3),
                      n: int = 8) -> dict:
    """FGSM images at each eps for test images whose prediction flips at the smallest eps where
    any flips; the predicted class under each image."""
    with torch.no_grad():
        clean_pred = classifier(x).argmax(1)
    advs = {e: adversarial.fgsm(classifier, x, y, e) for e in epsilons}
    with torch.no_grad():
        preds = {e: classifier(a).argmax(1) for e, a in advs.items()}
    flips = {0.0: float((clean_pred != y).float().mean())}
    flips.update({e: float((p != y).float().mean()) for e, p in preds.items()})
    small = min(epsilons)
    chosen = ((preds[small] != y) & (clean_pred == y)).nonzero().flatten().tolist()
    chosen = (chosen + [i for i in range(len(x)) if i not in chosen])[:n]
    plt = viz.pyplot()
    rows = [("clean", x, clean_pred)] + [(f"FGSM eps={e:g}", advs[e], preds[e]) for e in epsilons]
    fig, axes = plt.subplots(len(rows), len(chosen), figsize=(1.15 * len(chosen) + 1.2, 1.35 * len(rows)),
                             squeeze=False)
    for i, (name, images, pred) in enumerate(rows):
        for j, k in enumerate(chosen):
            ax = axes[i][j]
            ax.imshow(images[k, 0].detach().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ok = int(pred[k]) == int(y[k])
            ax.set_xlabel(FASHION[int(pred[k])], fontsize=6, color="black" if ok else "red")
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("FGSM on the pixel CNN: the predicted class under each image (red: wrong)", fontsize=10)
    viz.save_figure(fig, path, **viz.TIGHT)
    return {"error_rate": flips, "shown": chosen}


# --- the command ----------------------------------------------------------------------------------

def tiny_models() -> tuple[Autoencoder, Autoencoder, TrainedDDPM]:
    torch.manual_seed(0)
    cfg = dict(latent_dim=4, channels=8, hidden=32)
    ae = Autoencoder(AutoencoderConfig(**cfg, variational=False)).eval()
    vae = Autoencoder(AutoencoderConfig(**cfg)).eval()
    unet = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,),
                           num_heads=2, groups=4, num_classes=10)).eval()
    ddpm = TrainedDDPM(unet, DiffusionSchedule.named("linear", 20), "eps", {}, {}, None)
    return ae, vae, ddpm


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/homework")
    parser.add_argument("--vae", default="results/demo-vae/artifacts/checkpoint.pt")
    parser.add_argument("--ae", default="results/demo-ae/artifacts/checkpoint.pt")
    parser.add_argument("--ddpm", default="results/demo-ddpm/artifacts/checkpoint.pt")
    parser.add_argument("--tiny", action="store_true", help="untrained tiny models, few images")
    args = parser.parse_args(argv)
    out = Path(args.out)
    n_codes = 200 if args.tiny else 5000
    if args.tiny:
        ae, vae, ddpm = tiny_models()
        vae_hist = ddpm_hist = [{"epoch": 0, "train_loss": 1.0, "val_recon": 1.0, "val_kl": 0.5,
                                 "val_loss": 1.0}, {"epoch": 1, "train_loss": 0.8, "val_recon": 0.7,
                                                     "val_kl": 0.6, "val_loss": 0.9}]
    else:
        ae, vae = load_vae(args.ae).vae, load_vae(args.vae).vae
        ddpm = load_ddpm(args.ddpm)
        vae_hist, ddpm_hist = training_history(args.vae), training_history(args.ddpm)
    x, y = data.load_dataset("fashion_mnist", "test", subset=n_codes, seed=0).tensors
    x_train = data.load_dataset("fashion_mnist", "train", subset=n_codes, seed=0).tensors[0]
    digit = data.load_dataset("mnist", "test", subset=1, seed=3).tensors[0]
    report = {"reconstruction": ae_vs_vae_reconstructions(ae, vae, x, out / "ae_vae_reconstructions.png")}
    ae_vs_vae_samples(ae, vae, x_train, out / "ae_vae_samples.png")
    latent_pca(ae, vae, x, y, out / "ae_vae_latent_pca.png")
    a, b = x[y == 7][:1], x[y == 1][:1]  # a sneaker into a trouser
    interpolations(ae, vae, a, b, out / "ae_vae_interpolation.png")
    report["kl_per_dim"] = traversal_by_kl(vae, x, x[:1], out / "vae_traversal_by_kl.png")
    report["forward"] = ddpm_figures.forward_process(digit, out / "forward_process.png")
    ddpm_figures.reverse_process(ddpm, out / "reverse_process.png")
    training_curves(vae_hist, ddpm_hist, out / "training_curves.png")
    from hw4.assets import load_classifier

    report["attacks"] = small_eps_attacks(load_classifier("fashion_mnist").eval(), x[:1000], y[:1000],
                                          out / "small_eps_attacks.png")
    write_json_atomic(out / "figures.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "forward"}, indent=2))
    return report


if __name__ == "__main__":
    main()
