"""Our U-Net against diffusers' ``UNet2DModel`` at matched parameter count and resolution:
training step (forward + backward + AdamW, through the same ``hw4.train.ddpm_train_step``) and
inference, interleaved in one process; plus the training step's achieved FLOP/s against this
machine's float32 matmul peak, the best square-matmul rate over several sizes in the same run.

    python -m bench.unet_speed                  # the DDPM job's default U-Net, batch 128
    python -m bench.unet_speed --tiny           # tiny models, 2 repeats (seconds; for tests)

Writes bench/measurements/unet_speed.json (or --out) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import RESULTS, device, fmt, interleaved, matmul_peak, ratio, sync, write_result
from hw4 import train
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig

DEFAULT = UNetConfig()  # the U-Net that jobs/train_ddpm.py trains by default (its defaults)
TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                  groups=4, dropout=0.1)


class DiffusersEps(nn.Module):
    """diffusers' UNet2DModel behind our model signature ``(x_t, t) -> output``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def diffusers_unet(cfg: UNetConfig, last_width: int) -> DiffusersEps:
    """The same layout as ``UNet(cfg)`` in diffusers' blocks: levels, ResNet blocks per level,
    attention at the same resolutions, heads, groups and dropout; the last level ``last_width``
    wide."""
    from diffusers import UNet2DModel

    widths = [cfg.base_channels * m for m in cfg.channel_mults[:-1]] + [last_width]
    attend = [2**lvl in cfg.attention_resolutions for lvl in range(len(widths))]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend))
    return DiffusersEps(UNet2DModel(
        sample_size=28, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
        down_block_types=down, up_block_types=up, norm_num_groups=cfg.groups,
        attention_head_dim=last_width // cfg.num_heads, dropout=cfg.dropout))


def matched_diffusers(cfg: UNetConfig, target: int) -> DiffusersEps:
    """Widen diffusers' last level (in steps that keep groups and heads whole) until its
    parameter count is closest to ``target``: our attention blocks carry a feed-forward layer
    that diffusers' do not, so the same widths would give diffusers fewer parameters."""
    step = math.lcm(cfg.groups, cfg.num_heads)
    base = cfg.base_channels * cfg.channel_mults[-1]
    widths = range(base, 3 * base + 1, step)
    return min((diffusers_unet(cfg, w) for w in widths), key=lambda m: abs(n_params(m) - target))


def unet_at(ref: str, cfg: UNetConfig, like: nn.Module) -> nn.Module:
    """Our U-Net as ``hw4/models/unet.py`` was at git commit ``ref``, with ``like``'s weights:
    the before side of an optimisation, timed in the same run."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{ref}:hw4/models/unet.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    module = types.ModuleType(f"unet_at_{ref}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(src, f"{ref}:hw4/models/unet.py", "exec"), module.__dict__)
    old = module.UNet(module.UNetConfig(**cfg.__dict__))
    old.load_state_dict(like.state_dict())
    return old


PROFILE_GROUPS = [  # (group, substrings of aten op names), first match wins
    ("convolutions", ("conv",)), ("dropout", ("bernoulli", "dropout")), ("GroupNorm", ("group_norm",)),
    ("SiLU / GELU", ("silu", "gelu")), ("matmuls and attention", ("mm", "softmax", "attention")),
    ("optimizer", ("_foreach", "adam")),
]


def profile_shares(step, steps: int = 2) -> dict[str, float]:
    """Share of the training step's self CPU time by kind of op (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    shares: dict[str, float] = {}
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    for e in events:
        group = next((g for g, keys in PROFILE_GROUPS if any(k in e.key.lower() for k in keys)),
                     "everything else")
        shares[group] = shares.get(group, 0.0) + e.self_cpu_time_total / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--against-ref", default=None, metavar="COMMIT",
                        help="also time our U-Net as it was at this git commit")
    parser.add_argument("--compile", action="store_true",
                        help="also time our U-Net under torch.compile (minutes of compiling)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "unet_speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TINY if args.tiny else DEFAULT
    if args.tiny:
        args.batch, args.repeats = 4, 2
    dev = device(args.device)
    torch.manual_seed(0)
    models = {"ours": UNet(cfg)}
    models["diffusers"] = matched_diffusers(cfg, n_params(models["ours"]))
    if args.against_ref:
        models[f"ours@{args.against_ref}"] = unet_at(args.against_ref, cfg, models["ours"])
    if args.compile:
        twin = UNet(cfg)
        twin.load_state_dict(models["ours"].state_dict())
        models["ours+compile"] = torch.compile(twin)
    schedule = DiffusionSchedule.named("linear", 1000).to(dev)
    x0 = torch.rand(args.batch, 1, 28, 28, device=dev) * 2 - 1
    t = torch.randint(0, 1000, (args.batch,), device=dev)

    def train_step(model, opt):
        def step():
            train.ddpm_train_step(model, schedule, x0, opt,
                                  generator=torch.Generator(device=dev).manual_seed(0))
            sync(dev)
        return step

    def infer(model):
        def call():
            model.eval()  # the training step left it in train mode (dropout on)
            with torch.inference_mode():
                model(x0, t)
            sync(dev)
        return call

    train_fns, infer_fns, info = {}, {}, {}
    for name, model in models.items():
        model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        train_fns[name], infer_fns[name] = train_step(model, opt), infer(model)
        if name == "ours+compile":  # same network as ours: same FLOPs; time the compiling
            t0 = time.perf_counter()
            train_fns[name]()
            infer_fns[name]()
            info[name] = {**info["ours"], "compile_s": time.perf_counter() - t0}
            continue
        model.train()
        flops = count_flops(train_fns[name])
        model.eval()
        info[name] = {"params": n_params(model), "train_flops_per_image": flops / args.batch,
                      "forward_flops_per_image": count_flops(infer_fns[name]) / args.batch}
    timings = {"train": interleaved(train_fns, args.repeats), "infer": interleaved(infer_fns, args.repeats)}
    sizes = [128, 256] if args.tiny else [512, 1024, 2048, 4096] if dev.type == "cpu" else [2048, 4096, 8192]
    peak = matmul_peak(torch.float32, sizes, dev, args.repeats)
    profiles = {name: profile_shares(train_fns[name]) for name in ("ours", "diffusers")}
    rows = []
    for phase, t_ in timings.items():
        rows.append({"phase": phase, "ours": t_["ours"], "diffusers": t_["diffusers"],
                     "speedup": ratio(t_["diffusers"], t_["ours"]),
                     "variants": {k: {**v, "vs_ours": ratio(t_["ours"], v)} for k, v in t_.items()
                                  if k not in ("ours", "diffusers")},
                     "images_per_s": {k: args.batch / v["median"] for k, v in t_.items()}})
    for name in models:
        step = timings["train"][name]["median"]
        achieved = info[name]["train_flops_per_image"] * args.batch / step
        info[name]["train_flops_per_s"] = achieved
        info[name]["fraction_of_matmul_peak"] = achieved / peak["flops_per_s"]
    result = {"batch": args.batch, "repeats": args.repeats, "device": str(dev), "ref": args.against_ref,
              "train_step_profile": profiles,
              "config": cfg.__dict__, "models": info, "rows": rows, "matmul_peak": peak}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    """The tables of BENCHMARKS.md from a result."""
    lines = [f"batch {result['batch']}, median (min–max) of {result['repeats']} interleaved "
             f"repeats, {result['device']}", "",
             "| model | parameters | forward MFLOP/image | train step GFLOP/s | of matmul peak |",
             "|---|---:|---:|---:|---:|"]
    for name, i in result["models"].items():
        lines.append(f"| {name} | {i['params']:,} | {i['forward_flops_per_image'] / 1e6:.1f} "
                     f"| {i['train_flops_per_s'] / 1e9:.1f} | {100 * i['fraction_of_matmul_peak']:.0f}% |")
    peak = result["matmul_peak"]
    sizes = ", ".join(f"{n}²" for n in peak.get("sizes", [peak["n"]]))
    lines += ["", f"float32 matmul peak (best of {sizes}: "
              f"{peak['n']}²): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s. FLOPs: FlopCounterMode's count of "
              "matmuls and convolutions (2 per multiply-add), forward and backward; elementwise ops, norms "
              "and the optimizer are not counted.", "",
              "| phase | ours s | diffusers s | ours × faster |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        sp = r["speedup"]
        lines.append(f"| {r['phase']} | {fmt(r['ours'])} | {fmt(r['diffusers'])} | "
                     f"{sp['median']:.2f} ({sp['min']:.2f}–{sp['max']:.2f}) |")
    if result.get("train_step_profile"):
        prof = result["train_step_profile"]
        groups = list(dict.fromkeys(g for p in prof.values() for g in p))
        shares = "; ".join(f"{g} " + " / ".join(f"{100 * p.get(g, 0):.1f}%" for p in prof.values())
                           for g in groups)
        lines += ["", f"Where a training step's CPU time goes (torch.profiler, self time, "
                      f"{' / '.join(prof)}): {shares}."]
    if "ours+compile" in result["models"]:
        lines += ["", f"torch.compile: {result['models']['ours+compile']['compile_s']:.0f} s of "
                  "compiling before the first training step and inference call."]
    variants = list(result["rows"][0].get("variants", {}))
    if variants:
        speeds = "; ".join(f"{name} in {r['phase']} {fmt(v)} s, "
                           f"{v['vs_ours']['median']:.2f}× ours ({v['vs_ours']['min']:.2f}–"
                           f"{v['vs_ours']['max']:.2f})"
                           for r in result["rows"] for name, v in r["variants"].items())
        lines += ["", "Variants of ours, same weights, same run (`ours@COMMIT`: the U-Net as it was at "
                  f"that commit, before this round of optimisations): {speeds}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
