"""How the Serve app's errors become HTTP answers: a refusal by the library or a replica (4xx
with its message), a full queue or a model down (503 with Retry-After); never a 500."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

from hw4.errors import HW4Error
from serve.replica import TooCostly, Unavailable

RETRY_AFTER_S = 5  # what a 503 asks a client to wait: a replica restarts in seconds


async def refused(_request: Request, err: HW4Error) -> JSONResponse:
    """A request the library or a model replica refused, as one status and its message: 503 (with
    Retry-After) when no model is loaded, 422 over a cost budget, else 400. A replica's error
    arrives as Ray re-raises it (an instance of both RayTaskError and the error's own class,
    its message the remote traceback): its ``cause`` is the error itself."""
    cause = getattr(err, "cause", None)
    err = cause if isinstance(cause, HW4Error) else err
    if isinstance(err, Unavailable):
        return JSONResponse({"detail": str(err)}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return JSONResponse({"detail": str(err)}, 422 if isinstance(err, TooCostly) else 400)


async def overloaded(_request: Request, err: BackPressureError) -> JSONResponse:
    """A model replica's queue is full: say so at once instead of queueing without bound."""
    return JSONResponse({"detail": f"the service is busy, try again shortly ({err})"}, 503,
                        headers={"Retry-After": "1"})


# a model deployment that failed to deploy, or a replica that died under the request (killed,
# its node lost): the service is down for the moment, not broken, so 503, never a 500
DOWN = (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError, ActorUnavailableError)


async def model_down(_request: Request, err: Exception) -> JSONResponse:
    """A model that is down for the moment: 503 with Retry-After, naming the error's type."""
    return JSONResponse({"detail": f"a model is unavailable, try again shortly "
                                   f"({type(err).__name__})"}, 503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def install(api: FastAPI) -> None:
    """Register the handlers on the ingress's FastAPI app."""
    api.add_exception_handler(HW4Error, refused)
    api.add_exception_handler(BackPressureError, overloaded)
    for error in DOWN:
        api.add_exception_handler(error, model_down)
