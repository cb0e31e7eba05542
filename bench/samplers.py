"""Our samplers against diffusers' ``DDIMScheduler`` / ``DDPMScheduler`` driving the same
network with the same betas, interleaved in one process: DDIM-20, DDIM-50 and DDPM-1000, and
the wall-time ratio DDPM-1000 / DDIM-50. Each setting is also timed with a network that costs
next to nothing, which isolates the sampler loops' own cost per step (the only part that differs
between the two). A cross-check runs our ``ddim_step`` on diffusers' own timestep pairs from the
same x_T and reports the largest difference of the outputs.

    python -m bench.samplers                          # default U-Net (random weights), n = 16
    python -m bench.samplers --checkpoint results/demo-ddpm/artifacts/checkpoint.pt
    python -m bench.samplers --tiny                   # tiny model, 20 steps (seconds; for tests)

Writes bench/measurements/samplers.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import RESULTS, device, fmt, interleaved, ratio, sync, write_result
from bench.unet_speed import DEFAULT, TINY
from hw4 import reverse, samplers
from hw4.diffusion import DiffusionSchedule
from hw4.models.unet import UNet
from hw4.trained import load_ddpm


def diffusers_sampler(model, schedule: DiffusionSchedule, shape, method: str, steps: int,
                      generator: torch.Generator, dev: torch.device) -> torch.Tensor:
    """The loop from diffusers' pipelines (DDPMPipeline / DDIMPipeline), without the pipeline's
    image post-processing: same betas, clipping on, fixed-small variance, eta = 0, and DDIM's
    direction from the clipped x0 as ours (``use_clipped_model_output``)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=schedule.num_timesteps,
                  trained_betas=schedule.betas.double().numpy(), clip_sample=True,
                  prediction_type="epsilon")
    if method == "ddpm":
        sched = DDPMScheduler(variance_type="fixed_small", **common)
    else:
        sched = DDIMScheduler(set_alpha_to_one=True, timestep_spacing="linspace", **common)
    sched.set_timesteps(steps, device=dev)
    x = torch.randn(shape, generator=generator).to(dev)
    with torch.inference_mode():
        for t in sched.timesteps:
            eps = model(x, t.expand(shape[0]).to(dev))
            if method == "ddpm":
                x = sched.step(eps, t, x, generator=generator).prev_sample
            else:
                x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


