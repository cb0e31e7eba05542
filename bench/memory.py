"""Peak memory of DDPM training and sampling per batch size, each measured in a fresh process
(peak resident set size from ``getrusage``; on a GPU also torch's peak allocation).

    python -m bench.memory                   # default U-Net; train 32/128/512, sample 16/64/256
    python -m bench.memory --tiny            # tiny model, one size each (seconds; for tests)

Writes bench/measurements/memory.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from bench.common import RESULTS, device, write_result
from bench.unet_speed import DEFAULT, TINY


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(mode: str, batch: int, tiny: bool, dev_name: str | None) -> dict:
    """Runs in the fresh process: build the model, note the peak so far, run the work."""
    from hw4 import samplers, train
    from hw4.diffusion import DiffusionSchedule
    from hw4.models.unet import UNet

    dev = device(dev_name)
    torch.manual_seed(0)
    model = UNet(TINY if tiny else DEFAULT).to(dev)
    schedule = DiffusionSchedule.named("linear", 1000)
    baseline = peak_rss_mib()
    if mode == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        x0 = torch.rand(batch, 1, 28, 28, device=dev) * 2 - 1
        for _ in range(2):  # the second step also holds AdamW's state
            train.ddpm_train_step(model, schedule.to(dev), x0, opt)
    else:
        samplers.sample(model.eval(), schedule, (batch, 1, 28, 28), method="ddim", steps=3,
                         generator=torch.Generator().manual_seed(0), device=dev)
    out = {"mode": mode, "batch": batch, "baseline_rss_mib": baseline,
           "peak_rss_mib": peak_rss_mib()}
    out["work_rss_mib"] = out["peak_rss_mib"] - baseline
    if dev.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--device", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "memory.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.tiny, args.device)))
        return
    if args.tiny:
        args.train_batches, args.sample_batches = [4], [2]
    jobs = [("train", b) for b in args.train_batches] + [("sample", b) for b in args.sample_batches]
    rows = []
    for mode, batch in jobs:
        cmd = [sys.executable, "-m", "bench.memory", "--child", mode, str(batch)]
        cmd += ["--tiny"] * args.tiny + (["--device", args.device] if args.device else [])
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    result = {"config": (TINY if args.tiny else DEFAULT).__dict__, "rows": rows}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    """One row per kind of work, its batch sizes as columns: peak RSS (above the loaded model)."""
    batches = sorted({r["batch"] for r in result["rows"]})
    lines = ["| peak RSS MiB (above the loaded model) | " + " | ".join(f"batch {b}" for b in batches)
             + " |", "|---|" + "---:|" * len(batches)]
    for mode, what in (("train", "training step (AdamW)"), ("sample", "DDIM sampling")):
        cells = {r["batch"]: f"{r['peak_rss_mib']:.0f} ({r['work_rss_mib']:.0f})"
                 for r in result["rows"] if (r["mode"] == "train") == (mode == "train")}
        lines.append(f"| {what} | " + " | ".join(cells.get(b, "–") for b in batches) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
