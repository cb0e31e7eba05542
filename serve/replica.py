"""What both model replicas share: loading a checkpoint from the deployment's ``user_config``
(reloading in place when it changes; a failed load keeps the previous model), the errors they
return as values rather than raise across a Ray handle, and the evaluation report that goes with
a served VAE."""

import asyncio
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from hw4.errors import HW4Error
from hw4.registry import file_digest, read_best, registry_path
from hw4.trained import resolve_checkpoint, training_history

# what a damaged checkpoint or registry entry raises on load: reported, the old model kept
LOAD_ERRORS = (HW4Error, OSError, KeyError, ValueError, TypeError, RuntimeError)


class Unavailable(HW4Error):
    """No model is loaded (nothing registered, or its checkpoint failed to load): HTTP 503."""


class TooCostly(HW4Error):
    """A request over its route's cost budget, refused before any work: HTTP 422."""


def pin_checkpoint(config: dict, family: str) -> dict:
    """``config`` (a model deployment's ``user_config``) with a null ``checkpoint`` replaced by
    the registry's best *now*, and where that copy was registered from. Called once where the app
    is built (``build_app``: ``serve run``, ``serve deploy``, the demo), so every replica of the
    deployment, including one started later by autoscaling or after a crash, loads the same file
    until a deliberate redeploy or reconfigure; a replica that resolved the registry itself would
    pick up whatever was registered since. Left as it is when nothing (readable) is registered:
    the replica then reports why."""
    storage = config.get("storage_path") or "results"
    if config.get("checkpoint") or not registry_path(storage, family).is_file():
        return config
    try:
        record = read_best(storage, family)
    except HW4Error:
        return config
    return {**config, "checkpoint": record["checkpoint"],
            "registered_from": record.get("registered_from")}


def replica_name() -> str:
    """Serve's id of this replica (its pid outside a replica, as in unit tests)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 - not in a replica: any of Ray's errors for that
        return f"pid-{os.getpid()}"


class Reloadable:
    """A model that (re)loads from its ``user_config``; a failed load keeps the previous model."""

    family = ""  # the registry entry it serves: "ddpm" or "vae"

    def _setup(self) -> None:
        self.model: Any = None
        self.path: Path | None = None
        self.origin: Path | None = None  # the run artifact a registered copy was made from
        self.history: list = []
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.sha256: str | None = None
        self.storage = "results"

    def load(self, path: Path) -> Any:
        raise NotImplementedError

    def reconfigure(self, config: dict) -> None:
        """Load the configured checkpoint (``pin_checkpoint`` resolves a null one once, where the
        app is built; a hand-written null one makes this replica read the registry itself). A
        replica that already serves a model keeps it when the new one fails to load (a
        ``user_config`` change); a new replica fails to start and ``serve status`` shows the
        error (after a code redeploy the old replicas are gone by then). With nothing registered
        and no explicit checkpoint, the replica starts empty and answers 503."""
        storage, explicit = config.get("storage_path") or "results", config.get("checkpoint")
        self.storage = storage
        if not explicit and not registry_path(storage, self.family).is_file():
            self.load_error = (f"no registered {self.family} checkpoint under {storage}; train one "
                               "or set the checkpoint in the deployment's user_config")
            return
        try:
            record = None if explicit else read_best(storage, self.family)
            path = resolve_checkpoint(storage, self.family, explicit or record["checkpoint"])
            origin = (record or config).get("registered_from") or path
            model = self.load(path)
            digest = file_digest(path)
        except LOAD_ERRORS as err:  # a damaged file or registry entry must not fail the replica
            self.load_error = str(err)
            if self.model is None:
                raise
            print(f"[hw4] {self.family}: keeping {self.path}; the new checkpoint failed: {err}",
                  flush=True)
            return
        origin = Path(origin)
        self.history = training_history(origin)  # the run's metrics.json sits beside the origin
        self.model, self.path, self.origin, self.sha256 = model, path, origin, digest
        self.load_error, self.loaded_at = None, time.time()

    def require(self) -> Any:
        if self.model is None:
            raise Unavailable(f"no {self.family} model is loaded: {self.load_error}")
        return self.model

    async def loaded(self) -> bool:
        return self.model is not None

    def info(self) -> dict:
        m = self.model
        return {"loaded": m is not None, "checkpoint": str(self.path) if self.path else None,
                "sha256": self.sha256, "replica": replica_name(),
                "origin": str(self.origin) if self.origin else None,
                "load_error": self.load_error, "loaded_at": self.loaded_at,
                "metrics": m.metrics if m else None, "config": m.config if m else None,
                "history": self.history, "pid": os.getpid()}


def evaluation_summary(storage: str, *checkpoints: Path | None) -> dict | None:
    """Robustness curves of the newest ``jobs/evaluate.py`` report on this VAE checkpoint (the
    served file or the run artifact it was registered from)."""
    served = {c.resolve() for c in checkpoints if c is not None}
    if not served:
        return None
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # deleted meanwhile
            return 0.0

    for path in sorted(Path(storage).glob("eval/*/report.json"), key=mtime, reverse=True):
        try:
            vae = json.loads(path.read_text()).get("vae") or {}
            if vae.get("checkpoint") and Path(vae["checkpoint"]).resolve() in served:
                # where it came from in words: the evaluation run's name and date, not a path
                date = time.strftime("%Y-%m-%d", time.gmtime(mtime(path)))
                return {"report": path.parent.name, "report_date": date,
                        "robustness": vae["robustness"],
                        "clean_accuracy": vae.get("clean_accuracy"),
                        "most_robust": vae.get("most_robust")}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
    return None


class StopFlag:
    """What a sampler polls between network calls (``is_set``): set by hand, or by itself once
    every caller sharing the run has left (``callers``: one event per request in a batch, set
    when that request is cancelled)."""

    def __init__(self, callers: list[threading.Event] | None = None) -> None:
        self._set = threading.Event()
        self.callers = callers or []

    def set(self) -> None:
        self._set.set()

    def is_set(self) -> bool:
        return self._set.is_set() or (bool(self.callers) and all(c.is_set() for c in self.callers))


async def in_thread(fn: Callable[..., Any], *args: Any, callers: list[threading.Event] | None = None,
                    **kwargs: Any) -> Any:
    """``fn(*args, stop=flag, **kwargs)`` in a worker thread. The flag is set when every one of
    ``callers`` is (the requests of a batch all left), or when the awaiting task is cancelled:
    then the thread is awaited before the cancellation goes on, so a lock held around this call
    is kept until the work has really stopped."""
    stop = StopFlag(callers)
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, stop=stop, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.gather(work, return_exceptions=True)
        raise


async def steps_in_thread(chain: Iterator[Any]) -> AsyncIterator[Any]:
    """The items of a blocking iterator, each made in a worker thread. Cancelled, it waits for the
    item in progress (no further one starts) before the cancellation goes on; it always closes
    ``chain``."""
    end = object()
    try:
        while True:
            step = asyncio.ensure_future(asyncio.to_thread(next, chain, end))
            try:
                item = await asyncio.shield(step)
            except asyncio.CancelledError:
                await step
                raise
            if item is end:
                return
            yield item
    finally:
        chain.close()


def guarded(method):
    """Return ``HW4Error``s as values: exceptions crossing a Ray handle carry tracebacks."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except HW4Error as err:
            return err
    return wrapper
