"""`make demo`: train a small VAE and a small DDPM end to end on local Ray, then serve them with
Ray Serve on 127.0.0.1 and save a DDPM sample fetched over HTTP.

Sized for a 2-core laptop without a GPU (under 20 minutes); a GPU or more workers only make it
faster. Running it again reuses the finished runs under --storage-path (delete it to retrain).
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from hw4.atomic_files import write_bytes_atomic
from hw4.errors import HW4Error
from jobs import common, train_ddpm, train_vae

VAE_ARGS = ["--name", "demo-vae", "--epochs", "5", "--classifier-epochs", "2"]
# the class-conditional U-Net of the homework, labels dropped 10% of the time; samples and the
# served grid use DDIM-50 with eta = 1 (it beat eta = 0 on this model size) and guidance w = 1
DDPM_ARGS = ["--name", "demo-ddpm", "--epochs", "3", "--train-subset", "50000", "--base-channels", "16",
             "--channel-mults", "1", "2", "4", "--attention-resolutions", "4", "--dropout", "0",
             "--lr", "1e-3", "--warmup-steps", "100", "--ema-decay", "0.995",
             "--sample-every", "1", "--conditional", "--p-uncond", "0.1", "--guidance", "1",
             "--sample-eta", "1", "--num-samples", "80"]


def serve_and_sample(storage_path: str, port: int) -> Path:
    """Start the Serve app on the registry's checkpoints, fetch a DDIM-50 grid over HTTP, stop."""
    from ray import serve

    from serve.app import build_app

    common.init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"storage_path": storage_path}), name="hw4", route_prefix="/")
        r = requests.post(f"http://127.0.0.1:{port}/ddpm/sample", timeout=300,
                          json={"n": 16, "sampler": "ddim", "steps": 50, "seed": 0})
        if r.status_code != 200:
            raise HW4Error(f"the Serve app answered {r.status_code}: {r.text[:300]}")
        out = Path(storage_path) / "serve_sample.png"
        write_bytes_atomic(out, r.content)
        return out
    finally:
        serve.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = common.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-path", default="results")
    parser.add_argument("--num-workers", default="1")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port (loopback)")
    args = parser.parse_args(argv)
    shared = ["--storage-path", args.storage_path, "--num-workers", args.num_workers]
    t0 = time.time()
    vae = train_vae.main(VAE_ARGS + shared)
    t_vae = time.time() - t0
    ddpm = train_ddpm.main(DDPM_ARGS + shared)
    print(f"\nVAE  ({t_vae:.0f}s): {vae['checkpoint']}")
    print(f"DDPM ({time.time() - t0 - t_vae:.0f}s): {ddpm['checkpoint']}")
    print("images: reconstructions.png, traversal.png, samples.png beside each checkpoint")
    print(f"served sample: {serve_and_sample(args.storage_path, args.port)}")
    print(f"demo finished in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    common.run_cli(main)
