"""The Serve app's hardening without Ray: the ASGI guard (host, token, body size, headers),
token resolution that fails closed, cost budgets, PNG bombs, the health answer and reloads that
keep the previous model. Each of these failed (or did not exist) before the hardening."""

import asyncio
import hashlib
import io
import json
import re
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from hw4 import viz
from hw4.diffusion import DiffusionSchedule
from hw4.errors import HW4Error
from hw4.samplers import SampleRequest
from serve import guard, schemas
from serve.deployments import DDPMModel
from serve.replica import TooCostly
from serve.schemas import MAX_ATTACK_COST, MAX_SAMPLE_COST, AttackIn, ClassifyIn, PixelImage

from .conftest import make_storage, pinned


async def echo_app(scope, receive, send):
    """Reads the whole body and answers with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(path="/info", method="GET", headers=None, chunks=(b"",)):
    """(status, headers, body) of one request through the guard."""
    head = {"host": "127.0.0.1:8000", **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in head.items()]}
    parts = list(chunks)
    sent = []

    async def receive():
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    asyncio.run(guard.Guard(echo_app)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


@pytest.fixture
def guarded(monkeypatch):
    monkeypatch.setattr(guard, "_config", None)
    monkeypatch.setenv("HW4_T_TOKEN", "tok")
    yield
    guard._config = None


def test_an_unconfigured_guard_refuses_everything(guarded):
    assert call()[0] == 503


def test_token_required_on_api_routes_not_on_the_page(guarded):
    guard.configure("HW4_T_TOKEN", required=True)
    assert call()[0] == 401
    assert call(headers={"authorization": "Bearer nope"})[0] == 401
    assert call(headers={"authorization": "Bearer tok"})[0] == 200
    assert call("/")[0] == 200 and call("/static/app.js")[0] == 200
    assert call("/", method="POST")[0] == 401


def test_the_page_loads_every_script_the_server_serves_and_none_is_over_300_lines():
    """index.html's scripts are exactly the ones /static/ serves, in one order, and each exists
    (a missing one would break the page without a server error); no file in serve/ passes 300
    lines (#15)."""
    from serve.routes import STATIC, STATIC_TYPES

    loaded = re.findall(r'<script src="static/([^"]+)"', (STATIC / "index.html").read_text())
    assert loaded == [name for name in STATIC_TYPES if name.endswith(".js")]
    assert all((STATIC / name).is_file() for name in STATIC_TYPES)
    long = {p.name: n for p in STATIC.parent.rglob("*.*") if p.suffix in (".py", ".js", ".html", ".css")
            and (n := len(p.read_text().splitlines())) > 300}
    assert not long, long


def test_token_resolution_fails_closed(monkeypatch):
    monkeypatch.setenv("HW4_T_EMPTY", "  ")
    monkeypatch.delenv("HW4_T_MISSING", raising=False)
    with pytest.raises(HW4Error, match="set but empty"):
        guard.resolve_token("HW4_T_EMPTY", required=False)
    with pytest.raises(HW4Error, match="not set"):
        guard.resolve_token("HW4_T_MISSING", required=True)
    assert guard.resolve_token("HW4_T_MISSING", required=False) is None


def test_foreign_host_names_are_refused(guarded):
    guard.configure("HW4_T_TOKEN")
    ok = {"authorization": "Bearer tok"}
    assert call(headers={**ok, "host": "attacker.example"})[0] == 421  # DNS rebinding
    assert call(headers={**ok, "host": "localhost:8000"})[0] == 200
    assert call(headers={**ok, "host": "[::1]:8000"})[0] == 200
    guard.configure("HW4_T_TOKEN", hosts=("hw4.example",))
    assert call(headers={**ok, "host": "hw4.example"})[0] == 200


def test_body_limit_is_enforced_while_reading_a_chunked_body(guarded):
    guard.configure("HW4_T_MISSING")
    chunk = b"x" * (1024 * 1024)
    status, _, body = call(method="POST", chunks=[chunk] * 5)  # no content-length: chunked
    assert status == 413 and b"over" in body
    assert call(method="POST", chunks=[chunk] * 2)[2] == str(2 * len(chunk)).encode()
    assert call(method="POST", headers={"content-length": str(5 * len(chunk))})[0] == 413


@pytest.mark.parametrize("header", [("x-request-disconnect-disabled", "?1"),
                                    ("x-request-timeout-seconds", "0"),
                                    ("X-Request-Timeout-Seconds", "99999")])
def test_headers_that_switch_off_our_bounds_are_refused_before_the_app(guarded, header):
    """Ray's proxy reads these from the client before our code runs; the request is refused
    before any route starts work under bounds the client chose."""
    guard.configure("HW4_T_MISSING")
    status, _, body = call(method="POST", headers={header[0]: header[1]}, chunks=[b"{}"])
    assert status == 400 and header[0].lower().encode() in body
    assert call(method="POST", chunks=[b"{}"])[0] == 200  # the same request without it


@pytest.mark.parametrize("body", [{"headers": {"content-length": "5"}, "chunks": [b"hello"]},
                                  {"headers": {"transfer-encoding": "chunked"},
                                   "chunks": [b"x" * 1024] * 3}])
def test_a_get_with_a_body_is_refused(guarded, body):
    guard.configure("HW4_T_MISSING")
    status, _, text = call(path="/healthz", method="GET", **body)
    assert status == 400 and b"take no body" in text
    assert call(path="/healthz", method="GET")[0] == 200


def test_every_request_is_cut_at_the_timeout_however_the_app_was_started(guarded, monkeypatch):
    """``serve run serve.app:app`` sets no proxy timeout: the guard bounds every request itself,
    and cancels the route's work (here a task that would sleep for minutes)."""
    import yaml

    from .conftest import ROOT

    shipped = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert shipped["http_options"]["request_timeout_s"] == guard.REQUEST_TIMEOUT_S  # one bound
    guard.configure("HW4_T_MISSING")
    monkeypatch.setattr(guard, "REQUEST_TIMEOUT_S", 0.3)
    cancelled = []

    async def slow_app(scope, receive, send):
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/ddpm/sample", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")]}
    asyncio.run(guard.Guard(slow_app)(scope, receive, send))
    assert sent[0]["status"] == 408 and cancelled == [1]


