"""Evaluate trained checkpoints (the registry's best by default) and write a report folder.

    python jobs/evaluate.py                              # VAE and DDPM from results/registry
    python jobs/evaluate.py --models ddpm --samplers ddpm ddim:10 ddim:50:1 --num-workers 2
    ray job submit --working-dir . -- python jobs/evaluate.py --ddpm-checkpoint /path/checkpoint.pt

Writes ``<storage-path>/eval/<name>/``: report.json, report.md, robustness.png,
reconstruction_attack.png, adversarial_examples.png and a sample grid per sampler. DDPM sampling
is cut into seeded chunks that Ray tasks draw (``--num-workers`` at a time; 0 samples in this
process), so the images depend on the seed, chunk size and threads (--cpus-per-worker) only,
never on the worker count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hw4 import adversarial, data, eval_report, evaluation, vae_attacks, viz
from hw4.assets import SECOND_JUDGE, load_classifier
from hw4.atomic_files import write_bytes_atomic, write_json_atomic
from hw4.samplers import SamplerSpec
from hw4.trained import load_ddpm, load_vae, resolve_checkpoint
from jobs import cli, driver
from jobs.cli import check, opt


@dataclass
class EvalConfig:
    name: str = opt("eval", "report folder: <storage-path>/eval/<name>")
    storage_path: str = opt("results", "where the registry lives and the report goes")
    models: tuple[str, ...] = opt(("vae", "ddpm"), "what to evaluate: vae, ddpm or both")
    vae_checkpoint: str | None = opt(None, "VAE checkpoint (default: the registry's best)")
    ddpm_checkpoint: str | None = opt(None, "DDPM checkpoint (default: the registry's best)")
    num_workers: int = opt(1, "Ray tasks sampling at once (0: sample in this process)")
    cpus_per_worker: int | None = opt(None, "CPUs (torch threads) per sampling task")
    seed: int = opt(0, "seed of samples, IWAE draws and PGD starts")
    fid_samples: int = opt(1000, "generated (and real) images per FID")
    samplers: tuple[str, ...] = opt(("ddim:50",), "sampler grid: ddpm, ddim:STEPS[:ETA]")
    guidance: tuple[float, ...] = opt((0.0, 0.5, 1.0, 2.0, 4.0),
                                      "guidance weights w of a conditional DDPM (crossed with "
                                      "--samplers; its samples are class-balanced)")
    chunk_size: int = opt(100, "images per sampling task")
    iwae_k: tuple[int, ...] = opt((1, 5, 50, 5000), "importance samples of each IWAE bound")
    iwae_images: int = opt(500, "test images for the likelihood bounds")
    attack_images: int = opt(1000, "test images attacked")
    epsilons: tuple[float, ...] = opt((0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
                                      "L-inf budgets in [0, 1] pixel units")
    attacks: tuple[str, ...] = opt(("fgsm", "pgd"), "attacks: fgsm, pgd")
    pgd_steps: int = opt(20, "PGD iterations")
    smoke_test: bool = opt(False, "tiny sizes (for tests)")

    def validate(self) -> None:
        cli.check_name(self.name)
        check(len(self.models) > 0 and set(self.models) <= {"vae", "ddpm"},
              f"--models must be vae and/or ddpm, got {list(self.models)}")
        check(self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}")
        check(self.fid_samples >= 2, "--fid-samples must be >= 2")
        check(self.chunk_size >= 1, "--chunk-size must be >= 1")
        check(all(k >= 1 for k in self.iwae_k), "--iwae-k values must be >= 1")
        check(self.iwae_images >= 1 and self.attack_images >= 1, "image counts must be >= 1")
        check(len(self.epsilons) > 0 and all(0 <= e <= 1 for e in self.epsilons),
              "--epsilons must lie in [0, 1] (pixel units)")
        check(set(self.attacks) <= set(adversarial.ATTACKS) and len(self.attacks) > 0,
              f"--attacks must be among {sorted(adversarial.ATTACKS)}")
        check(self.pgd_steps >= 1, "--pgd-steps must be >= 1")
        check(len(self.guidance) > 0 and all(w >= 0 for w in self.guidance),
              f"--guidance values must be >= 0, got {list(self.guidance)}")
        for spec in self.samplers:
            SamplerSpec.parse(spec)


SMOKE = dict(fid_samples=24, samplers=("ddim:4", "ddim:4:1"), guidance=(0.0, 2.0), chunk_size=8,
             iwae_k=(1, 5, 20), iwae_images=16, attack_images=16, epsilons=(0.0, 0.1, 0.3), pgd_steps=3)


# --- sampling, in this process or spread over Ray tasks ----------------------------------------

def draw_samples(cfg: EvalConfig, path: Path, spec: str, conditional: bool = False,
                 guidance: float = 0.0) -> torch.Tensor:
    """``cfg.fid_samples`` images from ``spec``, chunk by chunk (Ray tasks or in-process); a
    conditional model's are class-balanced (image i asks for digit i mod 10)."""
    parts = evaluation.chunks(cfg.fid_samples, cfg.chunk_size, cfg.seed)
    firsts = [sum(n for n, _ in parts[:i]) if conditional else None for i in range(len(parts))]
    if cfg.num_workers == 0:
        return torch.cat([evaluation.sample_chunk(str(path), spec, n, s, cfg.cpus_per_worker,
                                                  first, guidance)
                          for (n, s), first in zip(parts, firsts, strict=True)])
    import ray

    driver.init_ray()
    cpus = cfg.cpus_per_worker or driver.default_cpus_per_worker(cfg.num_workers)
    task = ray.remote(num_cpus=cpus)(evaluation.sample_chunk)
    pending = [task.remote(str(path), spec, n, s, cpus, first, guidance)
               for (n, s), first in zip(parts, firsts, strict=True)]
    return torch.cat(ray.get(pending))  # Ray runs as many at once as the CPUs allow


