"""The Starlette app: XML-RPC in, Webmention out. The one place where faults become HTTP."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TypedDict
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pingforward import landing
from pingforward.config import ConfigError, LogFormat, Settings
from pingforward.forward import ForwardError, HostLimiter, Outcome, forward, parse_forward
from pingforward.pingback import (
    LIST_METHODS,
    METHODS,
    PINGBACK_PING,
    Call,
    Fault,
    FaultCode,
    Ping,
    parse_call,
    ping_from_params,
    render_fault,
    render_response,
)
from pingforward.pinglog import PingLine, formatter, log_ping
from pingforward.policy import Refused
from pingforward.send import Limits, SendError, Status, send
from pingforward.transport import VIA, make_client

logger = logging.getLogger(__name__)

XML = "text/xml; charset=utf-8"
# The landing page runs no script and loads nothing; it may only submit its form to itself.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# POST /send answers within one request; PaaS routers cut requests off at 30 s.
SEND_LIMITS = Limits(target_timeout=10.0, deadline=25.0)


# Real pingback bodies are under 1 KiB and arrive at once; a body still dripping in after this
# long is an attack on the worker, not a ping.
MAX_BODY_SECONDS = 5.0


class State(TypedDict):
    client: httpx.AsyncClient
    limiter: HostLimiter


def _fault(code: FaultCode, message: str | None = None) -> Response:
    # XML-RPC: "Unless there's a lower-level error, always return 200 OK." WordPress, Python's
    # xmlrpc.client and mention-client-php read no fault code from any other status.
    return Response(render_fault(Fault(code, message)), media_type=XML)


def _log_ping(request: Request, forward_url: str, call: Call, outcome: Outcome, ms: float) -> None:
    def param(index: int) -> str:
        value = call.params[index] if index < len(call.params) else None
        return value.strip() if isinstance(value, str) else "-"

    line = PingLine(
        client=request.client.host if request.client else "-",
        forward_host=(urlsplit(forward_url).hostname or "-") if forward_url else "-",
        source=param(0),
        target=param(1),
        status=outcome.status,
        fault=outcome.fault,
        ms=ms,
        request_id=request.headers.get("x-request-id"),
        agent=request.headers.get("user-agent"),
    )
    log_ping(logger, line)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app; settings come from the environment unless given."""
    if settings is None:
        try:
            settings = Settings.from_environ(os.environ)
        except ConfigError as exc:
            # A clear one-line reason in the platform's log instead of a traceback, and no start.
            raise SystemExit(f"pingforward: bad configuration: {exc}") from None
    _configure_logging(settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with make_client(settings) as client:
            yield {"client": client, "limiter": HostLimiter(settings.max_per_host)}

    async def xmlrpc(request: Request) -> Response:
        try:
            return await _xmlrpc(request, settings)
        except HTTPException:  # 413 from the body limit: a transport-level answer
            raise
        except Exception:  # a bug of ours; the sender still gets a well-formed fault
            logger.exception("internal error")
            return _fault(FaultCode.INTERNAL_ERROR)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def page(request: Request) -> Response:
        page_url = str(request.url.replace(query=""))
        status, body = landing.render(page_url, request.query_params.get("endpoint"), settings)
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    async def endpoint(request: Request) -> Response:
        # One route per path, so that a 405 names every allowed method.
        return await (xmlrpc(request) if request.method == "POST" else page(request))

    routes = [
        Route("/", endpoint, methods=["GET", "HEAD", "POST"], max_body_size=settings.max_body),
        Route("/webmention", endpoint, methods=["GET", "HEAD", "POST"], max_body_size=settings.max_body),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
    ]
    if settings.send_token:  # an open sender would be an amplifier: no token, no route (404)
        token = settings.send_token

        async def send_route(request: Request) -> Response:
            return await _send(request, token)

        routes.append(Route("/send", send_route, methods=["POST"], max_body_size=settings.max_body))
    app = Starlette(routes=routes, lifespan=lifespan)
    # Never answer with a redirect: webmention.io's GET redirect to `forward` was an open redirect.
    app.router.redirect_slashes = False
    return app


async def _xmlrpc(request: Request, settings: Settings) -> Response:
    if VIA in request.headers.get("via", ""):
        # Our own forward came back to us: a forward URL naming this proxy under another name.
        return PlainTextResponse("Loop Detected", status_code=508)
    try:
        async with asyncio.timeout(min(settings.timeout, MAX_BODY_SECONDS)):
            body = await request.body()
    except TimeoutError:
        return PlainTextResponse("Request Timeout", status_code=408, headers={"Connection": "close"})
    try:
        call = parse_call(body)
        if call.method == LIST_METHODS:
            return Response(render_response(METHODS), media_type=XML)
        if call.method != PINGBACK_PING:
            raise Fault(FaultCode.METHOD_NOT_FOUND, f"server error. requested method {call.method!r} not found")
    except Fault as fault:
        return _fault(fault.code, fault.message)

    started = time.perf_counter()
    forward_url = ""
    try:
        forward_url = parse_forward(request.scope["query_string"].decode("latin-1"))
        ping = ping_from_params(call.params)
        # Checked here before anything is sent, and again by the client on every hop and connection.
        settings.policy.check_url(forward_url)
        if _points_at_us(forward_url, request):
            raise Refused("the forward URL points at this proxy")
    except ForwardError as exc:
        outcome = Outcome(str(exc), FaultCode.GENERIC)
    except Fault as fault:
        outcome = Outcome(fault.message, fault.code)
    except Refused as exc:
        outcome = Outcome(f"forward refused: {exc.reason}", FaultCode.ACCESS_DENIED)
    else:
        outcome = await _forward(request, settings, ping, forward_url)
    _log_ping(request, forward_url, call, outcome, (time.perf_counter() - started) * 1000)
    if outcome.fault is None:
        return Response(render_response(outcome.text), media_type=XML)
    return _fault(outcome.fault, outcome.text)


async def _forward(request: Request, settings: Settings, ping: Ping, forward_url: str) -> Outcome:
    forward_host = urlsplit(forward_url).hostname or ""
    limiter: HostLimiter = request.state.limiter
    if not limiter.acquire(forward_host):
        return Outcome(f"upstream: too many pings in flight to {forward_host}; retry later", FaultCode.UPSTREAM_ERROR)
    try:
        client_ip = request.client.host if request.client else ""
        return await forward(request.state.client, ping, forward_url, client_ip=client_ip, timeout=settings.timeout)
    finally:
        limiter.release(forward_host)


def _points_at_us(url: str, request: Request) -> bool:
    target = urlsplit(url)
    return (target.hostname, target.port or _PORTS[target.scheme]) == (
        request.url.hostname,
        request.url.port or _PORTS.get(request.url.scheme, 80),
    )


_PORTS = {"http": 80, "https": 443}


def _authorized(request: Request, token: str) -> bool:
    # RFC 6750 §2.1: "Authorization: Bearer <token>"; the scheme name is case-insensitive (RFC 9110 §11.1).
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(given, token.encode())


async def _send(request: Request, token: str) -> Response:
    if not _authorized(request, token):
        return JSONResponse({"error": "unauthorized"}, 401, headers={"WWW-Authenticate": 'Bearer realm="pingforward"'})
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    sources = form.get("source", [])
    if len(sources) != 1:
        return JSONResponse({"error": "send exactly one form field 'source'"}, 400)
    flags = {name for name, values in form.items() if values[0].lower() in ("1", "true", "on", "yes")}
    try:
        report = await send(
            request.state.client,
            sources[0].strip(),
            all_links="all_links" in flags,
            dry_run="dry_run" in flags,
            limits=SEND_LIMITS,
        )
    except SendError as exc:
        body = {"source": sources[0], "status": exc.status, "error": exc.detail}
        return JSONResponse(body, 502 if exc.status == Status.ERROR else 422)
    return JSONResponse({"source": report.source, "ok": report.ok, "results": [asdict(r) for r in report.results]})


def _configure_logging(log_format: LogFormat) -> None:
    # uvicorn configures only its own loggers; give ours a stdout handler once.
    package = logging.getLogger("pingforward")
    if not package.handlers:
        package.addHandler(logging.StreamHandler(sys.stdout))
        package.setLevel(logging.INFO)
    for handler in package.handlers:
        handler.setFormatter(formatter(log_format))
    # Logging HOWTO, "Optimization": neither format uses the thread or process, so do not
    # collect them for every record (bench/README.md).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