def test_every_answer_carries_security_headers(guarded):
    assert "content-security-policy" in call()[1]  # the 503 of an unconfigured guard too
    guard.configure("HW4_T_MISSING")
    headers = call("/")[1]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self' covers it
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_a_decompression_bomb_png_is_a_clear_error():
    with pytest.raises(HW4Error, match="too large|at most 1024"):
        viz.image_from_png(png_claiming(20000, 20000))


def test_sample_and_attack_cost_budgets():
    base, sched = SampleRequest(16, "ddpm", 50, guidance=1.0), DiffusionSchedule.named("linear", 1000)
    assert base.cost(sched) == 16_000 <= MAX_SAMPLE_COST  # DDPM: all T steps, whatever is asked
    assert replace(base, labels=(1,) * 16).cost(sched) == 32_000 > MAX_SAMPLE_COST
    assert replace(base, sampler="ddim", n=64, labels=(0,) * 64).cost(sched) == 6_400
    AttackIn(attack="fgsm", n=256, epsilons=[0, .1, .2, .3])
    assert AttackIn(attack="pgd", n=10, pgd_steps=10).cost() == 10 * 4 * 3 * 10 <= MAX_ATTACK_COST
    # AutoAttack, standard: APGD-CE 101 + APGD-T 9 x 101 + Square 5,000 calls an image
    one = AttackIn(attack="autoattack", n=32, epsilons=[0.1], models=["pixel_cnn"])
    assert one.cost() == 32 * (101 + 909 + 5000) <= MAX_ATTACK_COST  # the 32-image run fits
    with pytest.raises(ValidationError, match="limit is"):  # refused before any work
        AttackIn(attack="autoattack", n=32, epsilons=[0.1, 0.2], models=["pixel_cnn"])
    with pytest.raises(ValidationError, match="EOT samples"):  # EOT multiplies the gradient calls
        AttackIn(attack="apgd-t", n=32, epsilons=[0.1], models=["pixel_cnn"], eot=8)
    assert AttackIn(attack="apgd-t", n=32, epsilons=[0.1], models=["pixel_cnn"], eot=2).cost() == \
        32 * 9 * 101 * 2
    with pytest.raises(ValidationError, match="at most 28"):
        PixelImage(pixels=[[0.5] * 10_000] * 28)  # a row's length is capped, not only the row count


