"""The Serve app's model deployments: each loads its checkpoint from ``user_config`` (reloading
in place when it changes; a failed load keeps the previous model: serve/replica.py) and runs
inference through ``hw4``. ``DDPMModel`` batches concurrent sample requests; ``VAEModel``
(serve/vae_model.py) serves the VAE, its latent classifiers and the adversarial evaluation."""

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from ray import serve

from hw4 import viz
from hw4.assets import load_classifier
from hw4.errors import HW4Error
from hw4.evaluation import grey_backgrounds
from hw4.samplers import SampleRequest
from hw4.trained import SamplingStopped, load_ddpm
from serve.batcher import Batcher
from serve.health import HEALTH_CHECK_PERIOD_S
from serve.replica import (
    Reloadable,
    TooCostly,
    in_thread,
    steps_in_thread,
)
from serve.schemas import MAX_SAMPLE_COST, MAX_SAMPLE_IMAGES
from serve.vae_model import VAEModel  # the other model deployment, importable from here too


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, max_queued_requests=64,
                  max_constructor_retry_count=3, health_check_period_s=HEALTH_CHECK_PERIOD_S,
                  user_config={"storage_path": "results", "checkpoint": None, "batching": True})
class DDPMModel(Reloadable):
    family = "ddpm"

    def __init__(self) -> None:
        self._setup()
        self.batching = True
        # requests that arrive while a model call runs share the next one (serve/batcher.py)
        self.batcher = Batcher(self._run, max_rows=MAX_SAMPLE_IMAGES, rows=lambda item: item[0].n)
        self.lock = asyncio.Lock()  # one model call at a time, batched or not
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.mnist_cnn = load_classifier("mnist")

    def load(self, path: Path):
        return load_ddpm(path)

    def reconfigure(self, config: dict) -> None:
        super().reconfigure(config)
        self.batching = bool(config.get("batching", True))

    async def sample(self, req: SampleRequest) -> torch.Tensor:
        """``req``'s samples, (n, 1, 28, 28) in [0, 1]."""
        self.check_request(req)
        if not self.batching:  # cancelling this task stops the sampler (serve.replica.in_thread)
            return (await self._run([(req, None)]))[0]
        left = threading.Event()  # the batch's task outlives a caller: this tells it they left
        try:
            return await self.batcher.submit((req, left))
        except asyncio.CancelledError:
            left.set()
            raise

    async def check_stream(self, req: SampleRequest) -> None:
        """``stream``'s refusals (raised: the ingress answers them 4xx) before the stream starts."""
        self.check_request(req)

    async def stream(self, req: SampleRequest, every: int | None = None) -> AsyncIterator[dict]:
        """``sample`` one step at a time, unbatched (a chain is one request's): after every step
        ``{"step", "total"}``, with ``"preview"`` (x-hat-0 as PNG bytes) after the first step and
        every ``every`` steps (by default about 20 previews per chain), and ``"final"`` (the
        samples, a tensor) after the last. The model lock is held until the step in flight has
        finished, also when the caller goes away: cancelling the stream stops the sampler within
        one step, and the next request never runs beside it."""
        ddpm = self.require()
        total = len(req.kind.visits(ddpm.schedule, req.steps))
        chain = ddpm.chain(req, every=every or max(1, total // 20), device=self.device)
        async with self.lock:
            async for item in steps_in_thread(chain):
                out: dict = {"step": item.step, "total": item.total}
                if item.preview is not None:
                    out["preview"] = viz.png_bytes(item.preview, min(8, req.n))
                if item.final is not None:
                    out["final"] = item.final
                yield out

    def check_request(self, req: SampleRequest) -> None:
        ddpm = self.require()
        if req.kind.default_steps and req.steps is not None and req.steps > ddpm.timesteps:
            raise HW4Error(f"steps must be at most {ddpm.timesteps} for this model")
        if req.labels is not None and not ddpm.conditional:
            raise HW4Error("the served DDPM is unconditional: send no labels")
        cost = req.cost(ddpm.schedule)
        if cost > MAX_SAMPLE_COST:
            raise TooCostly(f"this request costs {cost:,} image-network calls (n x steps, x2 with "
                            f"guidance; DDPM takes all {ddpm.timesteps} steps); the limit is "
                            f"{MAX_SAMPLE_COST:,}: ask for fewer images or steps")

    async def _run(self, items: list[tuple[SampleRequest, threading.Event | None]]
                   ) -> list[torch.Tensor | None]:
        """Requests with the same sampler settings share one call; each keeps its own seed and
        labels (``TrainedDDPM.draw``). A caller that left (its event) before its group's call
        starts is dropped from the call; a call whose callers have all left stops at its next
        network call. Results of those who left are None."""
        ddpm = self.require()
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (req, _) in enumerate(items):
            groups.setdefault(req.batch_key(), []).append(i)
        async with self.lock:  # a stream may hold it for long: callers may leave meanwhile
            for idx in groups.values():
                idx = [i for i in idx if not (items[i][1] is not None and items[i][1].is_set())]
                if not idx:  # every caller of this group left before its call started
                    continue
                callers = [items[i][1] for i in idx if items[i][1] is not None]
                try:
                    parts = await in_thread(ddpm.draw, [items[i][0] for i in idx],
                                            device=self.device, callers=callers)
                except SamplingStopped:  # every caller of this call left: nobody to answer
                    continue
                for i, part in zip(idx, parts, strict=True):
                    out[i] = part
        return out

    async def verdict(self, images: torch.Tensor) -> dict:
        """The pinned MNIST classifier's class and confidence for each image, and whether its
        background is grey or speckled (``hw4.evaluation.grey_backgrounds``)."""
        with torch.no_grad():
            p = self.mnist_cnn(images).softmax(1)
        return {"class": p.argmax(1).tolist(), "confidence": p.max(1).values.tolist(),
                "grey_background": grey_backgrounds(images).tolist()}

    async def info(self) -> dict:
        m = self.model
        return {**Reloadable.info(self), "batching": self.batching,
                "conditional": m.conditional if m else None,
                "num_classes": m.num_classes if m else None,
                "recent_batch_sizes": list(self.batcher.sizes),
                # what a row costs per sampler step, in network rows (the budget's unit): a row with
                # a label and guidance > 0 also runs its null half; any other row runs once
                "cost_per_row_and_step": {"guided": 2, "unguided": 1}}


__all__ = ["DDPMModel", "VAEModel"]
