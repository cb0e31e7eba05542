"""Ray Serve app: DDPM sampling, VAE sampling/reconstruction/traversal/classification and
adversarial evaluation over HTTP, backed by the best checkpoints in the registry.

    serve run serve.app:app                     # 127.0.0.1:8000, checkpoints from ./results
    serve run serve.app:build_app storage_path=/data/results ddpm_checkpoint=/x/checkpoint.pt
    serve deploy serve/local.yaml               # a local head (ray start --head in the repo root)
    serve deploy serve/config.yaml              # a cluster: replicas, autoscaling, CPUs/GPUs, token

Three deployments: ``Api`` (serve/routes.py, the FastAPI ingress: validation, limits, auth,
PNG/JSON encoding) calls ``DDPMModel`` (requests that arrive while a model call runs share the
next one: serve/batcher.py) and ``VAEModel`` (both in serve/deployments.py); request bodies and limits are
in serve/schemas.py. This file builds the application. Each model deployment takes
``{"storage_path", "checkpoint"}`` as its Serve ``user_config``; a null checkpoint is resolved to
the registry's best here, once per build, so all replicas serve one file (``/info`` names its
SHA-256 and the replica that answered). Changing the ``user_config`` reloads the model in place;
a checkpoint that fails to load is reported in ``/info`` and the previous model keeps
serving. With HW4_SERVE_TOKEN set (or the
variable named by ``token_env``), every route wants ``Authorization: Bearer <token>``.
"""

import os
from pathlib import Path

from ray import serve

from serve.deployments import DDPMModel, VAEModel
from serve.guard import LOOPBACK_HOSTS, TOKEN_ENV
from serve.replica import pin_checkpoint
from serve.routes import Api


def build_app(args: dict[str, str]) -> serve.Application:
    """``serve run serve.app:build_app storage_path=... vae_checkpoint=... ddpm_checkpoint=...
    token_env=... hosts=a.example,b.example max_queued_requests=N``: the storage path is resolved
    here, where ``serve run`` was started. ``token_env`` names the variable holding the bearer
    token and makes it required; without it a set HW4_SERVE_TOKEN is used. ``hosts``: the Host
    names served (default: loopback names only). ``max_queued_requests``: per model replica,
    beyond its ongoing requests; more get 503 at once."""
    storage = str(Path(args.get("storage_path") or os.environ.get("HW4_STORAGE_PATH", "results"))
                  .resolve())
    queue = {"max_queued_requests": int(args["max_queued_requests"])} \
        if "max_queued_requests" in args else {}
    # the registry's best is resolved here, once per build: every replica serves that file
    ddpm = DDPMModel.options(user_config=pin_checkpoint(
        {"storage_path": storage, "checkpoint": args.get("ddpm_checkpoint"),
         "batching": args.get("batching", "true") != "false"}, "ddpm"), **queue)
    vae = VAEModel.options(user_config=pin_checkpoint(
        {"storage_path": storage, "checkpoint": args.get("vae_checkpoint")}, "vae"), **queue)
    hosts = tuple(h for h in args.get("hosts", "").split(",") if h) or LOOPBACK_HOSTS
    # naming the token's variable makes the token required: a missing one stops the start
    return Api.bind(ddpm.bind(), vae.bind(), args.get("token_env", TOKEN_ENV),
                    "token_env" in args, hosts)


app = build_app({})