def test_a_costly_sample_request_is_refused_before_work(tmp_path):
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(make_storage(tmp_path)), batching=False))  # T = 20
    req = SampleRequest(64, "ddpm", 50, guidance=1.0)
    assert asyncio.run(replica.sample(req)).shape == (64, 1, 28, 28)  # 64 x 20 = 1,280
    replica.model.schedule = type(replica.model.schedule).named("linear", 1000)  # as if T = 1000
    with pytest.raises(TooCostly) as refused:
        asyncio.run(replica.sample(replace(req, labels=(1,) * 64)))
    assert "128,000" in str(refused.value) and f"{MAX_SAMPLE_COST:,}" in str(refused.value)


@pytest.mark.parametrize("damage", ["no checkpoint key", "unreadable registry", "missing file"])
def test_a_damaged_registry_entry_keeps_the_previous_model(tmp_path, damage):
    storage = make_storage(tmp_path)
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(storage)))
    good = replica.path
    record = storage / "registry" / "ddpm.json"
    if damage == "no checkpoint key":
        record.write_text('{"metric": "val_loss", "value": 1.0}')
    elif damage == "unreadable registry":
        record.write_text("{not json")
    else:
        good.rename(good.with_suffix(".gone"))
    replica.reconfigure(pinned(str(storage)))
    assert replica.model is not None and replica.path == good and replica.load_error


class Handle:
    """A model deployment's handle whose ``loaded`` answers ``value`` after ``delay`` seconds."""

    def __init__(self, value, delay=0.0):
        self.value, self.delay = value, delay
        self.app_name, self.deployment_name = "hw4", "M"

    @property
    def loaded(self):
        return self

    def remote(self):
        async def answer():
            await asyncio.sleep(self.delay)
            if isinstance(self.value, Exception):
                raise self.value
            return self.value
        return answer()


def healthz_with(monkeypatch, states: dict, ddpm: Handle, vae: Handle):
    """/healthz of an Api whose Serve controller reports ``states`` ({model: (status, replicas)})."""
    from serve import health
    from serve.routes import Api

    asked = []

    def serve_states(app, deployments):
        asked.append((app, dict(deployments)))
        return states

    monkeypatch.setattr(health, "serve_states", serve_states)
    api = Api.func_or_class.__new__(Api.func_or_class)
    api.ddpm, api.vae = ddpm, vae
    r = asyncio.run(api.healthz())
    assert asked and asked[0][0] == "hw4"
    return r, json.loads(r.body)


UP = ("HEALTHY", {"RUNNING": 1})


def test_healthz_answers_fast_and_busy_only_for_a_running_replica(monkeypatch):
    start = time.perf_counter()
    r, body = healthz_with(monkeypatch, {"ddpm": UP, "vae": UP}, Handle(True, delay=30), Handle(False))
    assert time.perf_counter() - start < 5.0  # the 0.5 s answer bound, not the replica's 30 s
    assert r.status_code == 200 and body["models"] == {"ddpm": "busy", "vae": False}
    r, _ = healthz_with(monkeypatch, {"ddpm": UP, "vae": UP}, Handle(False), Handle(False))
    assert r.status_code == 503  # live replicas, no model loaded anywhere


