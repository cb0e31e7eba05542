"""Ray Serve app: DDPM sampling, VAE sampling/reconstruction/traversal/classification and
adversarial evaluation over HTTP, backed by the best checkpoints in the registry.

    serve run serve.app:app                     # 127.0.0.1:8000, checkpoints from ./results
    serve run serve.app:build_app storage_path=/data/results ddpm_checkpoint=/x/checkpoint.pt
    serve deploy serve/config.yaml              # replicas, autoscaling, CPUs/GPUs, checkpoints

Three deployments: ``Api`` (the FastAPI ingress: validation, limits, auth, PNG/JSON encoding)
calls ``DDPMModel`` (concurrent sample requests are batched with ``@serve.batch``) and
``VAEModel``. Each model deployment takes ``{"storage_path", "checkpoint"}`` as its Serve
``user_config``: changing it reloads the model in place; a checkpoint that fails to load is
reported in ``/info`` and the previous model keeps serving. With HW4_SERVE_TOKEN set (or the
variable named by ``token_env``), every route wants ``Authorization: Bearer <token>``.
"""

import asyncio
import base64
import functools
import json
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from hw4 import adversarial, data, viz
from hw4.assets import load_classifier
from hw4.errors import HW4Error
from hw4.evaluation import attack_targets
from hw4.registry import registry_path
from hw4.trained import load_ddpm, load_vae, reconstruction, resolve_checkpoint

TOKEN_ENV = "HW4_SERVE_TOKEN"
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_SAMPLE_IMAGES = 64  # per DDPM request, and the most images one DDPM batch holds
MAX_TEST_IMAGES = 256
MAX_UPLOADS = 64
STATIC = Path(__file__).resolve().parent / "static"  # the web page at /
STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}


class Unavailable(HW4Error):
    """No model is loaded (nothing registered, or its checkpoint failed to load): HTTP 503."""


# --- the model deployments ---------------------------------------------------------------------

class Reloadable:
    """A model that (re)loads from its ``user_config``; a failed load keeps the previous model."""

    kind = ""

    def _setup(self) -> None:
        self.model: Any = None
        self.path: Path | None = None
        self.history: list = []
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.storage = "results"

    def load(self, path: Path) -> Any:
        raise NotImplementedError

    def reconfigure(self, config: dict) -> None:
        """Load the configured checkpoint (or the registry's best). A replica that already
        serves a model keeps it when the new one fails to load (a ``user_config`` change); a new
        replica fails to start and ``serve status`` shows the error (after a code redeploy the
        old replicas are gone by then). With nothing registered and no explicit checkpoint, the
        replica starts empty and answers 503."""
        storage, explicit = config.get("storage_path") or "results", config.get("checkpoint")
        self.storage = storage
        if not explicit and not registry_path(storage, self.kind).is_file():
            self.load_error = (f"no registered {self.kind} checkpoint under {storage}; train one "
                               "or set the checkpoint in the deployment's user_config")
            return
        try:
            path = resolve_checkpoint(storage, self.kind, explicit)
            model = self.load(path)
        except HW4Error as err:
            self.load_error = str(err)
            if self.model is None:
                raise
            print(f"[hw4] {self.kind}: keeping {self.path}; the new checkpoint failed: {err}",
                  flush=True)
            return
        self.history = training_history(path)
        self.model, self.path, self.load_error, self.loaded_at = model, path, None, time.time()

    def require(self) -> Any:
        if self.model is None:
            raise Unavailable(f"no {self.kind} model is loaded: {self.load_error}")
        return self.model

    async def loaded(self) -> bool:
        return self.model is not None

    def info(self) -> dict:
        m = self.model
        return {"loaded": m is not None, "checkpoint": str(self.path) if self.path else None,
                "load_error": self.load_error, "loaded_at": self.loaded_at,
                "metrics": m.metrics if m else None, "config": m.config if m else None,
                "history": self.history, "pid": os.getpid()}