# --- the two halves of the report ------------------------------------------------------------

def evaluate_ddpm(cfg: EvalConfig, out: Path, log) -> dict:
    path = resolve_checkpoint(cfg.storage_path, "ddpm", cfg.ddpm_checkpoint)
    ddpm = load_ddpm(path)
    cache = Path(cfg.storage_path) / "eval" / "fid_stats"
    ref = evaluation.reference_stats("mnist", cfg.fid_samples, cache)
    ref2 = evaluation.reference_stats("mnist", cfg.fid_samples, cache, judge=SECOND_JUDGE)
    floor = evaluation.data_floor("mnist", cfg.fid_samples, ref)
    test = data.load_dataset("mnist", "test", subset=cfg.fid_samples, seed=0).tensors[0]
    real = evaluation.second_opinion(test, ref2)  # the second judge's floor, MNIST's background
    floors = {"fid": floor, "second_fid": real["second_fid"],
              "background_share": real["background_share"]}
    log(f"DDPM {path}: data floor FID {floor:.2f} (second judge {floors['second_fid']:.2f}), "
        f"MNIST's background share {floors['background_share']:.1%}, at n={cfg.fid_samples}")
    for spec in cfg.samplers:  # all of them before the first, slow one runs
        steps = SamplerSpec.parse(spec).steps
        check(steps is None or steps <= ddpm.timesteps,
              f"sampler {spec}: the model has only {ddpm.timesteps} steps")
    rows = []
    weights = cfg.guidance if ddpm.conditional else (0.0,)
    labels = evaluation.balanced_labels(0, cfg.fid_samples) if ddpm.conditional else None
    for spec in cfg.samplers:
        sampler = SamplerSpec.parse(spec)
        for w in weights:
            t0 = time.time()
            images = draw_samples(cfg, path, spec, ddpm.conditional, w)
            wall = time.time() - t0
            q = evaluation.sample_quality(images, "mnist", ref, labels=labels)
            q.update(evaluation.second_opinion(images, ref2, labels))
            rows.append({"sampler": spec, "label": sampler.label, "guidance": w,
                         "steps": len(sampler.kind.visits(ddpm.schedule, sampler.steps)),
                         "eta": sampler.reported_eta, "wall_s": wall, **q})
            name = spec.replace(":", "_") + (f"_w{w:g}" if ddpm.conditional else "")
            eval_report.save_sample_grid(images, labels, out / f"samples_{name}.png")
            log(f"  {sampler.label:>18}" + (f" w={w:<4g}" if ddpm.conditional else "")
                + f": FID {q['fid']:.2f}"
                + (f", class accuracy {q['class_accuracy']:.3f}" if labels is not None else "")
                + f", confident {q['confident_fraction']:.3f}, second judge FID "
                f"{q['second_fid']:.2f}, agreement {q['agreement']:.3f}, background "
                f"{q['background_share']:.1%}, {wall:.1f}s")
    if ddpm.conditional:
        eval_report.plot_guidance_tradeoff(rows, floor, out / "guidance_tradeoff.png")
    return {"checkpoint": str(path), "config": ddpm.config, "train_metrics": ddpm.metrics,
            "conditional": ddpm.conditional, "fid_n": cfg.fid_samples, "data_floor_fid": floor,
            "floors": floors,
            "samplers": rows, "workers": cfg.num_workers}