@pytest.mark.parametrize("state", [("UPDATING", {"STARTING": 1}), ("HEALTHY", {"RECOVERING": 1}),
                                   ("UNHEALTHY", {"RUNNING": 1}), ("DEPLOY_FAILED", {}),
                                   ("UPSCALING", {"PENDING_MIGRATION": 1}), (None, {})])
def test_healthz_is_503_when_a_model_deployment_has_no_running_replica(monkeypatch, state):
    """What Serve's controller records decides "down": a killed or restarting replica made
    ``loaded`` time out, which counted as "busy" and answered 200 before."""
    slow = Handle(True, delay=30)  # what a dead replica looked like: no answer
    r, body = healthz_with(monkeypatch, {"ddpm": state, "vae": UP}, slow, Handle(True))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert body["models"]["ddpm"].startswith("down") and body["models"]["vae"] is True


def test_healthz_is_503_when_the_replica_dies_under_the_call(monkeypatch):
    from ray.serve.exceptions import DeploymentUnavailableError

    r, body = healthz_with(monkeypatch, {"ddpm": UP, "vae": UP},
                           Handle(DeploymentUnavailableError("hw4#DDPMModel")), Handle(True))
    assert r.status_code == 503 and body["models"]["ddpm"].startswith("down")


def test_replicas_of_one_deployment_serve_one_checkpoint_after_the_registry_changes(tmp_path):
    """The app's builder resolves the registry's best once and pins its hash; a replica started
    later (autoscaling, a restart after a crash) loads the same bytes, not what was registered
    meanwhile."""
    from hw4.registry import record_best

    from .conftest import write_ddpm

    storage = make_storage(tmp_path)
    config = pinned(storage)
    first = DDPMModel.func_or_class()
    first.reconfigure(config)
    better = write_ddpm(tmp_path / "better.pt")  # other random weights: another file
    assert record_best(storage, "ddpm", checkpoint=better, metric="val_loss", value=0.5, mode="min",
                       config={}, source="better")
    later = DDPMModel.func_or_class()
    later.reconfigure(config)  # the same user_config, handed to a new replica
    a, b = asyncio.run(first.info()), asyncio.run(later.info())
    assert a["sha256"] == b["sha256"] == config["sha256"] and a["checkpoint"] == b["checkpoint"]
    assert a["sha256"] == hashlib.sha256(Path(config["checkpoint"]).read_bytes()).hexdigest()
    # a deliberate redeploy resolves again and serves the new best
    again = DDPMModel.func_or_class()
    again.reconfigure(pinned(storage))
    assert asyncio.run(again.info())["sha256"] == hashlib.sha256(better.read_bytes()).hexdigest()


def test_nothing_registered_at_build_serves_nothing_even_after_a_registration(tmp_path):
    """Built before anything was registered: a replica started after the first registration
    must not load it while the others hold none."""
    from hw4.registry import record_best

    from .conftest import write_ddpm

    config = pinned(tmp_path)
    assert config["checkpoint"] is None
    early = DDPMModel.func_or_class()
    early.reconfigure(config)
    record_best(tmp_path, "ddpm", checkpoint=write_ddpm(tmp_path / "a.pt"), metric="val_loss",
                value=1.0, mode="min", config={}, source="a")
    late = DDPMModel.func_or_class()
    late.reconfigure(config)
    for replica in (early, late):
        info = asyncio.run(replica.info())
        assert not info["loaded"] and "redeploy" in info["load_error"]


