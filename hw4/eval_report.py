"""The evaluation report's figures and Markdown: sample grids, the guidance trade-off, the
robustness curves and the tables of ``report.json`` (written by ``jobs/evaluate.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from hw4 import viz


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor | None, path: Path,
                     per_digit: int = 8) -> None:
    """64 samples, or for class-balanced ones a grid with one row per digit."""
    if labels is None or len(images) < 10 * per_digit:
        viz.save_grid(images[:64], path)
        return
    rows = [images[labels == d][:per_digit] for d in range(10)]
    viz.save_grid(torch.cat(rows), path, nrow=per_digit)


def plot_guidance_tradeoff(rows: list[dict], floor: float, path: Path) -> None:
    """FID against class accuracy, one line per sampler, each point labelled with its w."""
    series, labels = {}, {}
    for spec in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == spec]
        name = mine[0]["label"]
        series[name] = ([r["class_accuracy"] for r in mine], [r["fid"] for r in mine])
        labels[name] = [f"w={r['guidance']:g}" for r in mine]
    viz.line_plot(series, path, xlabel="class accuracy (pinned MNIST classifier)",
                  ylabel=f"FID (data floor {floor:.1f})", point_labels=labels,
                  title="Classifier-free guidance: sample quality vs the digit asked for")


def plot_robustness(curves: dict, recon: dict, out: Path) -> None:
    series = {}
    for name, by_attack in curves.items():
        for attack, kinds in by_attack.items():
            c = kinds["untargeted"]
            series[f"{name} {attack.upper()}"] = (list(c), [v["accuracy"] for v in c.values()])
    viz.line_plot(series, out / "robustness.png", xlabel="epsilon (L-inf, pixels in [0, 1])",
                  ylabel="accuracy", title="Fashion-MNIST test accuracy under attack")
    viz.line_plot({k.upper() if k != "random_sign_noise" else "random sign noise":
                   (list(v), list(v.values())) for k, v in recon.items()},
                  out / "reconstruction_attack.png", xlabel="epsilon", ylabel="MSE per pixel",
                  title="VAE reconstruction error of attacked images vs the clean image")


def ddpm_row(r: dict, floors: dict) -> str:
    """One sampler's row of the DDPM table: each FID with its multiple of the floor."""

    def acc(key: str) -> str:  # a classifier's accuracy, if the samples had labels
        return f"{r[key]:.3f}" if key in r else "–"

    return (f"| {r['label']} | {r.get('guidance', 0):g} | {r['steps']} | {r['fid']:.2f} "
            f"({r['fid'] / floors['fid']:.2f}x) | {acc('class_accuracy')} "
            f"| {r['second_fid']:.2f} ({r['second_fid'] / floors['second_fid']:.2f}x) "
            f"| {acc('second_class_accuracy')} | {r['agreement']:.3f} "
            f"| {r['background_share']:.1%} | {r['wall_s']:.1f} |")


def markdown(report: dict) -> str:
    """The tables of report.json as Markdown (BENCHMARKS.md quotes them)."""
    lines = []
    if "ddpm" in report:
        d = report["ddpm"]
        f = d["floors"]
        lines += [f"DDPM `{d['checkpoint']}`, n={d['fid_n']}; floors (MNIST test against train): "
                  f"FID {f['fid']:.2f}, second judge's FID {f['second_fid']:.2f}, background "
                  f"share {f['background_share']:.1%}", "",
                  "| sampler | w | steps | FID (x floor) | class accuracy | 2nd judge FID (x floor) "
                  "| 2nd judge accuracy | agreement | background share | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [ddpm_row(r, f) for r in d["samplers"]]
        lines.append("")
    if "vae" in report:
        v = report["vae"]
        if "likelihood" in v:
            lk = v["likelihood"]
            lines += [f"VAE `{v['checkpoint']}` on {lk['n']} test images: ELBO {lk['elbo']:.2f} "
                      f"(recon {lk['recon']:.2f}, KL {lk['kl']:.2f}) nats", "",
                      "| k | IWAE_k (nats) | seconds |", "|---:|---:|---:|"]
            lines += [f"| {k} | {val:.3f} | {lk['iwae_seconds'][k]:.1f} |"
                      for k, val in lk["iwae"].items()]
            lines.append("")
        curves = v["robustness"]
        first = next(iter(curves.values()))
        for attack in first:
            eps = list(first[attack]["untargeted"])
            lines += [f"Accuracy under untargeted {attack.upper()} (targeted: hit rate of y+1)", "",
                      "| model | " + " | ".join(f"{e:g}" for e in eps) + " |",
                      "|---|" + "---:|" * len(eps)]
            for name, c in curves.items():
                u, t = c[attack]["untargeted"], c[attack]["targeted"]
                lines.append(f"| {name} | " + " | ".join(f"{u[e]['accuracy']:.3f}" for e in eps) + " |")
                lines.append(f"| {name} (targeted hit) | "
                             + " | ".join(f"{t[e]['target_rate']:.3f}" for e in eps) + " |")
            best, area = v["most_robust"][attack]
            lines += ["", f"Most robust under {attack.upper()}: **{best}** (area {area:.3f})", ""]
    return "\n".join(lines) + "\n"