def evaluation_summary(storage: str, checkpoint: Path | None) -> dict | None:
    """Robustness curves of the newest ``jobs/evaluate.py`` report on this VAE checkpoint."""
    if checkpoint is None:
        return None
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # deleted meanwhile
            return 0.0

    for path in sorted(Path(storage).glob("eval/*/report.json"), key=mtime, reverse=True):
        try:
            vae = json.loads(path.read_text()).get("vae") or {}
            if vae.get("checkpoint") and Path(vae["checkpoint"]).resolve() == checkpoint.resolve():
                return {"report": str(path), "robustness": vae["robustness"],
                        "clean_accuracy": vae.get("clean_accuracy"),
                        "most_robust": vae.get("most_robust")}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
    return None


def training_history(path: Path) -> list:
    """The per-epoch metrics the training job wrote beside the artifact (none if absent)."""
    try:
        return json.loads((path.parent / "metrics.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []


def guarded(method):
    """Return ``HW4Error``s as values: exceptions crossing a Ray handle carry tracebacks."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except HW4Error as err:
            return err
    return wrapper


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise HW4Error(f"png_base64 is not valid base64: {err}") from err


def _images_in_batch(requests: list[dict]) -> int:
    return sum(r["n"] for r in requests)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  max_constructor_retry_count=3,
                  user_config={"storage_path": "results", "checkpoint": None, "batching": True})
class DDPMModel(Reloadable):
    kind = "ddpm"

    def __init__(self) -> None:
        self._setup()
        self.batching = True
        self.batch_sizes: deque[int] = deque(maxlen=500)  # requests per model call, for /info
        self.lock = asyncio.Lock()  # one model call at a time, batched or not
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def load(self, path: Path):
        return load_ddpm(path)

    def reconfigure(self, config: dict) -> None:
        super().reconfigure(config)
        self.batching = bool(config.get("batching", True))

    @guarded
    async def sample(self, req: dict) -> torch.Tensor:
        """req: n, sampler, steps, eta, seed -> (n, 1, 28, 28) in [0, 1]."""
        ddpm = self.require()
        if req["sampler"] == "ddim" and req["steps"] > ddpm.timesteps:
            raise HW4Error(f"steps must be at most {ddpm.timesteps} for this model")
        if self.batching:
            return await self._batched(req)
        return (await self._run([req]))[0]

    @serve.batch(max_batch_size=MAX_SAMPLE_IMAGES, batch_wait_timeout_s=0.05,
                 batch_size_fn=_images_in_batch)
    async def _batched(self, requests: list[dict]) -> list[torch.Tensor]:
        return await self._run(requests)

    async def _run(self, requests: list[dict]) -> list[torch.Tensor]:
        """Requests with the same sampler settings share one call; each keeps its own seed."""
        ddpm = self.require()
        out: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r["sampler"], r["steps"], r["eta"]), []).append(i)
        async with self.lock:
            for (sampler, steps, eta), idx in groups.items():
                blocks = [(torch.Generator().manual_seed(requests[i]["seed"]), requests[i]["n"])
                          for i in idx]
                self.batch_sizes.append(len(idx))
                images = await asyncio.to_thread(
                    ddpm.sample, sum(n for _, n in blocks), method=sampler, steps=steps, eta=eta,
                    generator=blocks, device=self.device)
                for i, part in zip(idx, images.split([n for _, n in blocks]), strict=True):
                    out[i] = part
        return out

    async def info(self) -> dict:
        return {**Reloadable.info(self), "batching": self.batching,
                "recent_batch_sizes": list(self.batch_sizes)}


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  max_constructor_retry_count=3,
                  user_config={"storage_path": "results", "checkpoint": None})
class VAEModel(Reloadable):
    kind = "vae"

    def __init__(self) -> None:
        self._setup()
        self.pixel_cnn = load_classifier("fashion_mnist")
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def load(self, path: Path):
        trained = load_vae(path)
        trained.vae.requires_grad_(False)  # attacks need input gradients only
        return trained

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            try:
                self._test = data.load_tensors("fashion_mnist", "test")
            except (HW4Error, OSError, RuntimeError) as err:
                raise Unavailable(f"Fashion-MNIST test images are not available here: {err}") from err
        return self._test

    def images(self, spec: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Uploaded PNGs / pixel grids, or test-set indices -> (N, 1, 28, 28), labels or None."""
        if spec.get("test_indices") is not None:
            x, y = self.test_set()
            idx = torch.tensor(spec["test_indices"])
            if idx.max() >= len(x):
                raise HW4Error(f"test_index must be below {len(x)}")
            return x[idx], y[idx]
        out = [viz.image_from_png(b64decode(b)) if kind == "png" else viz.image_from_pixels(b)
               for kind, b in spec["uploads"]]
        labels = spec.get("labels")
        return torch.cat(out), torch.tensor(labels) if labels is not None else None

    @guarded
    async def test_image(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.images({"test_indices": [index]})
        return x, int(y[0])

    def classifiers(self) -> dict[str, torch.nn.Module]:
        return attack_targets(self.require(), self.pixel_cnn)

    @guarded
    async def sample(self, n: int, seed: int) -> torch.Tensor:
        return self.require().vae.sample(n, torch.Generator().manual_seed(seed))

    @guarded
    async def decode(self, z: list[float]) -> torch.Tensor:
        vae = self.require().vae
        if len(z) != vae.config.latent_dim:
            raise HW4Error(f"z must have {vae.config.latent_dim} values (the latent size)")
        return vae.decode(torch.tensor([z]))

    @guarded
    async def reconstruct(self, spec: dict) -> dict:
        trained = self.require()
        x, _ = self.images(spec)
        with torch.no_grad():
            mu, log_var = trained.vae.encoder(x)
        return {"input": x, "reconstruction": trained.vae.reconstruct(x), "mu": mu.tolist(),
                "log_var": log_var.tolist() if log_var is not None else None}

    @guarded
    async def traverse(self, spec: dict, dims: list[int], low: float, high: float,
                       steps: int) -> torch.Tensor:
        vae = self.require().vae
        if max(dims) >= vae.config.latent_dim:
            raise HW4Error(f"dims must be below the latent size {vae.config.latent_dim}")
        x, _ = self.images(spec)
        return vae.traverse(x[:1], dims, torch.linspace(low, high, steps))

    @guarded
    async def classify(self, spec: dict) -> dict:
        x, y = self.images(spec)
        out = {"labels": y.tolist() if y is not None else None, "models": {}}
        with torch.no_grad():
            for name, model in self.classifiers().items():
                p = model(x).softmax(1)
                out["models"][name] = {"prediction": p.argmax(1).tolist(),
                                       "confidence": p.max(1).values.tolist(),
                                       "probabilities": p.tolist()}
        return out

    @guarded
    async def attack(self, spec: dict, attack: str, epsilons: list[float], models: list[str],
                     targeted: bool, pgd_steps: int, seed: int, examples: int) -> dict:
        x, y = self.images(spec)
        if y is None:
            raise HW4Error("uploaded images need labels (one class 0-9 per image)")
        chosen = {k: v for k, v in self.classifiers().items() if k in models}
        if not chosen:
            raise HW4Error(f"no such model here; available: {sorted(self.classifiers())}")
        vae = self.require().vae
        goal = (y + 1) % 10 if targeted else y
        result: dict = {"n": len(x), "accuracy": {}, "target_rate": {}, "predictions": {},
                        "examples": {}, "reconstruction_error": {}}
        for name, model in chosen.items():
            result["accuracy"][name], result["target_rate"][name] = {}, {}
            result["predictions"][name], result["examples"][name] = {}, {}
            for eps in epsilons:
                kw = {"steps": pgd_steps, "generator": torch.Generator().manual_seed(seed)} \
                    if attack == "pgd" else {}
                adv = await asyncio.to_thread(adversarial.ATTACKS[attack], model, x, goal, eps,
                                              targeted=targeted, **kw)
                with torch.no_grad():
                    p = model(adv).softmax(1)
                    if name == "reconstruct_then_classify":
                        result["reconstruction_error"][eps] = float(
                            F.mse_loss(reconstruction(vae, adv), x))
                pred = p.argmax(1)
                result["accuracy"][name][eps] = float((pred == y).float().mean())
                result["target_rate"][name][eps] = float((pred == goal).float().mean())
                result["predictions"][name][eps] = {"class": pred[:examples].tolist(),
                                                    "confidence": p.max(1).values[:examples].tolist()}
                result["examples"][name][eps] = adv[:examples]
        result["labels"] = y[:examples].tolist()
        result["originals"] = x[:examples]
        return result

    async def info(self) -> dict:
        return {**Reloadable.info(self), "evaluation": evaluation_summary(self.storage, self.path)}


# --- the HTTP API ---------------------------------------------------------------------------------

class ImageIn(BaseModel):
    """One image: a base64 PNG (any size up to 1024 px a side, made grey 28x28), a 28x28 grid
    of values in [0, 1], or the index of a Fashion-MNIST test image."""

    model_config = ConfigDict(extra="forbid")
    png_base64: str | None = Field(None, max_length=2_000_000)
    pixels: list[list[float]] | None = Field(None, min_length=28, max_length=28)
    test_index: int | None = Field(None, ge=0, le=9999)

    @model_validator(mode="after")
    def one_source(self) -> "ImageIn":
        if sum(v is not None for v in (self.png_base64, self.pixels, self.test_index)) != 1:
            raise ValueError("give exactly one of png_base64, pixels, test_index")
        return self


def image_spec(images: list[ImageIn], labels: list[int] | None = None) -> dict:
    """What the VAE replica needs to rebuild the images (all test indices, or all uploads)."""
    if all(i.test_index is not None for i in images):
        return {"test_indices": [i.test_index for i in images]}
    if any(i.test_index is not None for i in images):
        raise HTTPException(422, "mix of test_index and uploaded images: use one kind per request")
    return {"uploads": [("png", i.png_base64) if i.png_base64 is not None else ("pixels", i.pixels)
                        for i in images], "labels": labels}


Format = Literal["png", "json"]


class DDPMSampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, le=MAX_SAMPLE_IMAGES, description="images to draw")
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps (DDPM always uses all T)")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM noise: 0 deterministic, 1 DDPM-like")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    format: Format = "png"


class VAESampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, le=MAX_TEST_IMAGES)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    format: Format = "png"


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ImageIn
    format: Format = "png"


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_UPLOADS)


class TraverseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ImageIn
    dims: list[int] = Field([0, 1, 2, 3], min_length=1, max_length=32)
    low: float = Field(-3.0, ge=-10, le=10)
    high: float = Field(3.0, ge=-10, le=10)
    steps: int = Field(9, ge=2, le=21)
    format: Format = "png"

    @model_validator(mode="after")
    def valid(self) -> "TraverseIn":
        if min(self.dims) < 0:
            raise ValueError("dims must be >= 0")
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class DecodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z: list[float] = Field(min_length=1, max_length=512)
    format: Format = "png"

    @model_validator(mode="after")
    def bounded(self) -> "DecodeIn":
        if any(not -10 <= v <= 10 for v in self.z):
            raise ValueError("every z value must lie in [-10, 10]")
        return self


TARGETS = ("pixel_cnn", "latent_classifier", "reconstruct_then_classify")


class AttackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack: Literal["fgsm", "pgd"] = "fgsm"
    epsilons: list[float] = Field([0.0, 0.05, 0.1, 0.2], min_length=1, max_length=11)
    models: list[Literal[TARGETS]] = Field(list(TARGETS), min_length=1)  # type: ignore[valid-type]
    images: list[ImageIn] | None = Field(None, min_length=1, max_length=MAX_UPLOADS)
    labels: list[int] | None = Field(None, description="true classes of uploaded images")
    n: int = Field(32, ge=1, le=MAX_TEST_IMAGES, description="test images, when no images given")
    start: int = Field(0, ge=0, le=9999, description="first test image, when no images given")
    targeted: bool = Field(False, description="aim at class (label + 1) mod 10")
    pgd_steps: int = Field(10, ge=1, le=50)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    examples: int = Field(8, ge=0, le=16, description="adversarial images returned per eps")

    @model_validator(mode="after")
    def valid(self) -> "AttackIn":
        if any(not 0 <= e <= 0.5 for e in self.epsilons):
            raise ValueError("epsilons must lie in [0, 0.5] (pixel units of [0, 1] images)")
        if self.labels is not None and (self.images is None or len(self.labels) != len(self.images)
                                        or any(not 0 <= c <= 9 for c in self.labels)):
            raise ValueError("labels: one class in 0..9 per uploaded image")
        return self


