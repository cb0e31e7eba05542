"""The Serve app for real: a local Ray in this process, Serve on loopback, tiny checkpoints.

Two apps run side by side (conftest's ``serve_apps``, shared with the browser tests): ``/`` (no
token) and ``/secured`` (token from an environment variable, short queues)."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import SERVE_TOKEN, SERVE_TOKEN_ENV, SERVE_URL, needs_data, pinned, poll_until

pytestmark = [pytest.mark.ray]

URL, TOKEN_ENV, TOKEN = SERVE_URL, SERVE_TOKEN_ENV, SERVE_TOKEN


@pytest.fixture(scope="module")
def app(serve_apps):
    return serve_apps


def post(path, body, **kw):
    return requests.post(URL + path, json=body, timeout=120, **kw)


def png(content: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(content))
    assert im.format == "PNG"
    return im


def pixels(value=0.5):
    return [[value] * 28 for _ in range(28)]


def test_every_endpoint_returns_png_or_json(app):
    r = post("/ddpm/sample", {"n": 4, "steps": 5})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert png(r.content).size == (4 * 30 + 2, 32)
    j = post("/ddpm/sample", {"n": 2, "steps": 5, "format": "json"}).json()
    assert j["shape"] == [2, 1, 28, 28] and len(j["images_png_base64"]) == 2
    png(base64.b64decode(j["grid_png_base64"]))
    png(post("/vae/sample", {"n": 8}).content)
    png(post("/vae/reconstruct", {"image": {"pixels": pixels()}}).content)
    rec = post("/vae/reconstruct", {"image": {"pixels": pixels()}, "format": "json"}).json()
    assert len(rec["mu"]) == 4 and len(rec["log_var"]) == 4
    assert png(post("/vae/traverse", {"image": {"pixels": pixels()}, "dims": [0, 1],
                                      "steps": 5}).content).size == (5 * 30 + 2, 2 * 30 + 2)
    png(post("/vae/decode", {"z": [0.0, 1.0, -1.0, 0.5]}).content)
    upload = base64.b64encode(post("/vae/decode", {"z": [0, 0, 0, 0]}).content).decode()
    c = post("/vae/classify", {"images": [{"png_base64": upload}, {"pixels": pixels(0.2)}]}).json()
    assert set(c["models"]) == {"pixel_cnn", "latent_classifier", "reconstruct_then_classify"}
    assert all(len(m["prediction"]) == 2 for m in c["models"].values())
    info = requests.get(URL + "/info", timeout=30).json()
    assert info["ddpm"]["loaded"] and info["ddpm"]["config"]["timesteps"] == 20
    assert info["vae"]["run"] == "vae"  # the run its registered copy came from, by name
    assert info["vae"]["checkpoint"] == f"vae-{info['vae']['sha256'][:12]}"
    assert str(app["storage"]) not in json.dumps(info) and "pid" not in info["ddpm"]
    assert [h["epoch"] for h in info["ddpm"]["history"]] == [0, 1, 2, 3]  # the run's metrics.json
    assert requests.get(URL + "/healthz", timeout=30).json()["models"] == {"ddpm": True, "vae": True}
    assert requests.get(URL + "/docs", timeout=30).status_code == 200
    schema = requests.get(URL + "/openapi.json", timeout=30).json()["components"]["schemas"]
    z = schema["DecodeIn"]["properties"]["z"]  # the served VAE's latent size (4), not a bound
    assert (z["minItems"], z["maxItems"]) == (info["vae"]["config"]["latent_dim"],) * 2 == (4, 4)


def test_same_seed_gives_the_same_image(app):
    for body in ({"n": 3, "steps": 5, "seed": 5}, {"n": 3, "steps": 5, "eta": 1.0, "seed": 5},
                 {"n": 2, "sampler": "ddpm", "seed": 5}):
        a, b = post("/ddpm/sample", body).content, post("/ddpm/sample", body).content
        assert a == b
        assert post("/ddpm/sample", {**body, "seed": 6}).content != a
    assert post("/vae/sample", {"n": 4, "seed": 1}).content == post("/vae/sample",
                                                                    {"n": 4, "seed": 1}).content


def test_concurrent_requests_are_batched(app):
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda s: post("/ddpm/sample", {"n": 2, "steps": 10, "seed": s})
                              .status_code, range(16)))
    assert codes == [200] * 16
    sizes = requests.get(URL + "/info", timeout=30).json()["ddpm"]["recent_batch_sizes"]
    assert max(sizes) > 1, sizes


def same_image_up_to_rounding(a: bytes, b: bytes) -> bool:
    """Two PNGs of the same grid, at most one gray level apart in at most 1% of the pixels: a
    batch's convolutions may sum in another order than one request's (within the 1e-4 that
    test_replica_batch_equals_unbatched_with_mixed_labels allows), and a value near a gray
    level's edge can round either way (seen once: one pixel of a w = 2 request)."""
    x, y = (np.asarray(png(c).convert("L"), dtype=np.int16) for c in (a, b))
    diff = np.abs(x - y)
    return x.shape == y.shape and diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_labels_and_guidance_are_batched_per_request(app):
    """Concurrent requests with different labels, guidance and seeds share model calls, and each
    gets the image it gets when sent alone (up to rounding)."""
    bodies = [{"n": 2, "steps": 4, "seed": s, "labels": lab, "guidance": w}
              for s, (lab, w) in enumerate([(3, 1.0), ([0, 9], 1.0), (None, 1.0), (7, 2.0),
                                             ([1, 1], 0.0), (5, 1.0)])]
    alone = [post("/ddpm/sample", b).content for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post("/ddpm/sample", b).content, bodies * 2))
    assert all(same_image_up_to_rounding(t, a) for t, a in zip(together, alone * 2, strict=True))
    assert not same_image_up_to_rounding(alone[0], alone[5])  # the check tells images apart
    assert not same_image_up_to_rounding(post("/ddpm/sample", {**bodies[0], "labels": 4}).content, alone[0])
    info = requests.get(URL + "/info", timeout=30).json()["ddpm"]
    assert info["conditional"] and info["num_classes"] == 10 and max(info["recent_batch_sizes"]) > 1
    assert info["cost_per_row_and_step"] == {"guided": 2, "unguided": 1}
    j = post("/ddpm/sample", {"n": 3, "steps": 4, "labels": [2, 4, 6], "format": "json"}).json()
    assert j["labels"] == [2, 4, 6] and len(j["verdict"]["class"]) == 3


