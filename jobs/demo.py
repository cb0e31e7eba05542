"""`make demo`: train a small VAE and a small DDPM end to end on local Ray, then serve them with
Ray Serve on 127.0.0.1 and save a DDPM sample fetched over HTTP.

Sized for a 2-core laptop without a GPU (under 20 minutes); a GPU or more workers only make it
faster. Running it again reuses the finished runs under --storage-path (delete it to retrain).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from pathlib import Path

import requests

from hw4.atomic_files import write_bytes_atomic
from hw4.errors import HW4Error
from jobs import cli, driver, train_ddpm, train_vae

VAE_ARGS = ["--name", "demo-vae", "--epochs", "5", "--classifier-epochs", "2"]
# the class-conditional U-Net of the homework, labels dropped 10% of the time, trained with the
# small preset and the recipe (v target, Min-SNR-5, cosine LR) for 1,560 steps of 128 (about 9
# minutes of bf16 steps on 2 cores: bench/quality.py's budget); samples and the served grid use
# DPM-Solver++(2M) in 10 network calls with guidance w = 1
DDPM_ARGS = ["--name", "demo-ddpm", "--epochs", "4", "--train-subset", "50000",
             "--preset", "small", "--sample-every", "1", "--conditional",
             "--p-uncond", "0.1", "--guidance", "1", "--sampler", "dpm++2m", "--sample-steps", "10",
             "--num-samples", "80"]


SERVED_DIGITS_PER_ROW = 6


def serve_and_sample(storage_path: str, port: int) -> tuple[Path, dict]:
    """Start the Serve app on the registry's checkpoints, fetch a DPM-Solver++(2M)-10 grid over HTTP (one row
    per digit, with the pinned classifier's verdicts), stop Serve."""
    import ray
    from ray import serve

    from serve.app import build_app

    driver.init_ray(quiet=True)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are not for users
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 300})
    try:
        serve.run(build_app({"storage_path": storage_path}), name="hw4", route_prefix="/")
        per = SERVED_DIGITS_PER_ROW
        body = {"n": 10 * per, "sampler": "dpm++2m", "steps": 10, "seed": 0,
                "labels": [d for d in range(10) for _ in range(per)], "guidance": 1.0,
                "nrow": per, "format": "json"}
        r = requests.post(f"http://127.0.0.1:{port}/ddpm/sample", timeout=600, json=body)
        if r.status_code != 200:
            raise HW4Error(f"the Serve app answered {r.status_code}: {r.text[:300]}")
        reply = r.json()
        out = Path(storage_path) / "serve_sample.png"
        write_bytes_atomic(out, base64.b64decode(reply["grid_png_base64"]))
        hits = sum(a == b for a, b in zip(reply["labels"], reply["verdict"]["class"], strict=True))
        return out, {"asked": len(reply["labels"]), "recognised": hits, "seconds": reply["seconds"],
                     "grey": sum(reply["verdict"]["grey_background"])}
    finally:
        if os.environ.get("RAY_ADDRESS"):
            serve.shutdown()  # a cluster's Ray outlives the demo: remove the app from it
        else:
            ray.shutdown()  # the demo's own local Ray: stopping it stops Serve with it


def summary(vae: dict, ddpm: dict, served: Path, verdict: dict, times: dict[str, float],
            storage_path: str) -> str:
    """What a person reads at the end: what was trained, how long, how good, where things are."""
    v, d = vae["final"], ddpm["best"]
    storage = Path(storage_path).resolve()
    return "\n".join([
        "",
        f"demo finished in {sum(times.values()) / 60:.1f} min "
        f"(VAE {times['vae']:.0f} s, DDPM {times['ddpm']:.0f} s, Serve {times['serve']:.0f} s)",
        f"  VAE  on Fashion-MNIST: test ELBO {-v['val_loss']:.1f} nats, latent classifier "
        f"accuracy {v.get('finetune_accuracy', float('nan')):.3f}",
        f"       {Path(vae['checkpoint']).parent}/ (reconstructions.png, traversal.png, samples.png)",
        f"  DDPM on MNIST: class-conditional, {ddpm['config']['prediction']} target, validation "
        f"MSE {d['val_loss']:.4f} after {d['step']} steps",
        f"       {Path(ddpm['checkpoint']).parent}/ (samples.png: one row per digit)",
        f"  served over HTTP: {served} ({verdict['recognised']} of {verdict['asked']} samples are "
        f"the digit asked for, by the pinned MNIST classifier; {verdict['grey']} have a grey or "
        f"speckled background by hw4.evaluation.grey_backgrounds; {verdict['seconds']:.1f} s)",
        f"  curves: tensorboard --logdir {storage}",
        f"  the web page: serve run serve.app:build_app storage_path={storage}, "
        "then open http://127.0.0.1:8000/",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-path", default="results")
    parser.add_argument("--num-workers", default="1")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port (loopback)")
    parser.add_argument("--verbose", action="store_true", help="Ray's worker logs, not one line per phase")
    args = parser.parse_args(argv)
    shared = ["--storage-path", args.storage_path, "--num-workers", args.num_workers,
              "--no-quiet" if args.verbose else "--quiet"]
    times: dict[str, float] = {}
    t0 = time.time()
    vae = train_vae.main(VAE_ARGS + shared)
    times["vae"] = time.time() - t0
    ddpm = train_ddpm.main(DDPM_ARGS + shared)
    times["ddpm"] = time.time() - t0 - times["vae"]
    print("serving the checkpoints and sampling over HTTP ...", flush=True)
    served, verdict = serve_and_sample(args.storage_path, args.port)
    times["serve"] = time.time() - t0 - times["vae"] - times["ddpm"]
    print(summary(vae, ddpm, served, verdict, times, args.storage_path))


if __name__ == "__main__":
    cli.run_cli(main)
