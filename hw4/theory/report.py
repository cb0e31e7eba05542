"""Regenerate the figures and tables of docs/theory.md.

    python -m hw4.theory.report --out docs/theory [--ddpm results/registry/ddpm.json]

Prints Markdown tables and writes PNGs; every number comes from the functions the tests check.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from hw4 import data  # noqa: E402
from hw4 import diffusion as D  # noqa: E402
from hw4 import reverse as R  # noqa: E402
from hw4 import samplers as S  # noqa: E402
from hw4.theory import ddim, elbo, fdiv, hvae, score  # noqa: E402


def fmt(v) -> str:
    """A table cell: floats to four significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def iwae_section(out: Path) -> str:
    m = elbo.LinearGaussian()
    g = torch.Generator().manual_seed(0)
    x = m.sample(1, g)
    mu, lv = m.posterior(x)
    q_mu, q_lv = mu + 0.8, lv + 1.0  # a deliberately poor q
    ks = [1, 2, 5, 10, 50, 100, 500, 1000]
    curve = elbo.iwae_curve(m, x, q_mu, q_lv, ks, 2000, g)
    true = float(m.log_px(x))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(ks, [curve[k][0] for k in ks], yerr=[curve[k][1] for k in ks], marker="o",
                label="IWAE$_k$ (mean ± sd, 2000 runs)")
    ax.axhline(true, color="k", ls="--", label="log p(x) (closed form)")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("nats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "iwae_vs_k.png", dpi=120)
    plt.close(fig)
    # a q close to the posterior (mean +0.3, variance x e^0.3), as an encoder would give
    est = elbo.likelihood_estimators(m, x, mu + 0.3, lv + 0.3, k=10, repeats=20_000, generator=g)
    grads = elbo.gradient_estimators(lambda z: z**2 + torch.sin(z), 0.7, 1.3, 200_000, g)
    true_grad = 2 * 0.7 + math.cos(0.7) * math.exp(-1.3**2 / 2)
    rows = [[k, curve[k][0], curve[k][1], true - curve[k][0]] for k in ks]
    return "\n\n".join([
        f"log p(x) = {true:.4f}; ELBO (closed form) = "
        f"{float(elbo.elbo_closed_form(m, x, q_mu, q_lv)):.4f}",
        table(["k", "IWAE_k mean", "sd", "gap to log p(x)"], rows),
        table(["estimator of p(x), k=10", "mean", "variance"],
              [[n, float(v.mean()), float(v.var())] for n, v in est.items()]
              + [["true p(x)", math.exp(true), 0.0]]),
        table(["gradient estimator (1 sample)", "mean", "variance"],
              [[n, float(v.mean()), float(v.var())] for n, v in grads.items()]
              + [["true d/dmu", true_grad, 0.0]]),
    ])


def hvae_section(out: Path) -> str:
    x = data.load_dataset("fashion_mnist", "train", subset=10_000, seed=0).tensors[0]
    x_test = data.load_dataset("fashion_mnist", "test", subset=2000, seed=0).tensors[0]
    cfg = hvae.HVAEConfig(z1=16, z2=8)
    big = 50.0  # large enough to collapse on Fashion-MNIST, whose recon term is ~250 nats
    runs = {"β=1": dict(beta=1.0), f"β={big:g} (collapses)": dict(beta=big),
            f"β={big:g} + KL warm-up (300 of 790 steps)": dict(beta=big, warmup_steps=300),
            f"β={big:g} + free bits (0.5 nats/dim)": dict(beta=big, free_bits=0.5),
            "β=0.5": dict(beta=0.5)}
    rows = []
    for name, kw in runs.items():
        d = hvae.diagnose(hvae.train_hvae(x, cfg, epochs=10, **kw), x_test)
        rows.append([name, d["elbo"], d["recon"], d["kl_top"], d["kl_bottom"],
                     f"{d['active_top']}/{cfg.z2}", f"{d['active_bottom']}/{cfg.z1}",
                     f"{d['informative_top']}/{cfg.z2}", f"{d['informative_bottom']}/{cfg.z1}"])
    fig, ax = plt.subplots(figsize=(6, 3))
    top = [int(r[7].split("/")[0]) for r in rows]
    ax.barh([r[0] for r in rows], top, label="top (z2)")
    ax.barh([r[0] for r in rows], [int(r[8].split("/")[0]) for r in rows], left=top,
            label="bottom (z1)")
    ax.set_xlabel("units carrying > 0.05 nats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "hvae_active_units.png", dpi=120)
    plt.close(fig)
    return table(["run (10 epochs, 10k Fashion-MNIST)", "test ELBO", "recon", "KL top",
                  "KL bottom", "active top (cov)", "active bottom (cov)", "top > 0.05 nats",
                  "bottom > 0.05 nats"], rows)


def fdiv_section(out: Path) -> str:
    P, Q = (0.5, 1.0), (0.0, 1.3)
    g = torch.Generator().manual_seed(0)

    def sample_p(n: int) -> torch.Tensor:
        return P[0] + P[1] * torch.randn(n, 1, generator=g)

    def sample_q(n: int) -> torch.Tensor:
        return Q[0] + Q[1] * torch.randn(n, 1, generator=g)

    x = torch.linspace(-30, 30, 400_001, dtype=torch.float64)
    p, q = fdiv.gaussian_pdf(x, *P), fdiv.gaussian_pdf(x, *Q)
    rows = []
    for name, div in fdiv.DIVERGENCES.items():
        true = fdiv.divergence_by_quadrature(div, P, Q)
        t = fdiv.optimal_critic(div, P, Q)(x)
        opt = float(torch.trapezoid(p * t, x) - torch.trapezoid(q * div.conjugate(t), x))
        _, trained = fdiv.train_critic(div, sample_p, sample_q, steps=1500)
        rows.append([name, true, opt, trained, (trained - true) / abs(true)])
    gan_fig(out)
    return table(["f", "D_f(P‖Q) (quadrature)", "bound at T*", "bound, trained MLP critic",
                  "relative error"], rows)


def gan_fig(out: Path) -> None:
    """A tiny f-GAN on a ring of 8 Gaussians, trained with two divergences."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = torch.stack([2 * torch.cos(angles), 2 * torch.sin(angles)], 1)
    gen = torch.Generator().manual_seed(0)

    def real(n: int) -> torch.Tensor:
        return centers[torch.randint(0, 8, (n,), generator=gen)] + 0.1 * torch.randn(n, 2, generator=gen)

    fig, axes = plt.subplots(1, 3, figsize=(9, 3), sharex=True, sharey=True)
    r = real(2000)
    axes[0].scatter(r[:, 0], r[:, 1], s=2)
    axes[0].set_title("data")
    for ax, name in zip(axes[1:], ("gan", "kl"), strict=True):
        torch.manual_seed(0)

        def mlp(i: int, o: int) -> torch.nn.Module:
            return torch.nn.Sequential(
                torch.nn.Linear(i, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                torch.nn.SiLU(), torch.nn.Linear(128, o))

        G, V = mlp(4, 2), mlp(2, 1)
        og = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
        ov = torch.optim.Adam(V.parameters(), lr=1e-3, betas=(0.5, 0.999))
        div = fdiv.DIVERGENCES[name]
        for _ in range(3000):
            fake = G(torch.randn(256, 4, generator=gen))
            lv = fdiv.critic_loss(div, V(real(256)), V(fake.detach()))
            ov.zero_grad()
            lv.backward()
            ov.step()
            lg = fdiv.generator_loss(div, V(fake))
            og.zero_grad()
            lg.backward()
            og.step()
        with torch.no_grad():
            s = G(torch.randn(2000, 4, generator=gen))
        ax.scatter(s[:, 0], s[:, 1], s=2, color="C1")
        ax.set_title(f"f-GAN, {name}")
    fig.tight_layout()
    fig.savefig(out / "fgan_ring.png", dpi=120)
    plt.close(fig)


def score_section() -> str:
    mix, sigma = score.default_mixture(), 0.5
    g = torch.Generator().manual_seed(0)
    x = mix.sample(200_000, g)
    n = torch.randn(x.shape, generator=g, dtype=x.dtype)
    y = x + sigma * n
    noised = mix.affine_noised(1.0, sigma)
    rows = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        s = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 2)).double()
        esm = float(score.explicit_score_matching(s, x, mix.score(x)).detach())
        ism = float(score.implicit_score_matching(s, x).detach())
        with torch.no_grad():
            dsm = float(score.denoising_score_matching(s, x, sigma, n))
            esm_s = float(score.explicit_score_matching(s, y, noised.score(y)))
        rows.append([f"random MLP {seed}", esm, ism, esm - ism, dsm, esm_s, dsm - esm_s])
    const = 0.5 * float((mix.score(x) ** 2).sum(-1).mean())
    tweedie_err = float((score.tweedie_denoiser(noised.score(y[:5000]), y[:5000], sigma)
                         - mix.posterior_mean(y[:5000], 1.0, sigma)).abs().max())
    return (table(["score model", "ESM", "ISM", "ESM − ISM", "DSM (σ=0.5)", "ESM on p_σ",
                   "DSM − ESM_σ"], rows)
            + f"\n\nPredicted ESM − ISM = ½E‖∇log p‖² = {const:.4f}. Tweedie: max |y + σ²∇log p_σ(y)"
            f" − E[x|y]| = {tweedie_err:.2e} over 5000 points.")


def ddim_section(out: Path, ddpm_registry: Path | None) -> str:
    s = D.DiffusionSchedule.named("cosine", 1000)
    x0 = torch.full((100_000, 1), 0.8, dtype=torch.float64)
    ts = R.ddim_timesteps(1000, 20)
    rows = []
    for eta in (0.0, 0.5, 1.0):
        chain = ddim.ddim_forward_chain(s, x0, ts, eta=eta, generator=torch.Generator().manual_seed(0))
        for t in (ts[0], ts[10], ts[-1]):
            ab = float(s.alphas_cumprod[t])
            rows.append([eta, t, float(chain[t].mean()), math.sqrt(ab) * 0.8, float(chain[t].var()),
                         1 - ab])
    marg = table(["η", "t", "mean", "DDPM mean", "variance", "DDPM variance"], rows)
    model = ddim.gaussian_oracle_eps(s, 0.3, 0.04)
    xg = 0.3 + 0.2 * torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    inv_rows = []
    for steps in (20, 50, 100, 250, 1000):
        xT = R.ddim_invert(model, s, xg, steps=steps)
        back = S.sample(model, s, xg.shape, method="ddim", steps=steps, x_T=xT, clip=False)
        inv_rows.append(["Gaussian data, exact ε", steps, float((back - xg).abs().mean()),
                         float(xT.std())])
    if ddpm_registry is not None and ddpm_registry.is_file():
        inv_rows += ddpm_inversion(json.loads(ddpm_registry.read_text()), out)
    inv = table(["model", "DDIM steps", "mean abs error of decode(encode(x))", "std of code x_T"],
                inv_rows)
    return marg + "\n\n" + inv


def ddpm_inversion(record: dict, out: Path) -> list[list]:
    """Encode MNIST test digits with the trained DDPM's EMA weights and decode them back."""
    from hw4.trained import load_ddpm
    from hw4.viz import save_grid

    ddpm = load_ddpm(record["checkpoint"])
    model, s, cfg = ddpm.model, ddpm.schedule, ddpm.config
    x = data.load_dataset("mnist", "test", normalization="symmetric", subset=16, seed=0).tensors[0]
    rows = []
    for steps in (20, 50, 100):
        xT = R.ddim_invert(model, s, x, steps=steps, prediction=cfg["prediction"])
        back = S.sample(model, s, x.shape, method="ddim", steps=steps, x_T=xT,
                        prediction=cfg["prediction"])
        rows.append([f"trained DDPM ({record['checkpoint'].split('/')[-3]}), MNIST in [-1,1]",
                     steps, float((back - x).abs().mean()), float(xT.std())])
    save_grid(torch.cat([(x + 1) / 2, (xT.clamp(-3, 3) + 3) / 6, (back + 1) / 2]),
              out / "ddim_inversion_mnist.png", nrow=16)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/theory")
    parser.add_argument("--ddpm", default="results/registry/ddpm.json",
                        help="registry record of a trained DDPM for the MNIST inversion row")
    parser.add_argument("--only", nargs="*", default=["iwae", "hvae", "fdiv", "score", "ddim"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sections = {"iwae": lambda: iwae_section(out), "hvae": lambda: hvae_section(out),
                "fdiv": lambda: fdiv_section(out), "score": score_section,
                "ddim": lambda: ddim_section(out, Path(args.ddpm))}
    for name in args.only:
        print(f"\n## {name}\n\n{sections[name]()}", flush=True)


if __name__ == "__main__":
    main()
