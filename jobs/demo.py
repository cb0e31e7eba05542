"""`make demo`: train a small VAE and a small DDPM end to end on local Ray, then list the results.

Sized for a 2-core laptop without a GPU (under 20 minutes); a GPU or more workers only make it
faster. Running it again reuses the finished runs under --storage-path (delete it to retrain).
"""

from __future__ import annotations

import time

from jobs import common, train_ddpm, train_vae

VAE_ARGS = ["--name", "demo-vae", "--epochs", "5", "--classifier-epochs", "2"]
DDPM_ARGS = ["--name", "demo-ddpm", "--epochs", "3", "--train-subset", "50000", "--base-channels", "16",
             "--channel-mults", "1", "2", "4", "--attention-resolutions", "4", "--dropout", "0",
             "--lr", "1e-3", "--warmup-steps", "100", "--ema-decay", "0.995",
             "--sample-every", "1"]


def main(argv: list[str] | None = None) -> None:
    parser = common.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-path", default="results")
    parser.add_argument("--num-workers", default="1")
    args = parser.parse_args(argv)
    shared = ["--storage-path", args.storage_path, "--num-workers", args.num_workers]
    t0 = time.time()
    vae = train_vae.main(VAE_ARGS + shared)
    t_vae = time.time() - t0
    ddpm = train_ddpm.main(DDPM_ARGS + shared)
    print(f"\nVAE  ({t_vae:.0f}s): {vae['checkpoint']}")
    print(f"DDPM ({time.time() - t0 - t_vae:.0f}s): {ddpm['checkpoint']}")
    print("images: reconstructions.png, traversal.png, samples.png beside each checkpoint")
    print(f"demo finished in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    common.run_cli(main)