def test_replica_batch_equals_unbatched_with_mixed_labels(app):
    """The replica's grouping itself: one call for mixed labels and weights (and a DDPM request
    whose ignored steps/eta differ) equals each request run alone."""
    import asyncio

    import torch

    from hw4.samplers import SampleRequest
    from serve.deployments import DDPMModel

    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(app["storage"])))
    reqs = [(SampleRequest(2, "ddim", 4, 0.5, 1, (3, 10), 1.5), None),
            (SampleRequest(1, "ddim", 4, 0.5, 2, None, 1.5), None),
            (SampleRequest(1, "ddim", 4, 0.5, 3, (8,), 1.5), None)]
    trained = replica.require()
    sample, calls = trained.sample, []
    trained.sample = lambda n, **kw: calls.append(n) or sample(n, **kw)
    batched = asyncio.run(replica._run(reqs))
    assert calls == [4]  # one model call for the three requests' four images
    for req, got in zip(reqs, batched, strict=True):
        # equal up to float rounding (a batch's convolutions may sum in another order)
        torch.testing.assert_close(got, asyncio.run(replica._run([req]))[0], rtol=0, atol=1e-4)
    ddpm = SampleRequest(1, "ddpm", guidance=1.0)
    assert replace(ddpm, steps=5).batch_key() == replace(ddpm, steps=50, eta=1.0).batch_key()
    assert SampleRequest(1, "dpm++2m", 10).batch_key() == SampleRequest(1, "dpm++2m", 10, eta=1).batch_key()