def b64png(images: torch.Tensor, nrow: int = 8) -> str:
    return base64.b64encode(viz.png_bytes(images, nrow)).decode()


def image_reply(images: torch.Tensor, fmt: str, nrow: int = 8, **meta: Any) -> Response:
    """A PNG grid, or JSON with the grid and each image as base64 PNG plus ``meta``."""
    if fmt == "png":
        return Response(viz.png_bytes(images, nrow), media_type="image/png",
                        headers={f"x-hw4-{k.replace('_', '-')}": str(v) for k, v in meta.items()})
    return JSONResponse({"grid_png_base64": b64png(images, nrow),
                         "images_png_base64": [b64png(im[None], 1) for im in images],
                         "shape": list(images.shape), **meta})


def unwrap_reply(value: Any) -> Any:
    if isinstance(value, Unavailable):
        raise HTTPException(503, str(value))
    if isinstance(value, HW4Error):
        raise HTTPException(400, str(value))
    return value


api = FastAPI(title="hw4", version="1.0",
              description="Samples, reconstructions, latent traversals and adversarial evaluation "
                          "from the best VAE and DDPM checkpoints.")


api.state.token = None


def is_page(request: Request) -> bool:
    """The web page and its two files: public, so a browser can load them and ask for the token."""
    path, prefix = request.url.path, request.scope.get("root_path") or ""
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
    return request.method == "GET" and (path in ("", "/") or path.removeprefix("/static/")
                                        in STATIC_TYPES)


