"""The Serve app's HTTP side: the FastAPI routes of the ``Api`` ingress, with the guard (host,
token, body size: serve/guard.py), the error handlers (serve/http_errors.py), the web page and
the OpenAPI schema stating the served VAE's latent size. Inference happens in serve.deployments."""

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from hw4.adversarial import ATTACKS
from hw4.samplers import DEFAULT_SAMPLER, SAMPLERS, SampleRequest
from hw4.vae_attacks import ATTACK_TARGET_LABELS
from serve import guard, health, http_errors, schemas
from serve.guard import LOOPBACK_HOSTS, MAX_BODY_BYTES, TOKEN_ENV, Guard
from serve.http_errors import DOWN, RETRY_AFTER_S
from serve.replies import b64png, image_json, image_reply, sse
from serve.schemas import (
    MAX_ATTACK_COST,
    MAX_GUIDANCE,
    MAX_SAMPLE_COST,
    MAX_SAMPLE_IMAGES,
    MAX_TEST_IMAGES,
    AttackIn,
    ClassifyIn,
    DDPMSampleIn,
    DDPMStreamIn,
    DecodeIn,
    ImageRequest,
    TraverseIn,
    VAESampleIn,
    image_spec,
)

STATIC = Path(__file__).resolve().parent / "static"  # the web page at /
STATIC_TYPES = {"style.css": "text/css"} | {  # the page's scripts, in the order index.html loads them
    f"{name}.js": "text/javascript"
    for name in ("common", "chart", "sampler", "latent", "attack", "models", "app")}


# the schema and its page are the ingress's own routes (below): the schema states the latent
# size of the VAE being served, which FastAPI's static one cannot know
api = FastAPI(title="hw4", version="1.0", openapi_url=None, docs_url=None, redoc_url=None,
              description="Samples, reconstructions, latent traversals and adversarial evaluation "
                          "from the best VAE and DDPM checkpoints.")
api.add_middleware(Guard)  # host, token, body size, security headers (serve/guard.py)
http_errors.install(api)


# beyond 200 requests in flight and 100 waiting, the proxy answers 503 at once: slow or
# abandoned uploads cannot pile up behind busy slots (http_options.request_timeout_s bounds each)
@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=200,
                  max_queued_requests=100)