def evaluate_vae(cfg: EvalConfig, out: Path, log) -> dict:
    path = resolve_checkpoint(cfg.storage_path, "vae", cfg.vae_checkpoint)
    trained = load_vae(path)
    vae = trained.vae
    x, y = data.load_dataset("fashion_mnist", "test", subset=cfg.attack_images,
                             seed=cfg.seed).tensors
    report: dict = {"checkpoint": str(path), "config": trained.config,
                    "train_metrics": trained.metrics}
    if vae.config.variational:
        xl = x[:cfg.iwae_images] if cfg.iwae_images <= len(x) else data.load_dataset(
            "fashion_mnist", "test", subset=cfg.iwae_images, seed=cfg.seed).tensors[0]
        report["likelihood"] = evaluation.likelihood(vae, xl, list(cfg.iwae_k), seed=cfg.seed,
                                                     progress=log)
        cache = Path(cfg.storage_path) / "eval" / "fid_stats"
        n = cfg.fid_samples
        ref = evaluation.reference_stats("fashion_mnist", n, cache)
        samples = vae.sample(n, torch.Generator().manual_seed(cfg.seed))
        report["samples"] = {**evaluation.sample_quality(samples, "fashion_mnist", ref),
                             "data_floor_fid": evaluation.data_floor("fashion_mnist", n, ref)}
        viz.save_grid(samples[:64], out / "vae_samples.png")
    pixel = load_classifier("fashion_mnist")
    models = vae_attacks.attack_targets(trained, pixel)
    report["clean_accuracy"] = {name: adversarial.accuracy(m, x, y) for name, m in models.items()}
    if trained.probe is not None:
        report["clean_accuracy"]["latent_probe"] = adversarial.accuracy(trained.probe, x, y)
    eps = list(cfg.epsilons)
    curves, examples = vae_attacks.robustness(models, x, y, eps, list(cfg.attacks),
                                             pgd_steps=cfg.pgd_steps, seed=cfg.seed, progress=log)
    report["robustness"] = curves
    report["most_robust"] = {a: vae_attacks.most_robust(curves, a) for a in cfg.attacks}
    report["reconstruction_attack"] = vae_attacks.reconstruction_under_attack(
        vae, x[:min(len(x), 250)], eps, list(cfg.attacks), pgd_steps=cfg.pgd_steps, seed=cfg.seed)
    eval_report.plot_robustness(curves, report["reconstruction_attack"], out)
    rows = [x[:8]] + [examples[name] for name in models]
    viz.save_grid(torch.cat(rows), out / "adversarial_examples.png", nrow=8)
    return report


def main(argv: list[str] | None = None) -> dict:
    cfg = cli.parse_config(EvalConfig, argv, SMOKE, __doc__)
    out = Path(cfg.storage_path) / "eval" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    report: dict = {"config": dataclasses.asdict(cfg)}
    if "vae" in cfg.models:
        report["vae"] = evaluate_vae(cfg, out, log)
    if "ddpm" in cfg.models:
        report["ddpm"] = evaluate_ddpm(cfg, out, log)
    report["wall_s"] = time.time() - t0
    write_json_atomic(out / "report.json", json.loads(json.dumps(report, default=str)))
    write_bytes_atomic(out / "report.md", eval_report.markdown(report).encode())
    log(f"report in {out}")
    return report


if __name__ == "__main__":
    cli.run_cli(main)
