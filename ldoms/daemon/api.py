"""ldmd's local API for ldm: FastAPI on the home's Unix socket.

    GET  /v1/view   the HostView (ldoms.model.codec.to_json): machine, clock, guest utilisation
    GET  /v1/host   name, platform, listen address, pid of the serving ldmd
    POST /v1/ops    a Request -> {"messages": [...]}, or an ErrorBody with a 4xx/5xx status
    POST /v1/migrate  a MigrateBody -> NDJSON lines while the migration runs: {"type": "progress",
                    "percent": N, "phase", "round", "bytes_sent", "remaining_bytes", "rate_bytes_s",
                    "expected_downtime_s", "throttle"} ..., then one {"type": "result", "ok", "dry_run",
                    "exit_code", "lines", "problems", "warnings", "record"} (each problem: code, message,
                    side, resource, observed, required, remedy, severity).  A refusal before it starts is
                    an ErrorBody.  A client that goes away (ldm killed) before the result cancels the
                    migration.

Every error answer is an `ErrorBody` {code, message, exit_code}: ldm prints the message and exits with the
code.  Garbage never reaches the handlers as an exception: bodies are capped (`MAX_BODY`), unknown fields
and wrong types are a 422, malformed HTTP is answered by the server, and a bug in an operation is a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ldoms import errors
from ldoms.daemon.host import Host, InternalError
from ldoms.model.codec import to_json
from ldoms.ops.base import Request as OpRequest

log = logging.getLogger("ldmd.api")

MAX_BODY = 4 * 1024 * 1024  # an add-domain -i XML file is kilobytes; anything near this is garbage
BODY_TIMEOUT_S = 30.0  # between two pieces of a request body


class OpBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verb: str = Field(min_length=1, max_length=64)
    flags: dict[str, bool | str] = Field(default_factory=dict)
    props: list[tuple[str, str]] = Field(default_factory=list)
    operands: list[str] = Field(default_factory=list)


class MigrateBody(BaseModel):
    """`ldm migrate-domain`: the verb's words as parsed by ldm, plus what ldm adds (the password it read, the
    invoking user for a target without `user@`)."""

    model_config = ConfigDict(extra="forbid")

    flags: dict[str, bool | str] = Field(default_factory=dict)
    props: list[tuple[str, str]] = Field(default_factory=list, max_length=16)  # the live-migration knobs
    operands: list[str] = Field(min_length=2, max_length=2)
    password: str | None = Field(default=None, max_length=4096, repr=False)
    user: str | None = Field(default=None, max_length=64)


class OpAnswer(BaseModel):
    messages: list[str]


class ErrorBody(BaseModel):
    code: str
    message: str
    exit_code: int


class HostInfo(BaseModel):
    name: str
    platform: str
    listen: str
    pid: int


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "malformed request"),
        (404, "object not found"),
        (409, "refused in the current state; nothing changed"),
        (408, "request body not received in time"),
        (413, "body too large"),
        (422, "request does not match the schema"),
        (500, "failed while executing, or a bug; nothing was committed"),
    )
}


def http_status(err: errors.LdmError) -> int:
    if isinstance(err, errors.UsageError | errors.PlatformError):
        return 400
    if isinstance(err, errors.NotFoundError):
        return 404
    if isinstance(err, errors.AuthError):
        return 403
    if isinstance(err, errors.OpPrereqError):
        return 409
    if isinstance(err, errors.DaemonUnavailable):
        return 503
    return 500


def error_response(status: int, code: str, message: str, exit_code: int) -> JSONResponse:
    body = ErrorBody(code=code, message=message, exit_code=exit_code)
    return JSONResponse(status_code=status, content=body.model_dump())


class BodyLimit:
    """Reads the whole body first, refusing it with a 413 beyond `limit` bytes (408 if it stalls), then
    replays it to the application."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, "too-large", f"Request body exceeds {self.limit} bytes", 2)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                # A client that announces a body and never sends it must not hold a connection forever.
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                timeout = error_response(
                    408, "timeout", f"Request body not received within {self.timeout_s:g} s", 2
                )
                await timeout(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(host: Host) -> FastAPI:
    app = FastAPI(
        title="ldmd local API",
        version="1",
        description="The Logical Domains Manager daemon's API for ldm, on the host's Unix socket.",
    )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        )
        return error_response(422, "usage", errors.one_line(f"Malformed request: {problems}"), 2)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "http"
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}", 2)

    @app.get("/v1/view", responses=_ERROR_RESPONSES)
    def get_view() -> JSONResponse:
        try:
            return JSONResponse(content=to_json(host.view()))
        except Exception as e:
            log.exception("building the view failed")
            return error_response(500, "internal", f"Internal error building the view: {e}", 1)

    @app.get("/v1/host", response_model=HostInfo, responses=_ERROR_RESPONSES)
    def get_host() -> HostInfo:
        m = host.machine
        return HostInfo(name=m.host_name, platform=m.platform.name, listen=host.listen, pid=os.getpid())

    @app.post("/v1/ops", response_model=OpAnswer, responses=_ERROR_RESPONSES)
    def post_op(body: OpBody) -> Any:
        req = OpRequest(
            verb=body.verb, flags=dict(body.flags), props=tuple(body.props), operands=tuple(body.operands)
        )
        try:
            messages = host.apply(req)
        except errors.LdmError as e:
            if not isinstance(e, InternalError):
                log.info("%s refused: %s", body.verb, e.message)
            return error_response(http_status(e), e.code, e.message, e.exit_code)
        except Exception as e:  # apply already turns bugs into InternalError; this is the last guard
            log.exception("unexpected failure serving %s", body.verb)
            return error_response(
                500, "internal", f"Internal error in {body.verb}: {type(e).__name__}: {e}", 1
            )
        return OpAnswer(messages=list(messages))

    @app.post(
        "/v1/migrate",
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "progress, then the result"}}
        | _ERROR_RESPONSES,
    )
    def post_migrate(body: MigrateBody) -> Any:
        from ldoms.daemon.migrate_api import start_migration, stream

        flags = {k: v for k, v in body.flags.items() if k != "-p"}  # the password came instead of the file
        req = OpRequest(
            verb="migrate-domain", flags=flags, props=tuple(body.props), operands=tuple(body.operands)
        )
        try:
            run = start_migration(host, req, password=body.password, user=body.user)
        except errors.LdmError as e:
            log.info("migrate-domain refused: %s", e.message)
            return error_response(http_status(e), e.code, e.message, e.exit_code)
        return StreamingResponse(stream(host, run), media_type="application/x-ndjson")

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app
