"""The Starlette app: XML-RPC in, Webmention out. The one place where faults become HTTP."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TypedDict
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

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
from pingforward.pinglog import PingLine, PingLog, formatter
from pingforward.policy import Policy, Refused
from pingforward.send import Limits, SendError, Status, send
from pingforward.transport import VIA, make_client, make_transport

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
    client: httpx.AsyncClient  # for POST /send
    transport: httpx.AsyncBaseTransport  # the client's own, for forwarding pings
    limiter: HostLimiter


@functools.lru_cache(maxsize=256)
def _fault_body(code: FaultCode, message: str | None) -> bytes:
    return render_fault(Fault(code, message))  # junk repeats itself: most faults are the same few


def _fault(code: FaultCode, message: str | None = None) -> Response:
    # XML-RPC: "Unless there's a lower-level error, always return 200 OK." WordPress, Python's
    # xmlrpc.client and mention-client-php read no fault code from any other status.
    return Response(_fault_body(code, message), media_type=XML)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the pings of one query string go: to `url`, or nowhere, for the reason given.

    A missing or unusable `forward` parameter (`unusable`, fault 0) is answered before the ping's
    arguments are looked at, a refusal by the policy (`refused`, fault 49) after them.
    """

    url: str
    host: str  # the forward URL's host, for the per-host limit and the log ("-": none)
    unusable: Outcome | None = None
    refused: Outcome | None = None


def destination(query: str, own_origin: tuple[str | None, int], policy: Policy) -> Destination:
    """Check a request's query string: its `forward` URL, the policy's URL rules, and that it is not us."""
    try:
        url = parse_forward(query)
    except ForwardError as exc:
        return Destination("", "-", unusable=Outcome(str(exc), FaultCode.GENERIC))
    parts = urlsplit(url)
    host = parts.hostname or "-"
    try:
        # Checked here before anything is sent, and again by the transport on every hop and connection.
        policy.check_url(url)
        if (parts.hostname, parts.port or _PORTS[parts.scheme]) == own_origin:
            raise Refused("the forward URL points at this proxy")
    except Refused as exc:
        return Destination(url, host, refused=Outcome(f"forward refused: {exc.reason}", FaultCode.ACCESS_DENIED))
    return Destination(url, host)


def _own_origin(scheme: str, host: str) -> tuple[str | None, int]:
    """The (host, port) that a request's scheme and Host field name, as `destination` compares them."""
    parts = urlsplit(f"{scheme}://{host}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port or _PORTS.get(scheme, 80)


_PORTS = {"http": 80, "https": 443}


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app; settings come from the environment unless given."""
    if settings is None:
        try:
            settings = Settings.from_environ(os.environ)
        except ConfigError as exc:
            # A clear one-line reason in the platform's log instead of a traceback, and no start.
            raise SystemExit(f"pingforward: bad configuration: {exc}") from None
    _configure_logging(settings.log_format)
    ping_log = PingLog(settings.log_format)
    policy = settings.policy

    # Pings to one site all carry the same query string: check it once, not per ping. Keyed by what
    # the answer depends on: the query string, and the scheme and Host that name this proxy.
    @functools.lru_cache(maxsize=1024)
    def destinations(query: bytes, scheme: str, host: str) -> Destination:
        return destination(query.decode("latin-1"), _own_origin(scheme, host), policy)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        transport = make_transport(settings)
        async with make_client(settings, transport) as client:
            yield {"client": client, "transport": transport, "limiter": HostLimiter(settings.max_per_host)}
        ping_log.flush()

    async def xmlrpc(request: Request) -> Response:
        try:
            return await _xmlrpc(request, settings, destinations, ping_log)
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


async def _xmlrpc(
    request: Request, settings: Settings, destinations: Callable[[bytes, str, str], Destination], ping_log: PingLog
) -> Response:
    headers = request.headers
    if VIA in headers.get("via", ""):
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
    scope = request.scope
    where = destinations(scope["query_string"], scope["scheme"], headers.get("host") or _server(scope))
    outcome = where.unusable
    if outcome is None:
        try:
            ping = ping_from_params(call.params)
        except Fault as fault:
            outcome = Outcome(fault.message, fault.code)
        else:
            outcome = where.refused or await _forward(request, settings, ping, where)
    client = scope.get("client")
    line = PingLine(
        client=client[0] if client else "-",
        forward_host=where.host,
        source=_param(call, 0),
        target=_param(call, 1),
        status=outcome.status,
        fault=outcome.fault,
        ms=(time.perf_counter() - started) * 1000,
        request_id=headers.get("x-request-id"),
        agent=headers.get("user-agent"),
    )
    ping_log.write(line)
    if outcome.fault is None:
        return Response(render_response(outcome.text), media_type=XML)
    return _fault(outcome.fault, outcome.text)


def _param(call: Call, index: int) -> str:
    value = call.params[index] if index < len(call.params) else None
    return value.strip() if isinstance(value, str) else "-"


def _server(scope: Scope) -> str:
    # No Host field (HTTP/1.0): the address the request came in on, as Starlette's `request.url` uses.
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else ""


async def _forward(request: Request, settings: Settings, ping: Ping, where: Destination) -> Outcome:
    limiter: HostLimiter = request.state.limiter
    if not limiter.acquire(where.host):
        return Outcome(f"upstream: too many pings in flight to {where.host}; retry later", FaultCode.UPSTREAM_ERROR)
    try:
        client = request.scope.get("client")
        client_ip = client[0] if client else ""
        return await forward(request.state.transport, ping, where.url, client_ip=client_ip, timeout=settings.timeout)
    finally:
        limiter.release(where.host)


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
