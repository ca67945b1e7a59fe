"""The Starlette app: XML-RPC in, Webmention out. The one place where faults become HTTP."""

from __future__ import annotations

import functools
import gc
import hmac
import ipaddress
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final, TypedDict
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from pingforward.config import LogFormat, Settings
from pingforward.errors import ConfigError, ForwardError, Refused
from pingforward.forward import (
    HOW_TO_WRITE,
    MAX_FORWARD_URL,
    Outcome,
    forward,
    parse_forward,
    written_unencoded,
)
from pingforward.net.policy import SCHEME_PORTS, Policy
from pingforward.net.transport import VIA, make_client, make_transport
from pingforward.pingback import (
    LIST_METHODS,
    MAX_FAULT_STRING,
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
from pingforward.pinglog import PingLine, PingLog, formatter, json_for_uvicorn
from pingforward.watchdog import Watchdog

logger = logging.getLogger(__name__)

XML = "text/xml; charset=utf-8"
# The landing page loads nothing and runs only its own inline script (allowed by hash, in `page`);
# it may only submit its form to itself.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# Real pingback bodies are under 1 KiB and arrive at once; a body still dripping in after this
# long is an attack on the worker, not a ping.
MAX_BODY_SECONDS = 5.0


class State(TypedDict):
    client: httpx.AsyncClient  # for POST /send
    transport: httpx.AsyncBaseTransport  # the client's own, for forwarding pings


# An answer of the pingback endpoint: HTTP status, header fields (besides Content-Length), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

XML_FIELDS: Final = [(b"content-type", XML.encode())]
CLOSE_FIELDS: Final = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
TOO_LARGE: Final[Answer] = (413, CLOSE_FIELDS, b"Content Too Large")
TOO_SLOW: Final[Answer] = (408, CLOSE_FIELDS, b"Request Timeout")
LOOP: Final[Answer] = (508, [(b"content-type", b"text/plain; charset=utf-8")], b"Loop Detected")
VIA_BYTES: Final = VIA.encode()
LIST_METHODS_BYTES: Final = LIST_METHODS.encode()


def _success(text: str | tuple[str, ...]) -> Answer:
    return 200, XML_FIELDS, render_response(text)


def _fault(code: FaultCode, message: str | None = None) -> Answer:
    # XML-RPC: "Unless there's a lower-level error, always return 200 OK." WordPress, Python's
    # xmlrpc.client and mention-client-php read no fault code from any other status.
    if message is not None and len(message) > MAX_FAULT_STRING:
        return 200, XML_FIELDS, render_fault(Fault(code, message))
    return _short_fault(code, message)


@functools.lru_cache(maxsize=256)
def _short_fault(code: FaultCode, message: str | None) -> Answer:
    # Junk repeats itself: most faults are the same few, so each is rendered once.
    return 200, XML_FIELDS, render_fault(Fault(code, message))


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the pings of one query string go: to `url`, or nowhere, for the reason given.

    A missing or unusable `forward` parameter (`unusable`, fault 0) is answered before the ping's
    arguments are looked at, a refusal by the policy (`refused`, fault 49) after them.
    """

    url: str
    host: str  # the forward URL's host, for the log ("-": none)
    unusable: Outcome | None = None
    refused: Outcome | None = None
    hint: str | None = None  # for the log: how to write a forward URL that works but is written oddly


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
        if (parts.hostname, parts.port or SCHEME_PORTS[parts.scheme]) == own_origin:
            raise Refused("the forward URL points at this proxy")
    except Refused as exc:
        return Destination(url, host, refused=Outcome(f"forward refused: {exc.reason}", FaultCode.ACCESS_DENIED))
    return Destination(url, host, hint=HOW_TO_WRITE if written_unencoded(query) else None)


def _own_origin(scheme: str, host: str) -> tuple[str | None, int]:
    """The (host, port) that a request's scheme and Host field name, as `destination` compares them."""
    try:
        parts = urlsplit(f"{scheme}://{host}")
        return parts.hostname, parts.port or SCHEME_PORTS.get(scheme, 80)
    except ValueError:  # a Host field no URL could name, such as "[": then no forward URL names us either
        return None, 0


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
        transport = make_transport(settings)
        # Everything loaded so far lives as long as the worker: keep the cyclic garbage collector
        # from walking it again and again while a burst keeps thousands of young objects alive
        # (gc.freeze; a burst of 1,000 slow pings ends about 0.06 s sooner, bench/README.md).
        # No gc.collect() first: it would cost 7-12 ms of every cold start to free the few hundred
        # objects that imports leave unreachable (289 measured), which stay frozen instead.
        gc.freeze()
        try:
            async with transport, make_client(settings) as client:  # the client's own pool, for POST /send
                yield {"client": client, "transport": transport}
        finally:
            gc.unfreeze()  # the process may go on (tests, an embedding server) and expect a normal gc
            endpoint.ping_log.summarize()
            endpoint.ping_log.flush()
            endpoint.watchdog.close()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def page(request: Request) -> Response:
        from pingforward import landing  # on the first GET: not needed to start answering pings

        page_url = str(request.url.replace(query=""))
        status, body = landing.render(page_url, request.query_params.get("endpoint"), settings)
        csp = f"{PAGE_HEADERS['Content-Security-Policy']}; script-src {landing.SCRIPT_SOURCE}"
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, "Content-Security-Policy": csp})

    # One route per path, so that a 405 names every allowed method.
    endpoint = PingbackEndpoint(settings, page=request_response(page))
    routes = [Route(path, endpoint, methods=["GET", "HEAD", "POST"]) for path in PINGBACK_PATHS]
    routes.append(Route("/healthz", healthz, methods=["GET", "HEAD"]))
    if settings.send_token:  # an open sender would be an amplifier: no token, no route (404)
        token = settings.send_token

        async def send_route(request: Request) -> Response:
            return await _send(request, token)

        routes.append(Route("/send", send_route, methods=["POST"], max_body_size=settings.max_body))
    app = App(endpoint, settings.proxy_hops, routes=routes, lifespan=lifespan)
    # Never answer with a redirect: webmention.io's GET redirect to `forward` was an open redirect.
    app.router.redirect_slashes = False
    return app