def test_overload_gets_quick_503s_while_health_answers(app):
    """More requests than a replica takes (64 ongoing + 4 queued): the overflow is refused at
    once, every accepted request is answered, and /healthz answers within a second throughout."""
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def one(seed):  # one image each: what is refused depends on requests in flight, not size
        t0 = time.perf_counter()
        r = requests.post(URL + "/secured/ddpm/sample", json={"n": 1, "sampler": "ddpm", "seed": seed},
                          headers=auth, timeout=300)
        return r.status_code, time.perf_counter() - t0, r.content[:4]

    with ThreadPoolExecutor(120) as pool:
        futures = [pool.submit(one, s) for s in range(120)]
        # probed once half the burst is answered (the overflow's refusals come at once): a probe
        # sent earlier waited up to 2.2 s behind this process's own 120 threads still starting
        # and sending (a lone request is answered at once: no batching timer to wait for)
        for done, _ in enumerate(as_completed(futures, timeout=300), start=1):
            if done == len(futures) // 2:
                break
        health = []
        for _ in range(6):
            t0 = time.perf_counter()
            r = requests.get(URL + "/secured/healthz", headers=auth, timeout=10)
            health.append((r.status_code, time.perf_counter() - t0))
            time.sleep(0.25)
        results = [f.result() for f in futures]
    codes = [c for c, _, _ in results]
    # how many get in depends on arrival order against finishing batches; some must, some not
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 16, codes
    assert all(head == b"\x89PNG" for c, _, head in results if c == 200)
    # refused without waiting for a slot: every refusal came back before the last admitted
    # request, which waited for the model calls ahead of it
    assert max(t for c, t, _ in results if c == 503) < max(t for c, t, _ in results if c == 200)
    assert all(code == 200 and dt < 1.0 for code, dt in health), health


