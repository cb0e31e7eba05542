"""Soak the Serve app: minutes of mixed traffic on the demo's checkpoints, with the DDPM model
replica killed mid-way (as a crash would). Every answer is checked: a 200 must equal the first
answer to the same seeded request (images up to batching's rounding: at most one grey level, in
at most 1% of the pixels), a 503 is the one failure allowed (the model is down for a moment),
and any other 5xx, timeout or dropped connection is counted against the app.

    python -m bench.soak                         # 10 minutes, the registry's checkpoints in ./results
    python -m bench.soak --minutes 1 --clients 2 # a short run
    python -m bench.soak --tiny                  # tiny random models, 30 s (for tests)
    python -m bench.soak --tiny --minutes 10     # tiny random models, the full ten minutes

Writes bench/measurements/soak.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

SEEDS = range(4)  # each request is sent with these seeds over and over: the first answer is the reference


def requests_mix(seed: int) -> list[tuple[str, str, dict | None]]:
    """(name, path, JSON body or None for GET): what a page and a script send."""
    return [
        ("ddpm guided", "/ddpm/sample", {"n": 2, "sampler": "dpm++2m", "steps": 10, "seed": seed,
                                         "labels": [seed, seed + 5], "guidance": 1.0,
                                         "format": "json"}),
        ("ddpm unlabeled", "/ddpm/sample", {"n": 4, "sampler": "ddim", "steps": 10, "seed": seed}),
        ("vae sample", "/vae/sample", {"n": 8, "seed": seed}),
        ("vae reconstruct", "/vae/reconstruct", {"image": {"test_index": seed}, "format": "json"}),
        ("vae traverse", "/vae/traverse", {"image": {"test_index": seed}, "dims": [0, 1],
                                           "steps": 5}),
        ("adversarial", "/adversarial", {"n": 4, "start": 4 * seed, "epsilons": [0.0, 0.1],
                                         "models": ["pixel_cnn"], "seed": seed, "examples": 0}),
        ("healthz", "/healthz", None),
        ("info", "/info", None),
    ]


def pixels(png_base64_or_bytes: str | bytes) -> np.ndarray:
    raw = png_base64_or_bytes if isinstance(png_base64_or_bytes, bytes) \
        else base64.b64decode(png_base64_or_bytes)
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.int16)


def fingerprint(name: str, r: requests.Response) -> object:
    """What must not change between answers to the same request."""
    if name == "healthz":  # its body is the state ("busy" while a replica starts): any 200 is right
        return r.json()["status"]
    if name == "info":
        d = r.json()
        return [d[m].get("sha256") for m in ("ddpm", "vae")]  # one checkpoint, whichever replica
    if name == "adversarial":
        d = r.json()
        return json.dumps({k: d[k] for k in ("accuracy", "predictions")}, sort_keys=True)
    if r.headers.get("content-type", "").startswith("image/png"):
        return pixels(r.content)
    return pixels(r.json()["grid_png_base64"])


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and (np.abs(a - b) > 1).mean() == 0 and (a != b).mean() <= 0.01
    return a == b


def find_replica(deployment: str) -> tuple[str, str]:
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in actor["name"]:
            return actor["name"], actor["namespace"]
    raise RuntimeError(f"no replica of {deployment} found")


def soak(url: str, minutes: float, clients: int, kill_at: float, kill: str) -> dict:
    stop_at = time.monotonic() + 60 * minutes
    refs: dict = {}
    lock = threading.Lock()
    counts: dict[str, Counter] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    events: dict = {}
    work = itertools.cycle([(s, item) for s in SEEDS for item in requests_mix(s)])

    def client(i: int) -> None:
        http = requests.Session()
        while time.monotonic() < stop_at:
            with lock:
                seed, (name, path, body) = next(work)
            t0 = time.perf_counter()
            try:
                r = http.post(url + path, json=body, timeout=120) if body is not None \
                    else http.get(url + path, timeout=120)
            except requests.RequestException as err:
                with lock:
                    counts[name][f"error {type(err).__name__}"] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                latency[name].append(dt)
                code = r.status_code
                if code == 200:
                    key = (name, seed)
                    fp = fingerprint(name, r)
                    if key not in refs:
                        refs[key] = fp
                    counts[name]["200" if same(refs[key], fp) else "200 wrong"] += 1
                    if name.startswith("ddpm") and "killed" in events and "back" not in events:
                        events["back"] = time.monotonic()
                elif code == 503:
                    counts[name]["503"] += 1
                else:
                    counts[name][str(code)] += 1

    def health_watcher() -> None:
        """/healthz every 0.2 s: when, after the kill, it first says 503, and 200 again."""
        http = requests.Session()
        while time.monotonic() < stop_at:
            try:
                code = http.get(url + "/healthz", timeout=10).status_code
            except requests.RequestException:
                code = None
            with lock:
                if "killed" in events:
                    if code == 503:
                        events.setdefault("healthz_503_first", time.monotonic())
                    elif code == 200 and "healthz_503_first" in events:
                        events.setdefault("healthz_200_again", time.monotonic())
            time.sleep(0.2)

    def killer() -> None:
        import ray

        time.sleep(60 * minutes * kill_at)
        replica, namespace = find_replica(kill)
        ray.kill(ray.get_actor(replica, namespace=namespace), no_restart=True)
        with lock:
            events["killed"] = time.monotonic()
            events["replica"] = replica

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients + 2) as pool:
        futures = [pool.submit(client, i) for i in range(clients)] + [pool.submit(killer),
                                                                      pool.submit(health_watcher)]
        for f in futures:
            f.result()
    answered = {name: dict(c) for name, c in counts.items()}
    total = Counter()
    for c in counts.values():
        total.update(c)
    other_5xx = sum(v for k, v in total.items() if k.isdigit() and k.startswith("5") and k != "503")
    return {
        "minutes": minutes, "clients": clients, "killed": events.get("replica"),
        "killed_at_s": events["killed"] - t0 if "killed" in events else None,
        "ddpm_back_after_s": events["back"] - events["killed"] if "back" in events else None,
        # /healthz reads Serve's state: 503 within seconds of the kill, not 200 "busy"
        "healthz_503_after_s": (events["healthz_503_first"] - events["killed"]
                                if "healthz_503_first" in events else None),
        "healthz_200_again_after_s": (events["healthz_200_again"] - events["killed"]
                                      if "healthz_200_again" in events else None),
        "by_route": answered, "requests": sum(total.values()), "ok": total["200"],
        "wrong": total["200 wrong"], "503": total["503"], "other_5xx": other_5xx,
        "errors": sum(v for k, v in total.items() if k.startswith("error")),
        "p50_ms": {name: 1000 * float(np.median(v)) for name, v in latency.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage-path", default="results")
    p.add_argument("--minutes", type=float, default=None, help="default 10 (--tiny: 0.5)")
    p.add_argument("--clients", type=int, default=None, help="default 4 (--tiny: 2)")
    p.add_argument("--kill-at", type=float, default=0.5, help="when to kill, as a share of the run")
    p.add_argument("--kill", default="DDPMModel", help="the deployment whose replica is killed")
    p.add_argument("--port", type=int, default=8317)
    p.add_argument("--out", default="bench/measurements/soak.json")
    p.add_argument("--tiny", action="store_true", help="tiny random models, 30 s (for tests)")
    args = p.parse_args(argv)
    if args.tiny:
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import make_storage

        args.storage_path = str(make_storage(Path(tempfile.mkdtemp(prefix="hw4-soak-"))))
    args.minutes = args.minutes if args.minutes is not None else 0.5 if args.tiny else 10.0
    args.clients = args.clients if args.clients is not None else 2 if args.tiny else 4

    import os

    import ray
    from ray import serve

    from jobs.driver import PROXY_READY_ENV, PROXY_READY_S
    from serve.app import build_app

    os.environ.setdefault(PROXY_READY_ENV, PROXY_READY_S)
    ray.init(address="local", include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port, "request_timeout_s": 300})
        serve.run(build_app({"storage_path": args.storage_path}), name="soak", route_prefix="/")
        result = soak(f"http://127.0.0.1:{args.port}", args.minutes, args.clients, args.kill_at,
                      args.kill)
    finally:
        serve.shutdown()
        ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    down = result["healthz_503_after_s"]
    print(f"{result['requests']} requests in {args.minutes:g} min from {args.clients} clients; "
          f"killed {result['killed']} at {result['killed_at_s']:.0f} s; /healthz said 503 "
          f"{'never' if down is None else f'{down:.1f} s later'}; DDPM answered again "
          f"{result['ddpm_back_after_s']:.1f} s later\n")
    print("| route | 200 | 200 but wrong | 503 | other | p50 ms |\n|---|---:|---:|---:|---|---:|")
    for name, c in result["by_route"].items():
        other = ", ".join(f"{k}: {v}" for k, v in c.items() if k not in ("200", "200 wrong", "503"))
        print(f"| {name} | {c.get('200', 0)} | {c.get('200 wrong', 0)} | {c.get('503', 0)} | "
              f"{other or '–'} | {result['p50_ms'][name]:.0f} |")
    print(f"\nother 5xx: {result['other_5xx']}, wrong answers: {result['wrong']}, "
          f"dropped connections or timeouts: {result['errors']}")


if __name__ == "__main__":
    main()