PINGBACK_PATHS: Final = ("/", "/webmention")


class App(Starlette):
    """Starlette, except that a ping goes straight to the pingback endpoint.

    The endpoint catches its own errors and answers bytes itself, so on the one hot path Starlette's
    error and exception middleware and its router would only add cost: 4-5 µs per request in-process,
    a seventh of a junk request's (bench/README.md). Everything else, and a ping under a `root_path`,
    takes the router, which leads to the same endpoint.
    """

    def __init__(self, pingback: ASGIApp, proxy_hops: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pingback = pingback
        self.proxy_hops = proxy_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxy_hops and scope["type"] == "http":
            _take_forwarded(scope, self.proxy_hops)
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in PINGBACK_PATHS:
            await self.pingback(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def forwarded_client(forwarded_for: str, hops: int) -> str | None:
    """The client address that the `hops`-th proxy from us saw, from an X-Forwarded-For value.

    Each proxy appends the address it was connected from (the de-facto X-Forwarded-For rule; RFC
    7239 §5.2 for its Forwarded header), so only the last `hops` entries were written by proxies we
    trust; anything before them is the sender's own writing. None when the value is short or odd.
    """
    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if hops > len(entries):
        return None
    entry = entries[-hops]
    if entry.startswith("[") and "]" in entry:  # [2001:db8::1]:4711
        entry = entry[1 : entry.index("]")]
    elif entry.count(":") == 1:  # 192.0.2.1:4711
        entry = entry.split(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


def _take_forwarded(scope: Scope, hops: int) -> None:
    """The client and scheme the proxies in front of us saw, in place of the proxy's own connection."""
    forwarded_for: list[bytes] = []
    proto = b""
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"x-forwarded-proto":
            proto = value
    if forwarded_for:
        client = forwarded_client(b",".join(forwarded_for).decode("latin-1"), hops)
        if client is not None:
            scope["client"] = (client, 0)
    # The nearest proxy sets it (a list, if several did: the last is the nearest's).
    scheme = proto.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
    if scheme in ("http", "https"):
        scope["scheme"] = scheme


class _Gone(Exception):
    """The client disconnected before its request was read: there is no one to answer."""


class PingbackEndpoint:
    """POST on / and /webmention: XML-RPC in, Webmention out, as a plain ASGI app; other methods go to `page`.

    The one hot path, so it reads the body and answers bytes itself: Starlette's Request, Response and
    body-limit layers cost more than parsing the call (bench/README.md). Faults become HTTP only here.
    """

    def __init__(self, settings: Settings, page: ASGIApp) -> None:
        self.settings = settings
        self.page = page
        self.ping_log = PingLog(settings.log_format)
        self.body_seconds = min(settings.timeout, MAX_BODY_SECONDS)
        self.watchdog = Watchdog()  # the deadlines of body reads and forwards
        # Pings to one site all carry the same query string: check it once, not per ping. Keyed by
        # what the answer depends on: the query string, and the scheme and Host that name this proxy.
        self._cached = functools.lru_cache(maxsize=1024)(self._destination)

    def destinations(self, query: bytes, scheme: str, host: str) -> Destination:
        # Only what a forward URL fits in is kept, so a flood of long queries cannot grow the cache.
        if len(query) + len(host) <= 4 * MAX_FORWARD_URL:
            return self._cached(query, scheme, host)
        return self._destination(query, scheme, host)

    def _destination(self, query: bytes, scheme: str, host: str) -> Destination:
        return destination(query.decode("latin-1"), _own_origin(scheme, host), self.settings.policy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await self.page(scope, receive, send)
            return
        try:
            status, fields, body = await self.answer(scope, receive)
        except _Gone:
            return
        except Exception:  # a bug of ours; the sender still gets a well-formed fault
            logger.exception("internal error")
            status, fields, body = _fault(FaultCode.INTERNAL_ERROR)
        fields = [*fields, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        headers = _fields(scope)
        if VIA_BYTES in headers.get(b"via", b""):
            # Our own forward came back to us: a forward URL naming this proxy under another name.
            return LOOP
        try:
            with self.watchdog.limit(self.body_seconds):
                body = await _read_body(receive, headers, self.settings.max_body)
        except TimeoutError:
            return TOO_SLOW
        except _TooLarge:
            return TOO_LARGE
        started = time.perf_counter()
        host = headers.get(b"host", b"").decode("latin-1") or _server(scope)
        where = self.destinations(scope["query_string"], scope["scheme"], host)
        if where.unusable is not None and LIST_METHODS_BYTES not in body:
            # No usable `forward` parameter: whatever the body says, nothing can be done with it, so it
            # is not parsed, and it is counted instead of logged: such requests are junk, the bulk of
            # pingback traffic (webmention.io#208), and each would cost twice as much (bench/README.md).
            self.ping_log.unroutable(scope["query_string"])
            return _fault(FaultCode.GENERIC, where.unusable.text)
        try:
            call = parse_call(body)
            if call.method == LIST_METHODS:
                return _success(METHODS)
            if call.method != PINGBACK_PING:
                raise Fault(FaultCode.METHOD_NOT_FOUND, f"server error. requested method {call.method!r} not found")
        except Fault as fault:
            return _fault(fault.code, fault.message)

        client_ip = scope["client"][0] if scope.get("client") else ""
        outcome = where.unusable
        if outcome is None:
            try:
                ping = ping_from_params(call.params)
            except Fault as fault:
                outcome = Outcome(fault.message, fault.code)
            else:
                outcome = where.refused or await self.forward(scope["state"], ping, where, client_ip)
        self.ping_log.write(
            PingLine(
                client=client_ip or "-",
                forward_host=where.host,
                source=_param(call, 0),
                target=_param(call, 1),
                status=outcome.status,
                fault=outcome.fault,
                ms=(time.perf_counter() - started) * 1000,
                request_id=_text(headers.get(b"x-request-id")),
                agent=_text(headers.get(b"user-agent")),
                reason=where.hint if outcome.fault is None else outcome.text,
            )
        )
        if outcome.fault is None:
            return _success(outcome.text)
        return _fault(outcome.fault, outcome.text)

    async def forward(self, state: State, ping: Ping, where: Destination, client_ip: str) -> Outcome:
        # The transport shares its connections fairly between destinations (pool.Slots).
        return await forward(
            state["transport"],
            ping,
            where.url,
            client_ip=client_ip,
            timeout=self.settings.timeout,
            watchdog=self.watchdog,
        )


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, at most `limit` bytes (else `_TooLarge`, before reading if Content-Length says so)."""
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _fields(scope: Scope) -> dict[bytes, bytes]:
    """The request's header fields by (lower-case) name, repeated ones combined (RFC 9110 §5.3)."""
    fields: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        fields[name] = fields[name] + b", " + value if name in fields else value
    return fields


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _param(call: Call, index: int) -> str:
    value = call.params[index] if index < len(call.params) else None
    return value.strip() if isinstance(value, str) else "-"


def _server(scope: Scope) -> str:
    # No Host field (HTTP/1.0): the address the request came in on, as Starlette's `request.url` uses.
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else ""


def _authorized(request: Request, token: str) -> bool:
    # RFC 6750 §2.1: "Authorization: Bearer <token>"; the scheme name is case-insensitive (RFC 9110 §11.1).
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(given, token.encode())


# POST /send calls served at once by one worker; more wait for none of them and get a 503. Each
# call makes at most SEND_MAX_REQUESTS outbound requests (fetches, redirects, notifications), so
# one worker has at most the product in flight or queued for it (issue 13: once 1,201 per call).
MAX_SENDS: Final = 4
SEND_MAX_REQUESTS: Final = 200
SEND_RETRY_AFTER: Final = "10"  # seconds; about half of a call's deadline


async def _send(request: Request, token: str) -> Response:
    # Imported on first use: the sender (and webmention.py) is a tenth of the proxy's cold start,
    # and it is served only with PINGFORWARD_SEND_TOKEN.
    from pingforward import send as sender
    from pingforward.feed import parse_date

    if not _authorized(request, token):
        return JSONResponse({"error": "unauthorized"}, 401, headers={"WWW-Authenticate": 'Bearer realm="pingforward"'})
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    sources, feeds = form.get("source", []), form.get("feed", [])
    if len(sources) + len(feeds) != 1:
        return JSONResponse({"error": "send exactly one form field 'source' or 'feed'"}, 400)
    flags = {name for name, values in form.items() if values[0].lower() in ("1", "true", "on", "yes")}
    since = parse_date(form["since"][0]) if "since" in form else None
    limit = form["limit"][0] if "limit" in form else None
    if ("since" in form and since is None) or (limit is not None and not (limit.isdigit() and int(limit) > 0)):
        return JSONResponse({"error": "'since' must be a date and 'limit' a positive whole number"}, 400)
    # The count lives on the app, so each worker (and each app in tests) has its own.
    state = request.app.state
    active = getattr(state, "sends_in_flight", 0)
    if active >= MAX_SENDS:
        body = {"error": f"this worker is already serving {MAX_SENDS} sends; retry later"}
        return JSONResponse(body, 503, headers={"Retry-After": SEND_RETRY_AFTER})
    state.sends_in_flight = active + 1
    # PaaS routers cut requests at 30 s.
    limits = sender.Limits(target_timeout=10.0, deadline=25.0, max_requests=SEND_MAX_REQUESTS)
    client = request.state.client
    try:
        if feeds:
            report = await sender.send_feed(
                client,
                feeds[0].strip(),
                since=since,
                limit=int(limit) if limit else None,
                all_links="all_links" in flags,
                dry_run="dry_run" in flags,
                limits=limits,
            )
            entries = [
                {
                    "source": entry.source,
                    "published": entry.published.isoformat() if entry.published else None,
                    "ok": entry.ok,
                    "status": entry.status,
                    "detail": entry.detail,
                    "results": [asdict(r) for r in entry.results],
                }
                for entry in report.entries
            ]
            about = {"feed": report.feed, "url": report.url, "format": report.format, "listed": report.listed}
            return JSONResponse({**about, "ok": report.ok, "entries": entries})
        one = await sender.send(
            client,
            sources[0].strip(),
            all_links="all_links" in flags,
            dry_run="dry_run" in flags,
            limits=limits,
        )
    except sender.SendError as exc:
        body = {"feed" if feeds else "source": (feeds or sources)[0], "status": exc.status, "error": exc.detail}
        return JSONResponse(body, 502 if exc.status == sender.Status.ERROR else 422)
    finally:
        state.sends_in_flight -= 1
    return JSONResponse({"source": one.source, "ok": one.ok, "results": [asdict(r) for r in one.results]})


def _configure_logging(log_format: LogFormat) -> None:
    # uvicorn configures only its own loggers; give ours a stdout handler once.
    package = logging.getLogger("pingforward")
    if not package.handlers:
        package.addHandler(logging.StreamHandler(sys.stdout))
        package.setLevel(logging.INFO)
    for handler in package.handlers:
        handler.setFormatter(formatter(log_format))
    if log_format is LogFormat.JSON:
        json_for_uvicorn()
    # Logging HOWTO, "Optimization": neither format uses the thread or process, so do not
    # collect them for every record (bench/README.md).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
