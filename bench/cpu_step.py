"""The demo's DDPM training step on a CPU, side by side: fp32 against bf16 autocast, each on
NCHW and on channels-last activations, eager, and under torch.compile in the layout the job picks
(its compile time counted apart), images per second; then the loss curve that matters: the same
model, data, timesteps and noise trained in fp32 and in bf16 (each in the job's layout), scored
on one fixed validation batch in fp32 every ``--every`` steps.

    python -m bench.cpu_step                          # batch 128, the CPU's threads; ~15 minutes
    python -m bench.cpu_step --parts speed            # speed only (on a quiet machine)
    python -m bench.cpu_step --parts curves --out bench/measurements/cpu_step_curves.json
    python -m bench.cpu_step --tiny                   # seconds; for tests

The model is ``train_ddpm``'s demo U-Net (its SMALL preset: width 16, v target, Min-SNR-5),
class-conditional, with AdamW and the EMA as the job runs them (``hw4.train.ddpm_train_step``).
Writes bench/measurements/cpu_step.json and docs/images/cpu_step_curves.png.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch._inductor import config as inductor_config

from bench.common import RESULTS, interleaved, machine, write_result
from hw4 import data, diffusion, precision, train, viz
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = UNetConfig(base_channels=16, channel_mults=(1, 2, 4), attention_resolutions=(4,), dropout=0.0,
                   num_classes=10)
TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                  groups=4, num_classes=10)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# the step's variants: (autocast dtype, channels-last activations); "fp32" is the step as it ran
# before the layout rule (NCHW), the base of every ratio
VARIANTS = {"fp32": (None, False), "fp32 channels-last": (None, True),
            "bf16": (torch.bfloat16, False), "bf16 channels-last": (torch.bfloat16, True)}


def setup(cfg: UNetConfig, seed: int, channels_last: bool = False):
    torch.manual_seed(seed)
    model = UNet(cfg)
    model.channels_last = channels_last
    opt = train.make_optimizer(model.parameters(), 1e-3)
    return model, opt, train.EMA(model, 0.995)


def job_layout(dtype: torch.dtype | None) -> bool:
    """The layout the training job picks on a CPU for ``dtype`` (``hw4.precision``)."""
    return precision.channels_last("cpu", dtype)


def step_fn(model, opt, ema, schedule, x, y, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def step():
        return train.ddpm_train_step(model, schedule, x, opt, labels=y, p_uncond=0.1,
                                     prediction="v", weighting="min-snr", ema=ema,
                                     autocast_dtype=dtype, generator=g)
    return step


def speed(cfg: UNetConfig, x, y, schedule, repeats: int, compile_too: bool, rounds: int = 1) -> dict:
    """Seconds per step of each variant, interleaved; compile time apart (compiled in the
    layout the job picks for its dtype). ``rounds`` blocks of ``repeats`` interleaved steps, each
    block's ratios to fp32 on its own medians: the spread between blocks is this machine's (a
    shared host) and is reported, not averaged away."""
    contenders, compile_s = {}, {}
    for name, (dtype, channels_last) in VARIANTS.items():
        model, opt, ema = setup(cfg, 0, channels_last)
        contenders[name] = step_fn(model, opt, ema, schedule, x, y, dtype, 0)
    for name, dtype in DTYPES.items() if compile_too else ():
        layout = job_layout(dtype)
        cmodel, copt, cema = setup(cfg, 0, layout)
        fn = step_fn(torch.compile(cmodel), copt, cema, schedule, x, y, dtype, 0)
        label = f"{name}{' channels-last' if layout else ''} + compile"
        t0 = time.perf_counter()
        with inductor_config.patch(force_disable_caches=True):  # cold, as a user's first run
            fn()  # the first call compiles
        compile_s[label] = round(time.perf_counter() - t0, 1)
        contenders[label] = fn
    blocks = [interleaved(contenders, repeats, warmup=1) for _ in range(rounds)]
    out = {}
    for name in contenders:
        medians = [b[name]["median"] for b in blocks]
        ratios = [b["fp32"]["median"] / b[name]["median"] for b in blocks]
        out[name] = {"s_per_step": statistics.median(medians),
                     "images_per_s": x.shape[0] / statistics.median(medians),
                     "speedup": statistics.median(ratios), "speedup_per_round": ratios,
                     "s_per_step_per_round": medians, "repeats": repeats, "rounds": rounds}
        if name in compile_s:
            out[name]["compile_s"] = compile_s[name]
    return out


def curves(cfg: UNetConfig, schedule, batch: int, steps: int, every: int, seed: int) -> dict:
    """Validation loss of the same run in fp32 and in bf16 (same init, batches, t and noise)."""
    xs, ys = data.load_tensors("mnist", "train")
    xs = xs * 2 - 1
    xv, yv = data.load_tensors("mnist", "test")
    xv, yv = xv[:512] * 2 - 1, yv[:512]
    gv = torch.Generator().manual_seed(seed + 1)
    tv, nv = train.draw_timesteps_and_noise(xv, schedule.num_timesteps, gv)
    base, _, _ = setup(cfg, seed)
    out: dict = {}
    for name, dtype in DTYPES.items():
        model = copy.deepcopy(base)
        model.channels_last = job_layout(dtype)  # each as the job trains it
        opt = train.make_optimizer(model.parameters(), 1e-3)
        ema = train.EMA(model, 0.995)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))
        points, t0 = [], time.perf_counter()
        for i in range(1, steps + 1):
            idx = order[(i - 1) * batch % len(xs):][:batch]
            train.ddpm_train_step(model, schedule, xs[idx], opt, labels=ys[idx], p_uncond=0.1,
                                  prediction="v", weighting="min-snr", ema=ema, autocast_dtype=dtype,
                                  generator=g)
            if i % every == 0:
                model.eval()
                with torch.no_grad():
                    val = diffusion.training_losses(model, schedule, xv, tv, nv, "v", yv).mean()
                points.append((i, float(val)))
        out[name] = {"points": points, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=10, help="interleaved steps per round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of --repeats, each with its own ratios (the table: their median)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--curve-steps", type=int, default=600)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", choices=["speed", "curves"], default=["speed", "curves"],
                   help="the curves need no quiet machine; the speed table does")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "cpu_step.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "images" / "cpu_step_curves.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TINY if args.tiny else SMALL
    if args.tiny:
        args.batch, args.repeats, args.curve_steps, args.every, args.compile = 8, 2, 4, 2, False
        args.rounds = 2
    schedule = DiffusionSchedule.named("linear", 1000)
    x = torch.rand(args.batch, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (args.batch,))
    flags = sorted(precision.cpu_flags() & {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2"})
    auto = precision.autocast_dtype("auto", "cpu", args.batch)
    result = {"batch": args.batch, "threads": args.threads, "cpu_flags": flags,
              "auto_picks": f"{auto} {'channels-last' if job_layout(auto) else 'NCHW'}",
              "machine": machine()}
    if "speed" in args.parts:
        result["speed"] = speed(cfg, x, y, schedule, args.repeats, args.compile, args.rounds)
        print({k: round(v["images_per_s"], 1) for k, v in result["speed"].items()}, flush=True)
    if args.curve_steps and "curves" in args.parts:
        result["curves"] = curves(cfg, schedule, args.batch, args.curve_steps, args.every, args.seed)
    if "curves" in result and not args.tiny:
        viz.line_plot({f"{name} training": ([step for step, _ in c["points"]],
                                                [loss for _, loss in c["points"]])
                       for name, c in result["curves"].items()}, args.plot,
                      xlabel="training step", ylabel="validation loss (v target, unweighted)",
                      title=f"demo U-Net, batch {args.batch}: fp32 and bf16 autocast, same run")
    write_result(args.out, result)
    print(table(result), flush=True)
    return result


def table(result: dict) -> str:
    """The speed table, and the curves' validation losses side by side."""
    lines = [f"CPU flags: {', '.join(result['cpu_flags']) or 'none read'}; --precision auto "
             f"picks {result['auto_picks']}", "",
             "| variant | s / step | images / s | vs fp32 | vs fp32, each round | compile (s) |",
             "|---|---|---|---|---|---|"]
    for name, v in result.get("speed", {}).items():
        each = ", ".join(f"{r:.2f}x" for r in v["speedup_per_round"])
        lines.append(f"| {name} | {v['s_per_step']:.3f} | {v['images_per_s']:.1f} | "
                     f"{v['speedup']:.2f}x | {each} | {v.get('compile_s', '–')} |")
    if "curves" in result:
        lines += ["", "| step | " + " | ".join(result["curves"]) + " |",
                  "|---|" + "---|" * len(result["curves"])]
        columns = [c["points"] for c in result["curves"].values()]
        for row in zip(*columns, strict=True):
            lines.append(f"| {row[0][0]} | " + " | ".join(f"{loss:.4f}" for _, loss in row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
