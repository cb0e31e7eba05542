"""Serve's DDPM endpoint under loopback load: throughput and p50/p99 latency at 1, 4 and 16
concurrent clients, with and without batching, against a direct in-process call of the
same sampler (same checkpoint, request size and torch threads as the replica); and one streamed
DDPM-T request: the time to its first x-hat-0 preview, and, once its client has left, how soon
the next request is answered.

    python bench/serve_latency.py                        # the registry's DDPM under ./results
    python bench/serve_latency.py --tiny                 # a tiny random model (seconds; for tests)

Writes bench/measurements/serve_latency.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import requests
import torch

from hw4.samplers import SampleRequest


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def load(url: str, body: dict, clients: int, per_client: int) -> dict:
    """``clients`` threads, each sending ``per_client`` requests back to back over one kept-alive
    connection (as a browser or an SDK client does)."""
    def client(i: int) -> list[float]:
        out = []
        session = requests.Session()
        for k in range(per_client):
            t0 = time.perf_counter()
            r = session.post(url, json={**body, "seed": i * 1000 + k}, timeout=600)
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "images_per_s": len(lat) * body["n"] / wall,
            "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


def request_path(ddpm, url: str, body: dict, reps: int) -> dict:
    """p50 ms of one request four ways, interleaved so that all see the same machine: the direct
    in-process call, a Serve handle call to the model deployment (one hop), the HTTP route
    (proxy, the Api ingress, then that hop), and a static file through the proxy and the Api
    (the HTTP path's own floor)."""
    from ray import serve

    handle = serve.get_deployment_handle("DDPMModel", "bench")
    session = requests.Session()
    root = url.rsplit("/ddpm/", 1)[0]
    req = SampleRequest(body["n"], body["sampler"], body["steps"], body["eta"], guidance=1.0)
    ways = {"direct": lambda k: ddpm.sample(body["n"], steps=body["steps"], method=body["sampler"],
                                           seed=k),
            "handle": lambda k: handle.sample.remote(replace(req, seed=k)).result(),
            "http": lambda k: session.post(url, json={**body, "seed": k}).raise_for_status(),
            "static": lambda k: session.get(root + "/static/common.js").raise_for_status()}
    times: dict[str, list[float]] = {w: [] for w in ways}
    for k in range(reps + 1):  # k = 0: warm-up
        for way, call in ways.items():
            t0 = time.perf_counter()
            call(k)
            if k > 0:
                times[way].append(time.perf_counter() - t0)
    return {way: 1000 * statistics.median(ts) for way, ts in times.items()}


def first_preview(url: str, body: dict, next_body: dict) -> dict:
    """One streamed request, read until its first x-hat-0 preview, then abandoned (the client
    leaves); then one ``next_body`` request: how soon the replica is free again."""
    t0 = time.perf_counter()
    with requests.post(url + "/stream", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and "preview_png_base64" in line:
                first, step = time.perf_counter() - t0, json.loads(line[6:])
                break
    t1 = time.perf_counter()
    requests.post(url, json=next_body, timeout=600).raise_for_status()
    return {"body": body, "first_preview_s": first, "first_preview_step": step["step"],
            "total": step["total"], "next_request_s": time.perf_counter() - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage-path", default="results")
    parser.add_argument("--checkpoint", default=None, help="a DDPM checkpoint (default: registry)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per request")
    parser.add_argument("--port", type=int, default=8314)
    parser.add_argument("--tiny", action="store_true", help="tiny random model, 2 requests")
    parser.add_argument("--out", default="bench/measurements/serve_latency.json")
    args = parser.parse_args()

    import ray
    from ray import serve

    from hw4.trained import load_ddpm, resolve_checkpoint
    from serve.app import build_app

    storage = args.storage_path
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import make_storage

        storage = str(make_storage(Path(tempfile.mkdtemp(prefix="hw4-bench-"))))
        args.requests, args.steps, args.clients = 2, 3, [1, 4]
    body = {"n": args.n, "sampler": "ddim", "steps": args.steps, "eta": 0.0}
    url = f"http://127.0.0.1:{args.port}/ddpm/sample"
    # Serve's tuning flags (RAY_SERVE_*) are read from the environment when Ray starts: recorded
    results: dict = {"body": body, "requests_per_client": args.requests, "serve": {},
                     "serve_env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}}

    # the direct call: same checkpoint, one torch thread like the replica (num_cpus=1)
    torch.set_num_threads(1)
    ddpm = load_ddpm(resolve_checkpoint(storage, "ddpm", args.checkpoint))

    ray.init(address="local", include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for batching in (True, False):
            serve.run(build_app({"storage_path": storage, "batching": str(batching).lower(),
                                 "ddpm_checkpoint": str(ddpm.path)}),
                      name="bench", route_prefix="/")
            load(url, body, 1, 3)  # warm-up
            if batching:  # the default app: where one request's time goes
                results["path_ms"] = request_path(ddpm, url, body, reps=max(args.requests, 5) * 3)
            results["serve"]["batched" if batching else "unbatched"] = [
                load(url, body, c, args.requests) for c in args.clients]
        stream_body = {"n": 16 if not args.tiny else 2, "sampler": "ddpm", "seed": 0}
        results["stream"] = first_preview(url, stream_body, {**body, "n": 1})
    finally:
        serve.shutdown()
        ray.shutdown()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    path = results["path_ms"]
    print(f"one request (n={args.n}, DDIM-{args.steps}), p50 ms, interleaved: direct in-process "
          f"{path['direct']:.1f}, Serve handle {path['handle']:.1f}, HTTP {path['http']:.1f} "
          f"({path['http'] / path['direct']:.2f}x direct); a static file over HTTP "
          f"{path['static']:.1f}\n")
    st = results["stream"]
    print(f"streamed DDPM-{st['total']} of {st['body']['n']} images: first preview (step "
          f"{st['first_preview_step']}) after {st['first_preview_s']:.2f} s; the client then "
          f"left, and a 1-image request answered {st['next_request_s']:.2f} s later\n")
    one = {mode: next(r for r in rows if r["clients"] == 1) for mode, rows in results["serve"].items()}
    top = {mode: max(rows, key=lambda r: r["clients"]) for mode, rows in results["serve"].items()}
    print(f"HTTP p50 of 1 client's run over the direct call's: batched "
          f"{one['batched']['p50_ms'] / path['direct']:.2f}x, unbatched "
          f"{one['unbatched']['p50_ms'] / path['direct']:.2f}x; throughput at {top['batched']['clients']} "
          f"clients, batched over unbatched: "
          f"{top['batched']['images_per_s'] / top['unbatched']['images_per_s']:.2f}x\n")
    print("| mode | clients | images/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for mode, rows in results["serve"].items():
        for r in rows:
            print(f"| {mode} | {r['clients']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} "
                  f"| {r['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
