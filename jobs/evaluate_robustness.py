"""MNIST robustness report: the undefended CNN, the adversarially trained CNN and the DDPM as a
purifying defence, under PGD, APGD-CE, APGD-T, Square and the AutoAttack ensemble.

    python jobs/evaluate_robustness.py                                  # the registry's models
    python jobs/evaluate_robustness.py --models robust --images 1000 --epsilons 0.1 0.2 0.3
    python jobs/evaluate_robustness.py --models purified --t-star 100 --purify-steps 5 \\
        --sweep-t-star 50 100 200 --sweep-steps 2 5

The purified model (the registry's DDPM in front of the pinned CNN) is attacked adaptively:
``--purify-attack`` with the full gradient through every solver step and with BPDA, both with
``--eot`` samples of its noise, on ``--purify-images`` images (each attack step costs steps x
EOT network calls an image); the lower accuracy is reported. The sweep scores each t* x steps on
clean accuracy and on that adaptive attack at the largest epsilon; among the settings within 5
points of the best clean accuracy, the most robust (then the most accurate, then the cheapest) is
the one evaluated at every epsilon. Writes
``<storage-path>/eval/<name>/``: robustness.json, robustness.md and robustness_mnist.png.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hw4 import data, robustness, viz
from hw4.adversarial import ATTACKS
from hw4.adversarial.registry import AttackOptions
from hw4.assets import load_classifier
from hw4.atomic_files import write_bytes_atomic, write_json_atomic
from hw4.purification import PurifiedClassifier
from hw4.trained import load_ddpm, resolve_checkpoint
from jobs import cli
from jobs.cli import check, opt

MODELS = ("cnn", "robust", "purified")


@dataclass
class RobustnessConfig:
    name: str = opt("robustness", "report folder: <storage-path>/eval/<name>")
    storage_path: str = opt("results", "where the registry lives and the report goes")
    models: tuple[str, ...] = opt(MODELS, "cnn (pinned, undefended), robust (adversarially "
                                          "trained), purified (DDPM purification + pinned CNN)")
    attacks: tuple[str, ...] = opt(("pgd", "apgd-ce", "apgd-t", "square", "autoattack"),
                                   f"attacks on cnn and robust: {', '.join(ATTACKS)}")
    epsilons: tuple[float, ...] = opt((0.1, 0.2, 0.3), "L-inf budgets in [0, 1] pixel units")
    images: int = opt(1000, "MNIST test images attacked (cnn, robust)")
    steps: int | None = opt(None, "gradient steps of PGD/APGD (default: PGD 20, APGD 100)")
    queries: int = opt(5000, "Square's queries per image")
    seed: int = opt(0, "seed of every attack's random starts and of the purifier's noise")
    purify_images: int = opt(64, "test images attacked through the purifier")
    t_star: int = opt(100, "purification: diffuse to this timestep")
    purify_steps: int = opt(5, "purification: solver steps (network calls) back to t = 0")
    solver: Literal["ddim", "dpm++2m"] = opt("ddim", "purification's solver")
    purify_attack: str = opt("apgd-ce", "the adaptive attack on the purified model")
    purify_attack_steps: int = opt(20, "its gradient steps")
    eot: int = opt(4, "EOT samples per gradient against the purifier")
    sweep_t_star: tuple[int, ...] = opt((), "purification sweep: t* values")
    sweep_steps: tuple[int, ...] = opt((), "purification sweep: solver steps")
    ddpm_checkpoint: str | None = opt(None, "DDPM checkpoint (default: the registry's best)")
    from_reports: tuple[str, ...] = opt((), "evaluate nothing: merge these robustness.json "
                                             "files' models into one table and figure")
    smoke_test: bool = opt(False, "tiny sizes (for tests)")

    def validate(self) -> None:
        cli.check_name(self.name)
        check(set(self.models) <= set(MODELS) and self.models, f"--models must be among {MODELS}")
        check(set(self.attacks) <= set(ATTACKS), f"--attacks must be among {list(ATTACKS)}")
        check(self.purify_attack in ATTACKS, f"--purify-attack must be among {list(ATTACKS)}")
        check(all(0 < e <= 1 for e in self.epsilons) and self.epsilons, "--epsilons in (0, 1]")
        check(self.images >= 1 and self.purify_images >= 1, "image counts must be >= 1")
        check(self.eot >= 1 and self.purify_steps >= 1 and self.t_star >= 1, "bad purification option")


SMOKE = dict(images=16, purify_images=4, epsilons=(0.3,), steps=2, queries=20, t_star=10,
             purify_steps=2, purify_attack_steps=2, eot=1)


def purified(cfg: RobustnessConfig, t_star: int, steps: int) -> PurifiedClassifier:
    ddpm = load_ddpm(resolve_checkpoint(cfg.storage_path, "ddpm", cfg.ddpm_checkpoint))
    return PurifiedClassifier(ddpm, load_classifier("mnist"), t_star=t_star, steps=steps,
                              solver=cfg.solver, seed=cfg.seed)


def sweep(cfg: RobustnessConfig, x: torch.Tensor, y: torch.Tensor, log) -> list[dict]:
    """Clean and adaptive-attack accuracy at the largest epsilon for every t* x steps."""
    rows, eps = [], max(cfg.epsilons)
    options = AttackOptions(steps=cfg.purify_attack_steps, eot=cfg.eot)
    for t_star in cfg.sweep_t_star:
        for steps in cfg.sweep_steps:
            d = purified(cfg, t_star, steps)
            point = robustness.adaptive_purification(d, x, y, [eps], cfg.purify_attack, options,
                                                     cfg.seed, progress=log)[eps]
            rows.append({"t_star": t_star, "steps": steps, "network_calls": d.network_calls(),
                         "clean": robustness.clean_accuracy(d, x, y), "eps": eps, **point})
            log(f"sweep t*={t_star} steps={steps}: {rows[-1]}")
    return rows


CLEAN_SLACK = 0.05  # a purifier may cost this much clean accuracy below the sweep's best


def chosen_setting(rows: list[dict]) -> dict:
    """The sweep's choice: among the settings within ``CLEAN_SLACK`` of the best clean accuracy
    (a purifier that destroys the clean images is no defence), the most robust at the largest
    eps, then the most accurate, then the cheapest."""
    fair = [r for r in rows if r["clean"] >= max(r["clean"] for r in rows) - CLEAN_SLACK]
    return max(fair, key=lambda r: (r["accuracy"], r["clean"], -r["network_calls"]))


def evaluate(cfg: RobustnessConfig, log) -> dict:
    x, y = data.load_tensors("mnist", "test")
    xs, ys = x[:cfg.images], y[:cfg.images]
    xp, yp = x[:cfg.purify_images], y[:cfg.purify_images]
    options = AttackOptions(steps=cfg.steps, queries=cfg.queries)
    eps = list(cfg.epsilons)
    report: dict = {"config": dataclasses.asdict(cfg), "models": {}}
    classifiers = {}
    if "cnn" in cfg.models:
        classifiers["cnn"] = (load_classifier("mnist"), "hw4/assets/mnist_classifier.pt")
    if "robust" in cfg.models:
        classifiers["robust"] = robustness.registered_robust_classifier(cfg.storage_path)
    for name, (model, source) in classifiers.items():
        t0 = time.time()
        report["models"][name] = {
            "source": Path(source).name, "images": len(xs),
            "clean": robustness.clean_accuracy(model, xs, ys),
            "attacks": robustness.curves(model, xs, ys, eps, list(cfg.attacks), options, cfg.seed,
                                         progress=log, label=name),
            "seconds": round(time.time() - t0, 1)}
    if "purified" in cfg.models:
        t_star, steps = cfg.t_star, cfg.purify_steps
        if cfg.sweep_t_star and cfg.sweep_steps:
            rows = report["purification_sweep"] = sweep(cfg, xp, yp, log)
            best = chosen_setting(rows)
            t_star, steps = best["t_star"], best["steps"]
        d = purified(cfg, t_star, steps)
        adaptive = AttackOptions(steps=cfg.purify_attack_steps, eot=cfg.eot)
        report["models"]["purified"] = {
            "source": f"DDPM t*={t_star}, {cfg.solver} x {steps}, then the pinned CNN",
            "t_star": t_star, "steps": steps,
            "images": len(xp), "network_calls_per_image": d.network_calls(),
            "clean": robustness.clean_accuracy(d, xp, yp),
            "attacks": {f"adaptive {cfg.purify_attack} (EOT {cfg.eot})": robustness.adaptive_purification(
                d, xp, yp, eps, cfg.purify_attack, adaptive, cfg.seed, progress=log)}}
    return report


def merged(paths: tuple[str, ...]) -> dict:
    """One report of the models (and sweeps) of several, e.g. runs with different --models; the
    epsilons must agree."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    eps = reports[0]["config"]["epsilons"]
    check(all(r["config"]["epsilons"] == eps for r in reports), "the reports' epsilons differ")
    out: dict = {"config": reports[0]["config"], "models": {}, "merged_from": list(paths)}
    for r in reports:
        out["models"].update(r["models"])
        out.setdefault("purification_sweep", []).extend(r.get("purification_sweep", []))
    return out


