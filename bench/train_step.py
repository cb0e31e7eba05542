"""The DDPM training step before and after the GPU work, side by side: images per second and
the share of the accelerator's matmul peak, by batch size, precision and torch.compile.

    python -m bench.train_step --device cuda                   # 128 and 512, fp32 and bf16
    python -m bench.train_step --device cuda --compile         # + torch.compile'd variants
    python -m bench.train_step                                 # CPU: batch 128, fp32
    python -m bench.train_step --tiny                          # seconds; for tests

``before`` is the step as it was (t and noise drawn on the host and copied, a Python float of the
loss and the gradient norm every step, one EMA lerp per tensor, unfused AdamW, batches collated
from a CPU DataLoader and copied); ``after`` is ``hw4.train.ddpm_train_step`` as the job runs it
(t and noise drawn on the device, metrics left there, foreach EMA, fused AdamW on CUDA, the data
set on the device). Both train the same U-Net (``UNetConfig()``, the DDPM job's default) on the
same math. Needs torch only (no Ray), so it runs on a bare GPU machine.

FLOPs are counted by torch's FlopCounterMode on one eager training step: 2 per multiply-add of
every matmul and convolution, forward and backward (elementwise ops, norms and the optimizer are
not counted). The peak is the best rate of square matmuls over several sizes in the dtype the
variant computes in, measured in the same run, so the share can not pass 100% by a weak peak.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from bench.common import RESULTS, device, matmul_peak, summary, sync, write_result
from hw4 import diffusion, train
from hw4.checkpoint import unwrap
from hw4.data import TensorBatches
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                  groups=4)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def legacy_ema_update(ema: train.EMA, model: torch.nn.Module) -> None:
    """The EMA update as it was: one lerp_ per tensor."""
    ema.num_updates += 1
    d = min(ema.decay, (1 + ema.num_updates) / (10 + ema.num_updates))
    with torch.no_grad():
        for k, v in unwrap(model).state_dict().items():
            if v.dtype.is_floating_point:
                ema.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                ema.shadow[k].copy_(v)


def legacy_step(model, schedule, x0, optimizer, ema, autocast, generator) -> dict[str, float]:
    """``hw4.train.ddpm_step`` before the GPU work (commit e0f17cf), line for line."""
    model.train()
    t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t, noise = t.to(x0.device), noise.to(x0.device)
    ctx = torch.autocast(x0.device.type, dtype=autocast) if autocast else nullcontext()
    with ctx:
        loss = diffusion.training_losses(model, schedule, x0, t, noise, "eps").mean()
    optimizer.zero_grad(set_to_none=True)
    loss.float().backward()
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
    optimizer.step()
    legacy_ema_update(ema, model)
    return {"loss": loss.item(), "grad_norm": float(norm)}


def make_variant(kind: str, cfg: UNetConfig, batch: int, precision: str, compiled: bool,
                 images: torch.Tensor, labels: torch.Tensor, dev: torch.device, steps: int):
    """A callable that runs ``steps`` training steps of one variant and waits for the device."""
    torch.manual_seed(0)
    model = UNet(cfg).to(dev)
    ema = train.EMA(model, 0.999)
    schedule = DiffusionSchedule.named("linear", 1000).to(dev)
    autocast = DTYPES[precision]
    forward = torch.compile(model) if compiled else model
    if kind == "before":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        loader = DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True,
                            drop_last=True)
        gen = torch.Generator().manual_seed(0)

        def run() -> None:
            done = 0
            while done < steps:
                for x, _ in loader:
                    legacy_step(forward, schedule, x.to(dev), opt, ema, autocast, gen)
                    done += 1
                    if done == steps:
                        break
            sync(dev)
    else:
        opt = train.make_optimizer(model.parameters(), 2e-4, dev)
        loader = TensorBatches(images, labels, batch, device=dev)
        gen = torch.Generator(device=dev).manual_seed(0)

        def run() -> None:
            done, sums = 0, {}
            while done < steps:
                for x, _ in loader:
                    m = train.ddpm_train_step(forward, schedule, x, opt, ema=ema, autocast_dtype=autocast,
                                              generator=gen)
                    sums = {k: sums.get(k, 0) + v for k, v in m.items()}
                    done += 1
                    if done == steps:
                        break
            float(sums["loss"])  # what the job reads once per log interval
            sync(dev)
    return run, model, schedule, opt


def train_flops_per_image(cfg: UNetConfig, batch: int, dev: torch.device) -> float:
    model = UNet(cfg).to(dev)
    schedule = DiffusionSchedule.named("linear", 1000).to(dev)
    x0 = torch.rand(batch, 1, 28, 28, device=dev) * 2 - 1
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with FlopCounterMode(display=False) as counter:
        train.ddpm_train_step(model, schedule, x0, opt, generator=torch.Generator(device=dev))
    return counter.get_total_flops() / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="default: 128 512 on CUDA, 128 on the CPU")
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                        help="default: fp32 bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd variants")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--images", type=int, default=8192, help="training images (random)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = parser.parse_args()
    dev = device(args.device)
    cuda = dev.type == "cuda"
    cfg = TINY if args.tiny else UNetConfig()
    batches = args.batches or ([8] if args.tiny else [128, 512] if cuda else [128])
    precisions = args.precisions or (["fp32", "bf16"] if cuda else ["fp32"])
    steps = args.steps or (2 if args.tiny else 50 if cuda else 5)
    repeats = 2 if args.tiny else args.repeats
    sizes = [128, 256] if args.tiny else [2048, 4096, 8192] if cuda else [512, 1024, 2048]
    torch.manual_seed(0)
    images = torch.rand(max(args.images, max(batches)) if not args.tiny else 64, 1, 28, 28) * 2 - 1
    labels = torch.randint(0, 10, (len(images),))
    peaks = {p: matmul_peak(DTYPES[p] or torch.float32, sizes, dev, 2 if args.tiny else 3)
             for p in precisions}
    rows = []
    for batch in batches:
        flops = train_flops_per_image(cfg, batch, dev)
        for precision in precisions:
            for compiled in ([False, True] if args.compile else [False]):
                variants = {}
                for kind in ("before", "after"):
                    t0 = time.perf_counter()
                    run, *_ = make_variant(kind, cfg, batch, precision, compiled, images, labels,
                                           dev, steps)
                    run()  # warm-up (and compiling)
                    variants[kind] = {"run": run, "warmup_s": time.perf_counter() - t0, "times": []}
                for _ in range(repeats):  # interleaved: before, after, before, after, ...
                    for v in variants.values():
                        t0 = time.perf_counter()
                        v["run"]()
                        v["times"].append((time.perf_counter() - t0) / steps)
                for kind, v in variants.items():
                    s = summary(v["times"])
                    rate = flops * batch / s["median"]
                    rows.append({"variant": kind, "batch": batch, "precision": precision,
                                 "compile": compiled, "step_s": s, "warmup_s": v["warmup_s"],
                                 "images_per_s": batch / s["median"], "flops_per_s": rate,
                                 "share_of_peak": rate / peaks[precision]["flops_per_s"]})
                print(f"batch {batch} {precision} compile={compiled}: " + ", ".join(
                    f"{r['variant']} {r['step_s']['median'] * 1e3:.1f} ms" for r in rows[-2:]), flush=True)
    result = {"device": str(dev), "steps_per_round": steps, "repeats": repeats, "config": cfg.__dict__,
              "train_flops_per_image": flops, "matmul_peaks": peaks, "rows": rows}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"{result['device']}, {result['repeats']} interleaved rounds of "
             f"{result['steps_per_round']} steps; median (min–max) per step", "",
             "| batch | precision | compile | step before | step after | img/s before | img/s after "
             "| after / before | after: share of peak |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = result["rows"]
    for before, after in zip(rows[::2], rows[1::2], strict=True):
        b, a = before["step_s"], after["step_s"]
        lines.append(
            f"| {after['batch']} | {after['precision']} | {'yes' if after['compile'] else 'no'} "
            f"| {b['median'] * 1e3:.1f} ms ({b['min'] * 1e3:.1f}–{b['max'] * 1e3:.1f}) "
            f"| {a['median'] * 1e3:.1f} ms ({a['min'] * 1e3:.1f}–{a['max'] * 1e3:.1f}) "
            f"| {before['images_per_s']:,.0f} | {after['images_per_s']:,.0f} "
            f"| {b['median'] / a['median']:.2f}× | {100 * after['share_of_peak']:.1f}% |")
    lines += ["", "Matmul peaks measured in the same run (best over sizes): " + ", ".join(
        f"{p['dtype']} {p['flops_per_s'] / 1e9:,.0f} GFLOP/s at {p['n']}²"
        for p in result["matmul_peaks"].values()),
        f"Training FLOPs per image (matmuls and convolutions, forward + backward): "
        f"{result['train_flops_per_image'] / 1e9:.2f} GFLOP"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