@pytest.mark.parametrize("path, body, status", [
    ("/ddpm/sample", {"n": 0}, 422),
    ("/ddpm/sample", {"n": 65}, 422),
    ("/ddpm/sample", {"steps": 21}, 400),  # the tiny model has T = 20
    ("/ddpm/sample", {"eta": 1.5}, 422),
    ("/ddpm/sample", {"sampler": "euler"}, 422),
    ("/ddpm/sample", {"format": "gif"}, 422),
    ("/ddpm/sample", {"surprise": 1}, 422),
    ("/ddpm/sample", {"labels": 10}, 422),
    ("/ddpm/sample", {"n": 3, "labels": [1, 2]}, 422),
    ("/ddpm/sample", {"labels": 1, "guidance": -1}, 422),
    ("/ddpm/sample", {"labels": 1, "guidance": 11}, 422),
    ("/vae/decode", {"z": [0, 0]}, 400),
    ("/vae/decode", {"z": [0, 0, 0, 99]}, 422),
    ("/vae/reconstruct", {"image": {}}, 422),
    ("/vae/reconstruct", {"image": {"pixels": [[0.5] * 27] * 28}}, 422),  # the schema's bound
    ("/vae/reconstruct", {"image": {"pixels": [[2.0] * 28] * 28}}, 422),  # the schema's [0, 1]
    ("/vae/reconstruct", {"image": {"png_base64": "not base64!"}}, 400),
    ("/vae/reconstruct", {"image": {"png_base64": base64.b64encode(b"GIF89a").decode()}}, 400),
    ("/vae/traverse", {"image": {"pixels": [[0.5] * 28] * 28}, "dims": [9]}, 400),
    ("/vae/traverse", {"image": {"pixels": [[0.5] * 28] * 28}, "low": 1, "high": 0}, 422),
    ("/adversarial", {"epsilons": [0.9]}, 422),
    ("/adversarial", {"images": [{"pixels": [[0.5] * 28] * 28}]}, 400),  # no labels
    ("/adversarial", {"models": ["svm"]}, 422),
    ("/adversarial", {"start": 9990, "n": 20}, 422),
])
def test_bad_input_gets_a_4xx_with_a_message(app, path, body, status):
    r = post(path, body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_oversized_body_and_bad_json_are_4xx(app):
    r = requests.post(URL + "/vae/classify", data=b"x" * (5 * 1024 * 1024), timeout=60,
                      headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = requests.post(URL + "/ddpm/sample", data=b"{", headers={"content-type": "application/json"},
                      timeout=30)
    assert r.status_code == 422


def test_an_oversized_chunked_body_is_413_on_a_real_route(app):
    """No Content-Length: the guard counts while FastAPI reads the body (it turned the guard's
    error into 400 'error parsing the body' before the guard's error was an HTTPException)."""
    def chunks():
        for _ in range(6):
            yield b" " * (1024 * 1024)  # 6 MB of JSON whitespace, sent chunked

    r = requests.post(URL + "/ddpm/sample", data=chunks(), timeout=60,
                      headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "over" in r.json()["detail"]


def test_token_is_required_on_every_route_when_set(app):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in (("get", "/healthz"), ("get", "/info"), ("get", "/docs"),
                         ("get", "/openapi.json"), ("post", "/ddpm/sample")):
        assert requests.request(method, URL + "/secured" + path, timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.request(method, URL + "/secured" + path, headers=wrong,
                                timeout=30).status_code == 401
    assert requests.get(URL + "/secured/healthz", headers=auth, timeout=30).status_code == 200
    r = requests.post(URL + "/secured/ddpm/sample", json={"n": 1, "steps": 3}, headers=auth,
                      timeout=60)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


@needs_data
def test_test_images_and_adversarial_evaluation(app):
    r = requests.get(URL + "/vae/test-image/7", timeout=30)
    assert r.status_code == 200 and png(r.content).size == (28, 28)
    label = int(r.headers["x-hw4-label"])
    assert 0 <= label <= 9
    out = post("/adversarial", {"attack": "pgd", "epsilons": [0.0, 0.2], "n": 16, "pgd_steps": 3,
                                "examples": 4}).json()
    assert set(out["accuracy"]) == {"pixel_cnn", "latent_classifier", "reconstruct_then_classify"}
    for acc in out["accuracy"].values():
        assert set(acc) == {"0.0", "0.2"} and all(0 <= a <= 1 for a in acc.values())
    assert out["accuracy"]["pixel_cnn"]["0.2"] <= out["accuracy"]["pixel_cnn"]["0.0"]
    assert set(out["reconstruction_error"]) == {"0.0", "0.2"}
    png(base64.b64decode(out["examples"]["pixel_cnn"]["0.2"]))
    assert len(out["predictions"]["latent_classifier"]["0.2"]["class"]) == 4
    up = post("/adversarial", {"images": [{"pixels": pixels()}], "labels": [3],
                               "models": ["pixel_cnn"], "epsilons": [0.1], "targeted": True})
    assert up.status_code == 200 and set(up.json()["accuracy"]) == {"pixel_cnn"}
    bare = post("/adversarial", {"n": 4, "epsilons": [0.1], "examples": 0})
    assert bare.status_code == 200 and bare.json()["examples"] == {}


def test_an_autoattack_evaluation_of_32_images_over_http(app):
    """The standard ensemble within the budget: each image's first success, and the accuracy
    left after each member (never rising, ending at the reported accuracy)."""
    body = {"attack": "autoattack", "n": 32, "epsilons": [0.1], "models": ["pixel_cnn"],
            "examples": 0}
    out = post("/adversarial", body).json()
    left = out["per_attack"]["pixel_cnn"]["0.1"]
    assert list(left) == ["apgd-ce", "apgd-t", "square"]
    assert left["apgd-ce"] >= left["apgd-t"] >= left["square"] == out["accuracy"]["pixel_cnn"]["0.1"]
    pgd = post("/adversarial", {**body, "attack": "pgd"}).json()["accuracy"]["pixel_cnn"]["0.1"]
    assert out["accuracy"]["pixel_cnn"]["0.1"] <= pgd
    too_much = post("/adversarial", {**body, "epsilons": [0.1, 0.2]})
    assert too_much.status_code == 422 and "limit is" in too_much.text
    names = [a["name"] for a in requests.get(URL + "/info", timeout=30).json()["attacks"]]
    assert names == ["fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack"]


@needs_data  # without the test images, /vae/test-image answers 503 (correctly, but a 5xx)
def test_schemathesis_finds_no_server_errors(app, tmp_path):
    """Property-based requests from the OpenAPI schema: 50 per operation, over 500 in all, and
    not one 5xx. /adversarial is fuzzed too now that its cost is bounded. Two operations at a
    time: one at a time left a core idle while each request crossed Serve's proxy."""
    st = os.path.join(os.path.dirname(sys.executable), "st")
    out = subprocess.run(
        [st, "run", URL + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "50",
         "--request-timeout", "120", "--seed", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache goes to tmp_path
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", out.stdout))
    assert cases >= 500, out.stdout[-3000:]


def ddpm_replica_actor(app_name: str = "open") -> tuple[str, str]:
    """(actor name, replica id) of the app's running DDPM replica, from Serve's controller."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    running = [r for r in details.applications[app_name].deployments["DDPMModel"].replicas
               if r.state == "RUNNING"]
    return running[0].actor_name, running[0].replica_id


def test_a_killed_model_replica_is_503_on_healthz_at_once_and_comes_back(app):
    """Health from Serve's own state: within 5 s of ``ray.kill`` on the DDPM replica /healthz
    says 503 (it said 200 "busy" for 22 s before), and 200 again once Serve has replaced it."""
    import ray

    actor_name, _ = ddpm_replica_actor()
    old = requests.get(URL + "/info", timeout=30).json()["ddpm"]["replica"]
    with ThreadPoolExecutor(4) as pool:  # requests in flight while the replica dies
        inflight = [pool.submit(post, "/ddpm/sample", {"n": 8, "steps": 20, "seed": s})
                    for s in range(8)]
        ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
        killed = time.monotonic()
        # (a Response is falsy when its status is an error: wrap it)
        down = poll_until(lambda: [r for r in [requests.get(URL + "/healthz", timeout=10)]
                                   if r.status_code == 503], timeout=5.0)
        assert down, "/healthz did not say 503 within 5 s of the kill"
        assert time.monotonic() - killed < 5.0
        down = down[0]
        assert down.headers["retry-after"] and down.json()["models"]["ddpm"].startswith("down")
        for f in inflight:  # each fails or succeeds, but none hangs
            try:
                f.result(timeout=150)
            except requests.RequestException:
                pass
    up = poll_until(lambda: requests.get(URL + "/healthz", timeout=10).status_code == 200, 120, every=1)
    assert up, "/healthz did not say 200 again within 120 s"
    assert post("/ddpm/sample", {"n": 1, "steps": 3}).status_code == 200
    info = requests.get(URL + "/info", timeout=30).json()["ddpm"]
    assert info["loaded"] and info["replica"] not in (old, "local")


def test_requests_cannot_switch_off_the_timeout_or_cancellation(app):
    """Ray's proxy honours these headers from the client; the app refuses such a request before
    any work starts, so one client cannot hold the model for the next one (78.7 s wait before)."""
    before = requests.get(URL + "/info", timeout=30).json()["ddpm"]["recent_batch_sizes"]
    for header in ({"x-request-disconnect-disabled": "?1"}, {"x-request-timeout-seconds": "0"}):
        r = post("/ddpm/sample", {"n": 16, "sampler": "ddpm"}, headers=header)
        assert r.status_code == 400 and next(iter(header)) in r.json()["detail"]
    after = requests.get(URL + "/info", timeout=30).json()["ddpm"]["recent_batch_sizes"]
    assert after == before  # no model call was made for them


def test_a_get_with_a_body_is_refused_over_http(app):
    def chunks():
        for _ in range(64):
            yield b"x" * 65536

    r = requests.get(URL + "/healthz", data=chunks(), timeout=30)  # chunked, 4 MB
    assert r.status_code == 400 and "take no body" in r.json()["detail"]
    assert requests.get(URL + "/healthz", data=b"abc", timeout=30).status_code == 400


def test_reconfigure_in_place_keeps_the_model_when_the_new_checkpoint_fails(app, tmp_path):
    """What ``serve deploy`` with a changed user_config does to a running replica."""
    from serve.deployments import DDPMModel

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(app["storage"])))
    good = replica.path
    replica.reconfigure(pinned(str(app["storage"]), checkpoint=str(bad)))
    assert replica.path == good and replica.model is not None
    assert "not a readable checkpoint" in replica.load_error
    empty = DDPMModel.func_or_class()
    empty.reconfigure(pinned(str(tmp_path)))  # nothing registered: starts, answers 503
    assert empty.model is None and "no ddpm checkpoint was registered" in empty.load_error


def test_an_unconditional_served_model_refuses_labels(tmp_path):
    """Older, unconditional checkpoints still serve; labels sent to them are a 400, not a 500."""
    import asyncio

    from hw4.errors import HW4Error
    from hw4.samplers import SampleRequest
    from serve.deployments import DDPMModel

    from .conftest import write_ddpm

    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(tmp_path, checkpoint=str(write_ddpm(tmp_path / "u.pt", num_classes=None)),
                               batching=False))
    req = SampleRequest(1, "ddim", 3, guidance=1.0)
    assert asyncio.run(replica.sample(req)).shape == (1, 1, 28, 28)
    with pytest.raises(HW4Error, match="unconditional"):
        asyncio.run(replica.sample(replace(req, labels=(3,))))
    assert asyncio.run(replica.info())["conditional"] is False


def stream(body):
    """The events of /ddpm/sample/stream as (name, data) pairs."""
    import json

    r = requests.post(URL + "/ddpm/sample/stream", json=body, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events, name = [], None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_a_streamed_chain_reports_every_step_and_ends_in_the_same_samples(app):
    body = {"n": 3, "sampler": "ddim", "steps": 8, "seed": 4, "labels": [1, 2, 3], "guidance": 1.0}
    events = stream({**body, "preview_every": 3})
    names = [n for n, _ in events]
    assert names == ["progress"] * 7 + ["done"], names
    progress = [d for n, d in events if n == "progress"]
    assert [d["step"] for d in progress] == list(range(1, 8)) and {d["total"] for d in progress} == {8}
    assert [d["step"] for d in progress if "preview_png_base64" in d] == [1, 3, 6]
    png(base64.b64decode(progress[2]["preview_png_base64"]))
    done = events[-1][1]
    plain = post("/ddpm/sample", {**body, "format": "json"}).json()
    assert same_image_up_to_rounding(base64.b64decode(done["grid_png_base64"]),
                                     base64.b64decode(plain["grid_png_base64"]))
    assert done["labels"] == [1, 2, 3] and len(done["verdict"]["class"]) == 3
    other = stream({**body, "seed": 5})[-1][1]  # the comparison tells two seeds apart
    assert not same_image_up_to_rounding(base64.b64decode(other["grid_png_base64"]),
                                         base64.b64decode(done["grid_png_base64"]))
    r = post("/ddpm/sample/stream", {**body, "steps": 500})  # refused before any event
    assert r.status_code == 400 and "at most" in r.json()["detail"]
