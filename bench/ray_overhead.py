"""Ray Train's overhead: DDPM training images/s of a 1-worker ``TorchTrainer`` against the same
loop called in plain PyTorch: same function, model, data, batch, seed and torch threads.
Repeats alternate plain, Ray, plain, Ray, ...; each run times its steps after a warm-up, so
the throughput excludes Ray's start-up, which is reported on its own.

    python -m bench.ray_overhead                 # default U-Net, batch 128, 20 timed steps
    python -m bench.ray_overhead --tiny          # tiny model, random data (seconds; for tests)

Writes bench/measurements/ray_overhead.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import RESULTS, fmt, ratio, summary, write_result
from bench.unet_speed import DEFAULT, TINY


def train_loop(config: dict) -> dict:
    """``steps`` DDPM training steps after ``warmup`` untimed ones; ``report_every`` steps it
    reports metrics (to Ray inside a trainer, to nobody in plain PyTorch)."""
    from torch.utils.data import TensorDataset

    from hw4 import train
    from hw4.data import load_dataset, make_loader
    from hw4.diffusion import DiffusionSchedule
    from hw4.models.unet import UNet, UNetConfig

    in_ray = config["ray"]
    if in_ray:
        import ray.train

        from jobs.worker import prepare_model
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model = UNet(UNetConfig(**config["unet"]))
    if in_ray:
        model = prepare_model(model)
    n = config["batch"] * (config["steps"] + config["warmup"])
    if config["tiny"]:
        data = TensorDataset(torch.rand(n, 1, 28, 28) * 2 - 1, torch.zeros(n, dtype=torch.long))
    else:
        data = load_dataset("mnist", "train", normalization="symmetric", subset=n)
    loader = make_loader(data, config["batch"], shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    schedule = DiffusionSchedule.named("linear", 1000)
    gen = torch.Generator().manual_seed(0)
    t0 = None
    for i, (x, _) in enumerate(loader):
        if i == config["warmup"]:
            t0 = time.perf_counter()
        metrics = train.ddpm_train_step(model, schedule, x, opt, generator=gen)
        if in_ray and (i + 1) % config["report_every"] == 0:
            ray.train.report({k: float(v) for k, v in metrics.items()})
    result = {"images_per_s": config["batch"] * config["steps"] / (time.perf_counter() - t0)}
    if in_ray:  # Train V2 keeps the metrics of reports that carry a checkpoint
        with tempfile.TemporaryDirectory() as d:
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(d))
    return result


class CpuMeter:
    """CPU seconds used by each process during a block, read from /proc once a second (Linux
    only; elsewhere it measures nothing). Grouped by process title: Ray names its workers
    ``ray::<Actor>`` and its daemons by their programs (raylet, gcs_server, ...)."""

    def __init__(self):
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read() -> dict[int, tuple[str, float]]:
        out, tick = {}, os.sysconf("SC_CLK_TCK")
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                title = (pid_dir / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(pid_dir.name)] = (title, (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, IndexError, ValueError):
                continue
        return out

    def _update(self) -> None:
        for pid, (title, cpu) in self._read().items():
            # an exiting process has an empty cmdline: keep the title it had
            self.last[pid] = (title or self.last.get(pid, ("?", 0.0))[0], cpu)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._update()

    def __enter__(self) -> CpuMeter:
        self.first = {pid: cpu for pid, (_, cpu) in self._read().items()}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()

    def by_title(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for pid, (title, cpu) in self.last.items():
            name = Path(title.split()[0]).name if title else "?"
            name = "this driver" if pid == os.getpid() else name
            used[name] = used.get(name, 0.0) + cpu - self.first.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def ray_run(config: dict, storage: str) -> tuple[dict, float, dict]:
    """The loop inside a 1-worker TorchTrainer; also the fit()'s wall time and the CPU seconds
    each process used meanwhile."""
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    trainer = TorchTrainer(
        train_loop, train_loop_config={**config, "ray": True},
        scaling_config=ray.train.ScalingConfig(num_workers=1,
                                               resources_per_worker={"CPU": config["threads"]}),
        run_config=ray.train.RunConfig(storage_path=storage))
    with CpuMeter() as meter:
        result = trainer.fit()
    return result.metrics, time.perf_counter() - t0, meter.by_title()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--report-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "ray_overhead.json"))
    args = parser.parse_args()
    import ray

    from jobs import driver

    cfg = TINY if args.tiny else DEFAULT
    if args.tiny:
        args.batch, args.steps, args.warmup, args.repeats, args.report_every = 4, 3, 1, 1, 2
    config = {"unet": cfg.__dict__, "batch": args.batch, "steps": args.steps,
              "warmup": args.warmup, "report_every": args.report_every,
              "threads": args.threads, "tiny": args.tiny}
    driver.init_ray(quiet=True, num_cpus=max(args.threads, 1))  # Ray Train's cleaner finds this Ray
    plain, in_ray, fit_s, cpu = [], [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="hw4-bench-ray-") as storage:
            for _ in range(args.repeats):
                plain.append(train_loop({**config, "ray": False})["images_per_s"])
                metrics, wall, used = ray_run(config, storage)
                in_ray.append(metrics["images_per_s"])
                fit_s.append(wall)
                cpu.append(used)
    finally:
        ray.shutdown()
    timed_s = args.batch * args.steps / statistics.median(in_ray)
    result = {"config": config, "plain_images_per_s": summary(plain),
              "ray_images_per_s": summary(in_ray),
              "ratio": ratio(summary(in_ray), summary(plain)),  # Ray / plain, paired by round
              "ray_fit_wall_s": summary(fit_s),
              "ray_fixed_overhead_s": statistics.median(fit_s) - timed_s,
              "cpu_seconds_during_fit": cpu}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [f"batch {c['batch']}, {c['steps']} timed steps, {c['threads']} threads, "
             f"median (min–max) of {result['plain_images_per_s']['repeats']} alternating runs", "",
             "| loop | images/s |", "|---|---:|"]
    for name, key in (("plain PyTorch", "plain_images_per_s"),
                      ("Ray TorchTrainer, 1 worker", "ray_images_per_s")):
        lines.append(f"| {name} | {fmt(result[key], digits=1)} |")
    r, fit = result["ratio"], result["ray_fit_wall_s"]
    lines += ["", f"Ray / plain: {r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f}); fixed cost per "
              f"fit(): {result['ray_fixed_overhead_s']:.1f} s (fit() {fit['median']:.1f} s in all)", "",
              "CPU seconds per process during the last fit(): "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_seconds_during_fit"][-1].items())]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