def test_a_pinned_path_whose_bytes_changed_is_refused(tmp_path):
    from .conftest import write_ddpm

    ckpt = write_ddpm(tmp_path / "run" / "artifacts" / "checkpoint.pt")
    config = pinned(tmp_path, checkpoint=str(ckpt))
    first = DDPMModel.func_or_class()
    first.reconfigure(config)
    write_ddpm(ckpt)  # a rerun with --overwrite rewrites the file under the same path
    restarted = DDPMModel.func_or_class()
    restarted.reconfigure(config)
    info = asyncio.run(restarted.info())
    assert not info["loaded"] and "no longer have the SHA-256" in info["load_error"]
    assert asyncio.run(first.info())["loaded"]  # the running one keeps what it loaded
    unpinned = DDPMModel.func_or_class()  # a hand-written user_config without the hash
    unpinned.reconfigure({"storage_path": str(tmp_path), "checkpoint": str(ckpt)})
    assert "no pinned sha256" in asyncio.run(unpinned.info())["load_error"]


def test_info_names_no_absolute_path_and_no_pid(tmp_path):
    import os

    storage = make_storage(tmp_path)
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(storage))
    info = asyncio.run(replica.info())
    text = json.dumps(info)
    assert str(tmp_path) not in text and "pid" not in info and str(os.getpid()) not in text
    assert info["checkpoint"] == f"ddpm-{info['sha256'][:12]}" and info["run"] == "ddpm"


@pytest.mark.parametrize("images, why", [
    ([{}], "no source"),
    ([{"test_index": 3, "pixels": [[0.0] * 28] * 28}], "two sources"),
    ([{"test_index": 3}, {"pixels": [[0.0] * 28] * 28}], "test images and uploads mixed"),
    ([{"pixels": [[1.5] * 28] * 28}], "a pixel outside [0, 1]"),
])
def test_the_schema_types_hold_the_image_rules(images, why):
    """One source per image, one kind per request, pixels in [0, 1]: each rule is a type of the
    schema, so a body that breaks it is a validation error (422), not a refusal deeper in."""
    with pytest.raises(ValidationError):
        ClassifyIn(images=images)
    ok = ClassifyIn(images=[{"test_index": 3}, {"test_index": 4}])
    assert schemas.image_spec(ok.images) == {"test_indices": [3, 4]}


def test_the_served_schema_states_the_vae_latent_size():
    from serve.routes import api

    schema = schemas.state_latent_size(api.openapi(), 16)
    models = schema["components"]["schemas"]
    z, dims = models["DecodeIn"]["properties"]["z"], models["TraverseIn"]["properties"]["dims"]
    assert (z["minItems"], z["maxItems"]) == (16, 16)
    assert dims["items"]["exclusiveMaximum"] == 16 and dims["maxItems"] == 16
    images = models["ClassifyIn"]["properties"]["images"]["anyOf"]  # one kind per request
    assert [i["items"].get("$ref", "uploads") for i in images] == [
        "#/components/schemas/IndexImage", "uploads"]
    assert api.openapi()["components"]["schemas"]["DecodeIn"]["properties"]["z"]["maxItems"] \
        == schemas.MAX_LATENT  # FastAPI's cached schema is left as it was


def test_the_local_deploy_config_is_valid_and_serves_this_folder_s_registry(tmp_path, monkeypatch):
    """serve/local.yaml is a valid Serve config whose builder, run where `ray start` ran (the
    repository root), pins the registry's best of that folder's own ``results``."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app

    from .conftest import ROOT

    config = yaml.safe_load((ROOT / "serve" / "local.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks first
    (app,) = config["applications"]
    assert app["import_path"] == "serve.app:build_app" and "token_env" not in app["args"]
    storage = make_storage(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    ingress = build_app(app["args"])._bound_deployment  # Serve's bound graph: Api(ddpm, vae)
    models = {a._bound_deployment.name: a._bound_deployment.user_config
              for a in ingress.init_args[:2]}
    assert {name: c["registered_from"] for name, c in models.items()} == {
        "DDPMModel": str(storage / "ddpm" / "checkpoint.pt"),
        "VAEModel": str(storage / "vae" / "checkpoint.pt")}
