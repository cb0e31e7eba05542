"""``/healthz`` from Serve's own state: each model deployment's status and live replica count, as
the Serve controller records them, and only then whether a live replica has a model loaded.

A replica that was killed, is restarting or cannot be scheduled is not "busy": it is down, and the
controller knows it (its health check fails within ``HEALTH_CHECK_PERIOD_S``). "busy" is kept for
a running replica that is slow to answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

HEALTH_CHECK_PERIOD_S = 1.0  # the model deployments' Serve health check: how soon a dead replica is seen
STATUS_TIMEOUT_S = 2.0  # the controller answers in milliseconds; longer: it is down itself
LOADED_TIMEOUT_S = 0.5  # a running replica slower than this is "busy"
DOWN_STATUSES = ("UNHEALTHY", "DEPLOY_FAILED")


def deployment_down(status: str | None, replica_states: Mapping[str, int] | None) -> str | None:
    """Why a deployment cannot answer (None when it can): unknown to Serve, unhealthy or failed,
    or no replica RUNNING (all starting, restarting, or waiting for resources)."""
    if status is None:
        return "not deployed"
    if status in DOWN_STATUSES:
        return status.lower()
    running = (replica_states or {}).get("RUNNING", 0)
    if running == 0:
        return f"no running replica ({status.lower()})"
    return None


def serve_states(app: str, deployments: Mapping[str, str]) -> dict[str, tuple[str | None, dict]]:
    """{model: (status, {replica state: count})} from the Serve controller (blocking), for
    ``deployments`` = {model: its deployment's name} in application ``app``."""
    from ray import serve

    found = serve.status().applications.get(app)
    out: dict[str, tuple[str | None, dict]] = {}
    for key, name in deployments.items():
        d = found.deployments.get(name) if found is not None else None
        out[key] = (None, {}) if d is None else (
            str(getattr(d.status, "value", d.status)),
            {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()})
    return out


async def model_health(states: Mapping[str, tuple[str | None, dict]],
                       ask_loaded: Mapping[str, Callable[[], Awaitable[bool]]],
                       busy_errors: tuple[type[BaseException], ...] = (),
                       down_errors: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """Per model: "down: <why>" from Serve's state, else what a live replica says (True: a model
    is loaded, False: none is), or "busy" when it does not answer within ``LOADED_TIMEOUT_S``."""
    async def one(name: str) -> Any:
        why = deployment_down(*states[name])
        if why is not None:
            return f"down: {why}"
        try:
            return await asyncio.wait_for(ask_loaded[name](), LOADED_TIMEOUT_S)
        except (TimeoutError, *busy_errors):  # slow, or its queue is full: up, working
            return "busy"
        except down_errors:  # the replica died between Serve's record and this call
            return "down: its replica is unavailable"

    names = list(ask_loaded)
    return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))


def overall(models: Mapping[str, Any]) -> str:
    """"ok" when no model deployment is down and at least one serves a model."""
    down = [k for k, v in models.items() if isinstance(v, str) and v.startswith("down")]
    if down:
        return f"unavailable: {', '.join(down)}"
    loaded = any(v is True or v == "busy" for v in models.values())
    return "ok" if loaded else "no model loaded"
