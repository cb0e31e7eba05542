"""What the Serve app's cost budgets mean in seconds: the time of one image-network call of the
served DDPM and of one gradient evaluation of the adversarial route, in a replica's setting (one
torch thread, the DDPM replica's ``num_cpus: 1``), and so the wall time of a request at the limit.

    python -m bench.serve_limits --ddpm results/demo-ddpm/artifacts/checkpoint.pt \
        --vae results/demo-vae/artifacts/checkpoint.pt
    python -m bench.serve_limits --tiny          # tiny untrained models (seconds; for tests)

Writes bench/measurements/serve_limits.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import RESULTS, summary, write_result
from hw4 import adversarial, data
from hw4.assets import load_classifier
from hw4.trained import TrainedDDPM, TrainedVAE, load_ddpm, load_vae
from hw4.vae_attacks import attack_targets
from serve.schemas import MAX_ATTACK_COST, MAX_SAMPLE_COST


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summary(times)


def tiny() -> tuple[TrainedDDPM, TrainedVAE]:
    from hw4.diffusion import DiffusionSchedule
    from hw4.models.autoencoder import Autoencoder, AutoencoderConfig
    from hw4.models.unet import UNet, UNetConfig

    unet = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,),
                           num_heads=2, groups=4, num_classes=10)).eval()
    ddpm = TrainedDDPM(unet, DiffusionSchedule.named("linear", 20), "eps", {}, {}, None)
    vae = Autoencoder(AutoencoderConfig(latent_dim=4, channels=8, hidden=32)).eval()
    return ddpm, TrainedVAE(vae, None, None, {}, {}, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddpm", default="results/demo-ddpm/artifacts/checkpoint.pt")
    parser.add_argument("--vae", default="results/demo-vae/artifacts/checkpoint.pt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a replica's CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "serve_limits.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ddpm, vae = tiny() if args.tiny else (load_ddpm(args.ddpm), load_vae(args.vae))
    n, steps = (4, 5) if args.tiny else (16, 20)
    labels = torch.arange(n) % 10
    sample = timed(lambda: ddpm.sample(n, steps=steps, labels=labels, guidance=1.0), args.repeats)
    sample_calls = n * steps * 2  # guided: the conditional and null halves
    x, y = data.load_dataset("fashion_mnist", "test", subset=8 if args.tiny else 64, seed=0).tensors
    models = attack_targets(vae, load_classifier("fashion_mnist"))
    attack = timed(lambda: [adversarial.fgsm(m, x, y, 0.1) for m in models.values()], args.repeats)
    attack_evals = len(x) * len(models)
    per_call = sample["median"] / sample_calls
    per_eval = attack["median"] / attack_evals
    result = {"threads": args.threads, "tiny": args.tiny,
              "sample": {"images": n, "steps": steps, "guided": True, "seconds": sample,
                         "seconds_per_image_call": per_call,
                         "seconds_at_limit": per_call * MAX_SAMPLE_COST, "limit": MAX_SAMPLE_COST},
              "attack": {"images": len(x), "models": list(models), "seconds": attack,
                         "seconds_per_gradient_eval": per_eval,
                         "seconds_at_limit": per_eval * MAX_ATTACK_COST, "limit": MAX_ATTACK_COST}}
    write_result(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    s, a = result["sample"], result["attack"]
    ms_call, ms_eval = s["seconds_per_image_call"] * 1e3, a["seconds_per_gradient_eval"] * 1e3
    return "\n".join([
        f"{result['threads']} torch thread(s), median of repeats",
        "",
        "| route | unit of cost | seconds per unit | limit (units) | seconds at the limit |",
        "|---|---|---:|---:|---:|",
        f"| `/ddpm/sample` | one image through the U-Net once | {ms_call:.2f} ms "
        f"| {s['limit']:,} | {s['seconds_at_limit']:.1f} |",
        f"| `/adversarial` | one image's gradient through one model | {ms_eval:.2f} ms "
        f"| {a['limit']:,} | {a['seconds_at_limit']:.1f} |",
    ])


if __name__ == "__main__":
    main()
