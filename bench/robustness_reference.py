"""Our attacks against torchattacks (a reference no one here wrote) on the adversarially trained
MNIST CNN (the registry's ``robust_mnist``): APGD-CE alone and the standard ensemble, at the
same budget (torchattacks' defaults: 10 steps, 9 target classes, Square with 5,000 queries; its
AutoAttack also runs FAB-T); ``--paper-steps`` adds ours at the paper's 100 steps (which
``jobs/evaluate_robustness.py`` reports too).

    python -m bench.robustness_reference                       # 1,000 test images, eps 0.1 0.2 0.3
    python -m bench.robustness_reference --images 200 --epsilons 0.3

Writes bench/measurements/robustness_reference.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import RESULTS, machine, write_result
from hw4 import adversarial, data
from hw4.robustness import registered_robust_classifier


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> dict:
    import torchattacks  # the tests' reference, installed by `make install`

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage-path", default="results")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paper-steps", action="store_true", help="also our AutoAttack at 100 steps")
    p.add_argument("--out", default=str(RESULTS / "robustness_reference.json"))
    args = p.parse_args(argv)
    model, source = registered_robust_classifier(args.storage_path)
    x, y = (t[:args.images] for t in data.load_tensors("mnist", "test"))
    rows = []
    for eps in args.epsilons:
        def ours(attack: str, steps: int | None, eps: float = eps) -> float:
            g = torch.Generator().manual_seed(args.seed)
            return adversarial.robustness_curve(model, x, y, [eps], attack, steps=steps,
                                                generator=g)[eps]["accuracy"]

        def theirs(attack, eps: float = eps) -> float:
            return adversarial.accuracy(model, attack(model, eps=eps, seed=args.seed)(x, y), y)

        row = {"eps": eps, "clean": adversarial.accuracy(model, x, y)}
        row["pgd20"], row["pgd20_s"] = timed(lambda: ours("pgd", 20))
        row["apgd_ce10"], row["apgd_ce10_s"] = timed(lambda: ours("apgd-ce", 10))
        row["ta_apgd10"], row["ta_apgd10_s"] = timed(lambda: theirs(torchattacks.APGD))
        row["aa10"], row["aa10_s"] = timed(lambda: ours("autoattack", 10))
        row["ta_aa"], row["ta_aa_s"] = timed(lambda: theirs(torchattacks.AutoAttack))
        if args.paper_steps:
            row["aa100"], row["aa100_s"] = timed(lambda: ours("autoattack", 100))
        print(row, flush=True)
        rows.append(row)
    result = {"model": source.rsplit("/", 1)[-1], "images": len(x), "seed": args.seed,
              "torchattacks": torchattacks.__version__, "rows": rows, "machine": machine()}
    write_result(args.out, result)
    print(table(result))
    return result


def table(result: dict) -> str:
    lines = ["| ε | clean | PGD-20 | APGD-CE-10 (ours / torchattacks) | AutoAttack, 10 steps (ours / "
             "torchattacks) | AutoAttack, 100 steps (ours) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        paper = f"{r['aa100']:.3f}" if "aa100" in r else "–"
        lines.append(f"| {r['eps']:g} | {r['clean']:.3f} | {r['pgd20']:.3f} | {r['apgd_ce10']:.3f} / "
                     f"{r['ta_apgd10']:.3f} | {r['aa10']:.3f} / {r['ta_aa']:.3f} | {paper} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