@api.middleware("http")
async def guard(request: Request, call_next):
    """Every route but the page: the bearer token when one is set; the body-size limit."""
    token = request.app.state.token
    if token is not None and not is_page(request):
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, 413)
    return await call_next(request)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=200)
@serve.ingress(api)
class Api:
    def __init__(self, ddpm: DeploymentHandle, vae: DeploymentHandle,
                 token_env: str = TOKEN_ENV) -> None:
        self.ddpm, self.vae = ddpm, vae
        api.state.token = os.environ.get(token_env) or None  # read by ``guard``

    @api.get("/", include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The playground: sampler, latent explorer, adversarial demo and model info, all
        through this API (serve/static/)."""
        return HTMLResponse((STATIC / "index.html").read_text(), headers={"Cache-Control": "no-cache"})

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, f"no static file {name!r}")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name],
                        headers={"Cache-Control": "no-cache"})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        ddpm, vae = await asyncio.gather(self.ddpm.loaded.remote(), self.vae.loaded.remote())
        return {"status": "ok", "models": {"ddpm": ddpm, "vae": vae}}

    @api.get("/info")
    async def info(self) -> dict:
        """Which checkpoints are served, their metrics, configs, training history, load errors."""
        ddpm, vae = await asyncio.gather(self.ddpm.info.remote(), self.vae.info.remote())
        return {"ddpm": ddpm, "vae": vae,
                "limits": {"max_sample_images": MAX_SAMPLE_IMAGES, "max_body_bytes": MAX_BODY_BYTES,
                           "max_test_images": MAX_TEST_IMAGES}}

    @api.post("/ddpm/sample", responses={200: {"content": {"image/png": {}}}})
    async def ddpm_sample(self, body: DDPMSampleIn) -> Response:
        """Draw n digits with DDPM (all T steps) or DDIM (``steps``, ``eta``); seeded."""
        t0 = time.perf_counter()
        req = body.model_dump(exclude={"format"})
        images = unwrap_reply(await self.ddpm.sample.remote(req))
        return image_reply(images, body.format, seconds=round(time.perf_counter() - t0, 4),
                           sampler=body.sampler, steps=body.steps, seed=body.seed)

    @api.post("/vae/sample", responses={200: {"content": {"image/png": {}}}})
    async def vae_sample(self, body: VAESampleIn) -> Response:
        images = unwrap_reply(await self.vae.sample.remote(body.n, body.seed))
        return image_reply(images, body.format, seed=body.seed)

    @api.post("/vae/reconstruct", responses={200: {"content": {"image/png": {}}}})
    async def vae_reconstruct(self, body: ImageRequest) -> Response:
        """The image and its reconstruction side by side (JSON adds the posterior mu, log_var)."""
        out = unwrap_reply(await self.vae.reconstruct.remote(image_spec([body.image])))
        pair = torch.cat([out["input"], out["reconstruction"]])
        if body.format == "png":
            return image_reply(pair, "png", nrow=2)
        return JSONResponse({"grid_png_base64": b64png(pair, 2),
                             "reconstruction_png_base64": b64png(out["reconstruction"], 1),
                             "mu": out["mu"][0],
                             "log_var": out["log_var"][0] if out["log_var"] else None})

    @api.post("/vae/traverse", responses={200: {"content": {"image/png": {}}}})
    async def vae_traverse(self, body: TraverseIn) -> Response:
        """One row per latent dimension, moved from ``low`` to ``high`` around the image's code."""
        images = unwrap_reply(await self.vae.traverse.remote(
            image_spec([body.image]), body.dims, body.low, body.high, body.steps))
        return image_reply(images, body.format, nrow=body.steps)

    @api.post("/vae/decode", responses={200: {"content": {"image/png": {}}}})
    async def vae_decode(self, body: DecodeIn) -> Response:
        return image_reply(unwrap_reply(await self.vae.decode.remote(body.z)), body.format, nrow=1)

    @api.post("/vae/classify")
    async def vae_classify(self, body: ClassifyIn) -> dict:
        """Predictions of the pixel CNN, the latent classifier and reconstruct-then-classify."""
        return unwrap_reply(await self.vae.classify.remote(image_spec(body.images)))

    @api.get("/vae/test-image/{index}", responses={200: {"content": {"image/png": {}}}})
    async def test_image(self, index: int) -> Response:
        """A Fashion-MNIST test image (its label in the x-hw4-label header)."""
        if not 0 <= index <= 9999:
            raise HTTPException(422, "index must be in 0..9999")
        image, label = unwrap_reply(await self.vae.test_image.remote(index))
        return image_reply(image, "png", nrow=1, label=label)

    @api.post("/adversarial")
    async def adversarial_eval(self, body: AttackIn) -> dict:
        """Accuracy of each chosen model on FGSM/PGD images at each eps, with examples."""
        if body.images is not None:
            spec = image_spec(body.images, body.labels)
        else:
            if body.start + body.n > 10000:
                raise HTTPException(422, "start + n must be at most 10000 test images")
            spec = {"test_indices": list(range(body.start, body.start + body.n))}
        out = unwrap_reply(await self.vae.attack.remote(
            spec, body.attack, body.epsilons, body.models, body.targeted, body.pgd_steps,
            body.seed, body.examples))
        originals = out.pop("originals")  # a tensor: never into the JSON as it is
        out["originals_png_base64"] = b64png(originals) if body.examples else None
        out["examples"] = {name: {str(e): b64png(adv) for e, adv in per_eps.items()}
                           for name, per_eps in out["examples"].items()} if body.examples else {}
        return json.loads(json.dumps(out))  # eps keys become strings, as JSON has them


def build_app(args: dict[str, str]) -> serve.Application:
    """``serve run serve.app:build_app storage_path=... vae_checkpoint=... ddpm_checkpoint=...
    token_env=...``: the storage path is resolved here, where ``serve run`` was started."""
    storage = str(Path(args.get("storage_path") or os.environ.get("HW4_STORAGE_PATH", "results"))
                  .resolve())
    ddpm = DDPMModel.options(user_config={"storage_path": storage,
                                          "checkpoint": args.get("ddpm_checkpoint"),
                                          "batching": args.get("batching", "true") != "false"})
    vae = VAEModel.options(user_config={"storage_path": storage,
                                        "checkpoint": args.get("vae_checkpoint")})
    return Api.bind(ddpm.bind(), vae.bind(), args.get("token_env", TOKEN_ENV))


app = build_app({})