def markdown(report: dict) -> str:
    eps = report["config"]["epsilons"]
    lines = ["| model | images | clean | attack | " + " | ".join(f"ε = {e:g}" for e in eps) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(eps)]
    for name, m in report["models"].items():
        for attack, by_eps in m["attacks"].items():
            cells = " | ".join(f"{(by_eps[e] if e in by_eps else by_eps[str(e)])['accuracy']:.3f}"
                               for e in eps)  # (a report read back from JSON has string keys)
            lines.append(f"| {name} | {m['images']} | {m['clean']:.3f} | {attack} | {cells} |")
    for row in report.get("purification_sweep", []):
        lines.append(f"| sweep t*={row['t_star']} steps={row['steps']} | – | {row['clean']:.3f} | "
                     f"full {row['full_gradient']:.3f} / BPDA {row['bpda']:.3f} at ε = {row['eps']:g} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    series = {}
    for name, m in report["models"].items():
        for attack, by_eps in m["attacks"].items():
            if attack in ("pgd", "autoattack") or attack.startswith("adaptive"):
                xs = [0.0, *map(float, by_eps)]
                series[f"{name}: {attack}"] = (xs, [m["clean"], *(v["accuracy"] for v in by_eps.values())])
    viz.line_plot(series, out, xlabel="epsilon (L-inf, pixels in [0, 1])", ylabel="accuracy",
                  title="MNIST test accuracy under attack")


def main(argv: list[str] | None = None) -> dict:
    cfg = cli.parse_config(RobustnessConfig, argv, SMOKE, __doc__)
    out = Path(cfg.storage_path) / "eval" / cfg.name
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    report = merged(cfg.from_reports) if cfg.from_reports else evaluate(cfg, log)
    report["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out / "robustness.json", json.loads(json.dumps(report)))
    write_bytes_atomic(out / "robustness.md", markdown(report).encode())
    plot(report, out / "robustness_mnist.png")
    print(markdown(report))
    return report


if __name__ == "__main__":
    cli.run_cli(main)