@serve.ingress(api)
class Api:
    def __init__(self, ddpm: DeploymentHandle, vae: DeploymentHandle, token_env: str = TOKEN_ENV,
                 token_required: bool = False, hosts: tuple[str, ...] = LOOPBACK_HOSTS) -> None:
        self.ddpm, self.vae = ddpm, vae
        guard.configure(token_env, token_required, hosts)  # raises: the replica refuses to start

    @api.get("/", include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The playground: sampler, latent explorer, adversarial demo and model info, all
        through this API (serve/static/)."""
        return HTMLResponse((STATIC / "index.html").read_text(), headers={"Cache-Control": "no-cache"})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        """The OpenAPI schema, with the served VAE's latent size as the length of ``z`` and the
        bound of ``dims`` (the generic bounds while no VAE is loaded)."""
        schema = api.openapi()
        config = (await self.vae.info.remote()).get("config") or {}
        if "latent_dim" in config:
            schema = schemas.state_latent_size(schema, int(config["latent_dim"]))
        return JSONResponse(schema)

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="hw4 API")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, f"no static file {name!r}")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name],
                        headers={"Cache-Control": "no-cache"})

    @api.get("/healthz", responses={503: {"description": "a model deployment has no running "
                                                        "replica or is unhealthy, or no model is "
                                                        "loaded"}})
    async def healthz(self) -> JSONResponse:
        """Each model deployment's state as Serve's controller records it (serve/health.py):
        "down: <why>" when it has no running replica or is unhealthy; else whether its replica
        has a model loaded, or "busy" when that live replica is slow to say. 503 (with
        Retry-After) when any model is down or none is loaded."""
        handles = {"ddpm": self.ddpm, "vae": self.vae}
        try:
            states = await asyncio.wait_for(asyncio.to_thread(
                health.serve_states, self.ddpm.app_name,
                {k: h.deployment_name for k, h in handles.items()}), health.STATUS_TIMEOUT_S)
        except (TimeoutError, RayServeException, *DOWN) as err:
            return JSONResponse({"status": f"unavailable: Serve's controller did not answer "
                                           f"({type(err).__name__})", "models": {}}, 503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        models = await health.model_health(
            states, {k: h.loaded.remote for k, h in handles.items()},
            busy_errors=(BackPressureError,), down_errors=(*DOWN, RayServeException))
        status = health.overall(models)
        return JSONResponse({"status": status, "models": models},
                            200 if status == "ok" else 503,
                            headers={} if status == "ok" else {"Retry-After": str(RETRY_AFTER_S)})

    @api.get("/info")
    async def info(self) -> dict:
        """Which checkpoints are served, their metrics, configs, training history, load errors."""
        ddpm, vae = await asyncio.gather(self.ddpm.info.remote(), self.vae.info.remote())
        return {"ddpm": ddpm, "vae": vae, "attack_targets": ATTACK_TARGET_LABELS,
                "attacks": [{"name": a.name, "label": a.label, "default_steps": a.default_steps}
                            for a in ATTACKS.values()],
                "samplers": [{"name": k.name, "label": k.label, "default_steps": k.default_steps,
                              "uses_eta": k.uses_eta} for k in SAMPLERS.values()],
                "default_sampler": DEFAULT_SAMPLER,
                "limits": {"max_sample_images": MAX_SAMPLE_IMAGES, "max_body_bytes": MAX_BODY_BYTES,
                           "max_test_images": MAX_TEST_IMAGES, "max_guidance": MAX_GUIDANCE,
                           "max_sample_cost": MAX_SAMPLE_COST, "max_attack_cost": MAX_ATTACK_COST}}

    @api.post("/ddpm/sample", responses={200: {"content": {"image/png": {}}}})
    async def ddpm_sample(self, body: DDPMSampleIn) -> Response:
        """Draw n digits with any registered sampler (``hw4.samplers``; ``steps`` network calls,
        ``eta`` for DDIM); seeded. A class-conditional model draws the ``labels`` asked for,
        guided with weight ``guidance``. JSON adds the pinned MNIST classifier's verdict on each
        image."""
        t0 = time.perf_counter()
        req = body.request()
        images = await self.ddpm.sample.remote(req)
        meta = dict(seconds=round(time.perf_counter() - t0, 4), sampler=req.sampler,
                    steps=req.steps, seed=req.seed, guidance=req.guidance)
        if body.format == "json":
            meta["verdict"] = await self.ddpm.verdict.remote(images)
            meta["labels"] = list(req.labels) if req.labels is not None else None
        return image_reply(images, body.format, nrow=body.nrow, **meta)

    @api.post("/ddpm/sample/stream", response_class=StreamingResponse, responses={200: {
        "content": {"text/event-stream": {}},
        "description": "server-sent events: `progress` after every network call ({step, total}, "
                       "with preview_png_base64, the x-hat-0 grid, after the first call and every "
                       "preview_every calls), "
                       "then `done` (the JSON reply of /ddpm/sample), or `error` ({detail})"}})
    async def ddpm_sample_stream(self, body: DDPMStreamIn) -> StreamingResponse:
        """The sampler's chain as it runs: watch noise become digits. One request's chain runs
        unbatched; a client that disconnects stops it within one network call."""
        req = body.request()
        await self.ddpm.check_stream.remote(req)  # refusals as 4xx, before the stream
        chain = self.ddpm.options(stream=True).stream.remote(req, body.preview_every)
        return StreamingResponse(self._events(chain, req, body.nrow), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _events(self, chain: Any, req: SampleRequest, nrow: int) -> AsyncIterator[str]:
        t0 = time.perf_counter()
        try:
            async for item in chain:
                if "final" in item:
                    images = item["final"]
                    yield sse("done", image_json(
                        images, nrow, seconds=round(time.perf_counter() - t0, 4),
                        sampler=req.sampler, steps=req.steps, seed=req.seed,
                        guidance=req.guidance,
                        labels=list(req.labels) if req.labels is not None else None,
                        verdict=await self.ddpm.verdict.remote(images)))
                else:
                    progress = {"step": item["step"], "total": item["total"]}
                    if "preview" in item:
                        progress["preview_png_base64"] = base64.b64encode(item["preview"]).decode()
                    yield sse("progress", progress)
        except DOWN as err:  # the replica died mid-chain: say so in the stream (its status is sent)
            yield sse("error", {"detail": f"a model is unavailable, try again shortly "
                                          f"({type(err).__name__})"})

    @api.post("/vae/sample", responses={200: {"content": {"image/png": {}}}})
    async def vae_sample(self, body: VAESampleIn) -> Response:
        images = await self.vae.sample.remote(body.n, body.seed)
        return image_reply(images, body.format, seed=body.seed)

    @api.post("/vae/reconstruct", responses={200: {"content": {"image/png": {}}}})
    async def vae_reconstruct(self, body: ImageRequest) -> Response:
        """The image and its reconstruction side by side (JSON adds the posterior mu, log_var)."""
        out = await self.vae.reconstruct.remote(image_spec([body.image]))
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
        images = await self.vae.traverse.remote(
            image_spec([body.image]), body.dims, body.low, body.high, body.steps)
        return image_reply(images, body.format, nrow=body.steps)

    @api.post("/vae/decode", responses={200: {"content": {"image/png": {}}}})
    async def vae_decode(self, body: DecodeIn) -> Response:
        return image_reply(await self.vae.decode.remote(body.z), body.format, nrow=1)

    @api.post("/vae/classify")
    async def vae_classify(self, body: ClassifyIn) -> dict:
        """Predictions of the pixel CNN, the latent classifier and reconstruct-then-classify."""
        return await self.vae.classify.remote(image_spec(body.images))

    @api.get("/vae/test-image/{index}", responses={200: {"content": {"image/png": {}}}})
    async def test_image(self, index: int) -> Response:
        """A Fashion-MNIST test image (its label in the x-hw4-label header)."""
        if not 0 <= index <= 9999:
            raise HTTPException(422, "index must be in 0..9999")
        image, label = await self.vae.test_image.remote(index)
        return image_reply(image, "png", nrow=1, label=label)

    @api.post("/adversarial")
    async def adversarial_eval(self, body: AttackIn) -> dict:
        """Accuracy of each chosen model under the chosen attack (FGSM, PGD, APGD-CE, APGD-T,
        Square or the AutoAttack ensemble, with EOT) at each eps, with examples; AutoAttack adds
        the accuracy left after each of its attacks."""
        if body.images is not None:
            spec = image_spec(body.images, body.labels)
        else:
            if body.start + body.n > 10000:
                raise HTTPException(422, "start + n must be at most 10000 test images")
            spec = {"test_indices": list(range(body.start, body.start + body.n))}
        out = await self.vae.attack.remote(
            spec, body.attack, body.epsilons, body.models, body.targeted, body.options(),
            body.seed, body.examples)
        originals = out.pop("originals")  # a tensor: never into the JSON as it is
        out["originals_png_base64"] = b64png(originals) if body.examples else None
        out["examples"] = {name: {str(e): b64png(adv) for e, adv in per_eps.items()}
                           for name, per_eps in out["examples"].items()} if body.examples else {}
        return json.loads(json.dumps(out))  # eps keys become strings, as JSON has them
