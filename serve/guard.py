"""What every request passes before a route sees it, as one ASGI middleware: the Host header
(against DNS rebinding), the bearer token (fail closed), the body-size limit (counted while the
body is read, chunked or not), and the security headers of every answer.

The token is resolved once per replica process by ``configure`` (the ``Api`` deployment's
constructor) and kept here, not on the FastAPI app: Ray treats changing the app after
``@serve.ingress`` as a bug (ray-project/ray#52775), and a guard that was never configured
answers 503 to everything rather than serving without auth."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass

from fastapi import HTTPException

from hw4.errors import HW4Error

TOKEN_ENV = "HW4_SERVE_TOKEN"
MAX_BODY_BYTES = 4 * 1024 * 1024
# every request's bound, upload included, however the app was started (`serve run serve.app:app`
# sets no http_options); serve/config.yaml's http_options.request_timeout_s says the same
REQUEST_TIMEOUT_S = 300.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# Ray's proxy reads these from the client's request before any code of ours runs: a positive
# number replaces http_options.request_timeout_s, zero or less switches the timeout off, and "?1"
# stops the proxy cancelling a request whose client left. Refused here, so the work a request
# asks for never starts under bounds the client chose; a front proxy should drop them too
# (README, "What is promised").
CLIENT_CONTROL_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")
BODYLESS_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")
PAGE_PREFIX = "/static/"  # the page (/ and its files) asks for the token itself
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass(frozen=True)
class GuardConfig:
    token: str | None  # None: no token (only when none was asked for)
    hosts: tuple[str, ...]  # Host header names served, without port


_config: GuardConfig | None = None  # this replica's, set once by ``configure``


def resolve_token(token_env: str, required: bool) -> str | None:
    """The token in ``token_env``. A variable that is set but blank is an error, and so is a
    missing one when ``required`` (the app was told which variable holds its token): auth never
    turns itself off because a secret did not arrive."""
    value = os.environ.get(token_env)
    if value is None:
        if required:
            raise HW4Error(f"the Serve app wants its bearer token in ${token_env}, which is not set "
                           "in the replica's environment (pass it in the runtime_env's env_vars)")
        return None
    if not value.strip():
        raise HW4Error(f"${token_env} is set but empty: set a real token, or unset it to serve "
                       "without one on loopback")
    return value.strip()


def configure(token_env: str = TOKEN_ENV, required: bool = False,
              hosts: tuple[str, ...] = LOOPBACK_HOSTS) -> GuardConfig:
    global _config
    _config = GuardConfig(resolve_token(token_env, required), tuple(h.lower() for h in hosts))
    return _config


class BodyTooLarge(HTTPException):
    """A body that grew past ``MAX_BODY_BYTES`` while it was read (chunked, no Content-Length).
    An ``HTTPException``, because FastAPI turns any other error raised while it reads a body
    into 400 "error parsing the body"; this one it re-raises, and the app answers 413."""

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes")


def _host_name(value: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '[::1]'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware: host, token and body-size checks before the app; headers after."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refuse(scope, headers)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if refusal is not None:
            return await self.answer(send_secured, *refusal)
        received, started = 0, False

        async def receive_bounded():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise BodyTooLarge
            return message

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_secured(message)

        try:
            # cancelling the route cancels its model call: Serve cancels the replica's task
            await asyncio.wait_for(self.app(scope, receive_bounded, send_tracked), REQUEST_TIMEOUT_S)
        except BodyTooLarge:
            if not started:
                await self.answer(send_secured, 413, f"request body over {MAX_BODY_BYTES} bytes")
        except TimeoutError:
            if not started:  # a stream already under way just ends
                await self.answer(send_secured, 408, f"the request took over {REQUEST_TIMEOUT_S:.0f} s "
                                                     "and was stopped")

    @staticmethod
    def refuse(scope, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        cfg = _config
        if cfg is None:
            return 503, "the API's guard is not configured (the Api replica did not start)", {}
        if _host_name(headers.get("host", "")) not in cfg.hosts:
            return 421, f"this server does not answer for host {headers.get('host', '')!r}", {}
        path = scope["path"]
        prefix = scope.get("root_path") or ""
        if prefix and path.startswith(prefix):
            path = path[len(prefix):] or "/"
        public = scope["method"] == "GET" and (path == "/" or path.startswith(PAGE_PREFIX))
        if cfg.token is not None and not public:
            given = headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
                return 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
        for name in CLIENT_CONTROL_HEADERS:
            if name in headers:
                return 400, (f"the {name} header is not accepted: the server's request timeout and "
                             "its cancellation of abandoned requests are not the client's to change"), {}
        size = headers.get("content-length")
        if scope["method"] in BODYLESS_METHODS and (size not in (None, "0")
                                                   or "transfer-encoding" in headers):
            return 400, f"{scope['method']} requests take no body", {}
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return 413, f"request body over {MAX_BODY_BYTES} bytes", {}
        return None

    @staticmethod
    async def answer(send, status: int, detail: str, extra: dict | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   *[(k.encode(), v.encode()) for k, v in (extra or {}).items()]]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
