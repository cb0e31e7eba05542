"""What both model replicas share: loading a checkpoint from the deployment's ``user_config``
(reloading in place when it changes; a failed load keeps the previous model), the errors they
return as values rather than raise across a Ray handle, and the evaluation report that goes with
a served VAE."""

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from hw4.errors import HW4Error
from hw4.registry import file_digest, read_best, registry_path
from hw4.trained import training_history

# what a damaged checkpoint or registry entry raises on load: reported, the old model kept
LOAD_ERRORS = (HW4Error, OSError, KeyError, ValueError, TypeError, RuntimeError)


class Unavailable(HW4Error):
    """No model is loaded (nothing registered, or its checkpoint failed to load): HTTP 503."""


class TooCostly(HW4Error):
    """A request over its route's cost budget, refused before any work: HTTP 422."""


def pin_checkpoint(config: dict, family: str) -> dict:
    """``config`` (a model deployment's ``user_config``) with the checkpoint pinned by content:
    its path and the SHA-256 of its bytes *now*. A null ``checkpoint`` becomes the registry's best
    (and where that copy was registered from). Called once where the app is built
    (``build_app``: ``serve run``, ``serve deploy``, the demo), so every replica of the
    deployment, including one started later by autoscaling or after a crash, loads those bytes or
    nothing: a file rewritten under the same path since (a rerun with ``--overwrite``) is refused.
    With nothing (readable) registered, the checkpoint stays null: the deployment serves nothing
    until a deliberate redeploy, rather than each replica picking up whatever was registered
    when it happened to start."""
    storage = config.get("storage_path") or "results"
    if config.get("checkpoint"):
        path = Path(config["checkpoint"])
    elif registry_path(storage, family).is_file():
        try:
            record = read_best(storage, family)
        except HW4Error:
            return {**config, "checkpoint": None}
        config = {**config, "checkpoint": record["checkpoint"],
                  "registered_from": record.get("registered_from")}
        path = Path(record["checkpoint"])
    else:
        return {**config, "checkpoint": None}
    try:
        return {**config, "sha256": file_digest(path)}
    except OSError:  # the replica says why it serves nothing
        return {**config, "sha256": None}


def replica_name() -> str:
    """Serve's id of this replica ("local" outside one, as in unit tests)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 - not in a replica: any of Ray's errors for that
        return "local"


def run_name(origin: Path | None, storage: str) -> str | None:
    """The training run a checkpoint came from, as the user named it: ``<run>`` for
    ``<storage>/<run>/artifacts/checkpoint.pt`` (``<sweep>-runs/<trial>`` for a sweep's trial);
    a file elsewhere by its own name. Never an absolute path."""
    if origin is None:
        return None
    folder = origin.parent.parent if origin.parent.name == "artifacts" else origin.parent
    try:
        return str(folder.resolve().relative_to(Path(storage).resolve())) or origin.name
    except ValueError:
        return origin.name


def public_config(config: dict | None) -> dict | None:
    """A checkpoint's training config without where it was stored: no value that is an
    absolute path (the storage path, a data folder) leaves the replica."""
    if config is None:
        return None
    return {k: v for k, v in config.items() if not (isinstance(v, str) and os.path.isabs(v))}


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
        """Load the checkpoint pinned in ``config`` (``pin_checkpoint``: a path and its SHA-256),
        only if its bytes still have that hash. A replica that already serves a model keeps it
        when the new one fails to load or is refused (a ``user_config`` change). A new replica
        whose file fails to load fails to start (``serve status`` shows the error); one whose
        file is missing, unpinned or changed starts empty, answers 503 and says why in /info.
        With nothing pinned (nothing was registered when the app was built) it serves nothing."""
        storage, path, pinned = config.get("storage_path") or "results", config.get("checkpoint"), \
            config.get("sha256")
        self.storage = storage
        if not path:
            return self._refuse(f"no {self.family} checkpoint was registered under the storage path "
                                "when the app was built; train one, then redeploy the app (serve "
                                "deploy with a new revision, or serve run again)")
        path = Path(path)
        if not pinned:
            return self._refuse(f"the {self.family} checkpoint {path.name} has no pinned sha256 in the "
                                "deployment's user_config (or could not be read when the app was "
                                "built); give both checkpoint and sha256")
        try:
            if file_digest(path) != pinned:
                return self._refuse(self._changed(path, pinned))
            model = self.load(path)
            if file_digest(path) != pinned:  # rewritten while it was being loaded
                return self._refuse(self._changed(path, pinned))
        except FileNotFoundError:
            return self._refuse(f"the pinned {self.family} checkpoint {path.name} is gone")
        except LOAD_ERRORS as err:  # a damaged file must not fail a replica that serves a model
            self.load_error = self.redact(str(err))
            if self.model is None:
                raise
            print(f"[hw4] {self.family}: keeping {self.path}; the new checkpoint failed: {err}",
                  flush=True)
            return
        origin = Path(config.get("registered_from") or path)
        self.history = training_history(origin)  # the run's metrics.json sits beside the origin
        self.model, self.path, self.origin, self.sha256 = model, path, origin, pinned
        self.load_error, self.loaded_at = None, time.time()

    def _changed(self, path: Path, pinned: str) -> str:
        return (f"refused {path.name}: its bytes no longer have the SHA-256 pinned when the app was "
                f"built ({pinned[:12]}...); the file was rewritten since (a rerun with --overwrite?). "
                "Redeploy the app to serve the new file")

    def _refuse(self, why: str) -> None:
        """Serve nothing new: say why in /info (a model already loaded keeps serving)."""
        self.load_error = why
        if self.model is not None:
            print(f"[hw4] {self.family}: keeping {self.path}; {why}", flush=True)

    def redact(self, text: str) -> str:
        """``text`` with the storage's absolute path replaced by ``<storage>``."""
        return text.replace(str(Path(self.storage).resolve()), "<storage>")

    def require(self) -> Any:
        if self.model is None:
            raise Unavailable(f"no {self.family} model is loaded: {self.load_error}")
        return self.model

    async def loaded(self) -> bool:
        return self.model is not None

    def info(self) -> dict:
        """What is served, named by family, content hash and training run: never an absolute
        path or a process id."""
        m = self.model
        return {"loaded": m is not None,
                "checkpoint": f"{self.family}-{self.sha256[:12]}" if m is not None else None,
                "sha256": self.sha256 if m is not None else None,
                "run": run_name(self.origin, self.storage), "replica": replica_name(),
                "load_error": self.load_error, "loaded_at": self.loaded_at,
                "metrics": m.metrics if m else None, "config": public_config(m.config if m else None),
                "history": self.history}


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
