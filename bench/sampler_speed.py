"""Wall time of each sampler setting on the registry's DDPM, in one quiet process: the cost
column of the sampler-grid table (``jobs/evaluate.py`` gives the FID column).

    python bench/sampler_speed.py --n 64 --repeats 3
    python bench/sampler_speed.py --tiny        # a tiny random model (seconds; for tests)

Writes bench/measurements/sampler_speed.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hw4.samplers import SamplerSpec
from hw4.trained import load_ddpm, resolve_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-path", default="results")
    parser.add_argument("--checkpoint", default=None, help="a DDPM checkpoint (default: registry)")
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim:10", "ddim:20", "ddim:50",
                                                          "ddim:100", "ddim:50:1"])
    parser.add_argument("--n", type=int, default=64, help="images per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default="bench/measurements/sampler_speed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    storage = args.storage_path
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import make_storage

        storage = str(make_storage(Path(tempfile.mkdtemp(prefix="hw4-bench-"))))
        args.samplers, args.n, args.repeats = ["ddpm", "ddim:5"], 4, 1
    ddpm = load_ddpm(resolve_checkpoint(storage, "ddpm", args.checkpoint))
    SamplerSpec.parse("ddim:2").run(ddpm, args.n, 0)  # warm-up
    rows = []
    for spec in args.samplers:
        sampler = SamplerSpec.parse(spec)
        times = []
        for k in range(args.repeats):
            t0 = time.perf_counter()
            sampler.run(ddpm, args.n, k)
            times.append(time.perf_counter() - t0)
        rows.append({"sampler": spec, "label": sampler.label, "n": args.n,
                     "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "ms_per_image": 1000 * statistics.median(times) / args.n})
    ddpm_row = next((r for r in rows if r["sampler"] == "ddpm"), None)
    for r in rows:
        r["speedup_vs_ddpm"] = ddpm_row["median_s"] / r["median_s"] if ddpm_row else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "checkpoint": str(ddpm.path),
                               "rows": rows}, indent=2) + "\n")
    print(f"{torch.get_num_threads()} torch threads, {args.n} images per call, "
          f"median of {args.repeats}\n")
    print("| sampler | median s | min–max s | ms/image | × faster than DDPM |\n|---|---:|---:|---:|---:|")
    for r in rows:
        x = f"{r['speedup_vs_ddpm']:.1f}" if r["speedup_vs_ddpm"] else ""
        print(f"| {r['label']} | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} "
              f"| {r['ms_per_image']:.1f} | {x} |")


if __name__ == "__main__":
    main()
