"""Regenerate docs/performance.md's tables from bench/measurements/*.json.

    python -m bench.tables              # rewrite the block between the bench markers in place
    python -m bench.tables --print      # print it instead
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import memory, ray_overhead, samplers, unet_speed
from bench.common import RESULTS

BEGIN = "<!-- bench:begin: `python -m bench.tables` writes this block from bench/measurements/ -->"
END = "<!-- bench:end -->"
SECTIONS = [  # (title, command, goal, result file, module)
    ("Ray Train overhead", "python -m bench.ray_overhead",
     "Ray / plain ≥ 0.95", "ray_overhead.json", ray_overhead),
    ("U-Net against diffusers' UNet2DModel (matched parameters)", "python -m bench.unet_speed",
     "ours ≥ 1.0× in both phases", "unet_speed.json", unet_speed),
    ("Samplers against diffusers' schedulers, same network", "python -m bench.samplers",
     "ours ≥ 1.0×; DDPM-1000 / DDIM-50 ≥ 19×", "samplers.json", samplers),
    ("Peak memory per batch size", "python -m bench.memory", "none, measured",
     "memory.json", memory),
]


def block(results: Path = RESULTS) -> str:
    parts = [BEGIN]
    first = True
    for title, command, goal, name, module in SECTIONS:
        path = results / name
        if not path.exists():
            parts.append(f"\n### {title}\n\nNo results yet: run `{command}`.")
            continue
        result = json.loads(path.read_text())
        if first:
            m = result["machine"]
            parts.append(f"\nMachine: {m['cpu']}, {m['cpus']} CPUs, {m['torch_threads']} torch "
                         f"threads, torch {m['torch']}, Python {m['python']}, device {m['device']}.")
            first = False
        parts.append(f"\n### {title}\n\n`{result.get('command', command)}` (goal: {goal})\n\n"
                     f"{module.markdown(result)}")
    parts.append(END)
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true")
    parser.add_argument("--file",
                        default=str(Path(__file__).resolve().parents[1] / "docs" / "performance.md"))
    args = parser.parse_args()
    text = block()
    if args.print:
        print(text)
        return
    doc = Path(args.file).read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Performance (`make bench`)\n\n" + text
    Path(args.file).write_text(doc)
    print(f"wrote the performance tables into {args.file}")


if __name__ == "__main__":
    main()