def cross_check(model, schedule: DiffusionSchedule, steps: int, dev: torch.device) -> float:
    """Max |ours - diffusers| after a DDIM (eta = 0) run on diffusers' timestep pairs."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=schedule.num_timesteps,
                          trained_betas=schedule.betas.double().numpy(), clip_sample=True,
                          set_alpha_to_one=True, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    x_ours = x_theirs = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(dev)
    stride = schedule.num_timesteps // steps
    with torch.inference_mode():
        for t in sched.timesteps.tolist():
            tt = torch.full((4,), t, device=dev, dtype=torch.long)
            x_theirs = sched.step(model(x_theirs, tt), t, x_theirs, eta=0.0,
                                  use_clipped_model_output=True).prev_sample
            t_prev = max(t - stride, -1)
            x_ours = reverse.ddim_step(schedule, model(x_ours, tt), t, t_prev, x_ours).prev_sample
    return float((x_ours - x_theirs).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a DDPM checkpoint (default: random "
                        "weights of the DDPM job's default U-Net; speed does not depend on them)")
    parser.add_argument("--n", type=int, default=16, help="images per call")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the DDPM runs")
    parser.add_argument("--ddim-repeats", type=int, default=20,
                        help="rounds of the DDIM runs (seconds each: more rounds, less noise)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "samplers.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        trained = load_ddpm(args.checkpoint)
        model, schedule = trained.model, trained.schedule
    else:
        model = UNet(TINY if args.tiny else DEFAULT)
        schedule = DiffusionSchedule.named("linear", 20 if args.tiny else 1000)
    model = model.to(dev).eval()
    T = schedule.num_timesteps
    if args.tiny:
        args.n, args.repeats, args.ddim_repeats = 2, 1, 1
    shape = (args.n, 1, 28, 28)
    settings = [("ddim", 5), ("ddim", 10), ("ddpm", T)] if args.tiny else [
        ("ddim", 20), ("ddim", 50), ("ddpm", T)]

    def ours(method, steps, net=model):
        def run():
            samplers.sample(net, schedule, shape, method=method, steps=steps, eta=0.0, clip=True,
                             generator=torch.Generator().manual_seed(0), device=dev)  # as theirs
            sync(dev)
        return run

    def theirs(method, steps, net=model):
        def run():
            diffusers_sampler(net, schedule, shape, method, steps,
                              torch.Generator().manual_seed(0), dev)
            sync(dev)
        return run

    def null_net(x, t):  # costs next to nothing: what is left is the sampler's own loop
        return 0.1 * x

    ours("ddim", 2)()  # warm-up: the network's first calls, both loops' imports
    theirs("ddim", 2)()
    rows = []
    few = settings[1][1]  # DDIM-50 (10 in tiny mode): the one DDPM is compared with
    for method, steps in settings:
        contenders = {"ours": ours(method, steps), "diffusers": theirs(method, steps)}
        if method == "ddpm":  # a DDIM run beside each DDPM run: their ratio per round dodges drift
            contenders |= {"ours ddim": ours("ddim", few), "diffusers ddim": theirs("ddim", few)}
        t = interleaved(contenders, args.repeats if method == "ddpm" else args.ddim_repeats, warmup=0)
        if method == "ddpm":
            fewer = {k: ratio(t[k], t[f"{k} ddim"]) for k in ("ours", "diffusers")}
        loop = interleaved({"ours": ours(method, steps, null_net),
                            "diffusers": theirs(method, steps, null_net)}, 5)
        rows.append({"sampler": f"{method.upper()}-{steps}", "method": method, "steps": steps,
                     "ours": t["ours"], "diffusers": t["diffusers"],
                     "speedup": ratio(t["diffusers"], t["ours"]),
                     "loop_ms_per_step": {k: 1000 * v["median"] / steps for k, v in loop.items()}})
    ddim50, ddpm = rows[1], rows[2]
    diff = cross_check(model, schedule, 10 if not args.tiny else 5, dev)
    result = {"n": args.n, "repeats": args.repeats, "ddim_repeats": args.ddim_repeats,
              "device": str(dev), "timesteps": T,
              "checkpoint": args.checkpoint, "rows": rows, "ddpm_over_ddim": fewer,
              "ddpm_steps_over_ddim_steps": ddpm["steps"] / ddim50["steps"],
              "cross_check_max_abs_diff": diff}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{result['n']} images per call, median (min–max) of {result.get('ddim_repeats')} "
             f"interleaved rounds for DDIM and {result['repeats']} for DDPM, {result['device']}", "",
             "| sampler | ours s | diffusers s | ours × faster | loop alone, ms/step: ours | diffusers |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, loop = r["speedup"], r["loop_ms_per_step"]
        lines.append(f"| {r['sampler']} | {fmt(r['ours'], digits=2)} | {fmt(r['diffusers'], digits=2)} "
                     f"| {s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}) "
                     f"| {loop['ours']:.3f} | {loop['diffusers']:.3f} |")
    fewer = result["ddpm_over_ddim"]
    lines += ["", f"{rows[2]['sampler']} / {rows[1]['sampler']} wall time, runs paired in each round: "
              + ", ".join(f"{k} {v['median']:.1f}× ({v['min']:.1f}–{v['max']:.1f})" for k, v in fewer.items())
              + f" (step ratio {result['ddpm_steps_over_ddim_steps']:.0f}×)",
              f"cross-check, DDIM on diffusers' timesteps: max |ours − diffusers| = "
              f"{result['cross_check_max_abs_diff']:.2e}"]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
