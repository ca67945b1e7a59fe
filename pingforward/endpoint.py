"""The pingback endpoint: POST on / and /webmention, XML-RPC in, Webmention out. The one place where
faults become HTTP answers (XML-RPC: https://xmlrpc.com/spec.md, "Response format").
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypedDict
from urllib.parse import urlsplit

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from pingforward.config import Settings
from pingforward.errors import ForwardError, Refused
from pingforward.fetch import Verifier
from pingforward.forward import (
    HOW_TO_WRITE,
    MAX_FORWARD_URL,
    MISSING_FORWARD,
    Outcome,
    forward,
    parse_forward,
    written_unencoded,
)
from pingforward.net.policy import SCHEME_PORTS, Policy
from pingforward.net.transport import VIA
from pingforward.pingback import (
    LIST_METHODS,
    MAX_FAULT_STRING,
    METHODS,
    PINGBACK_PING,
    Call,
    Fault,
    FaultCode,
    parse_call,
    ping_from_params,
    render_fault,
    render_response,
)
from pingforward.pinglog import PingLine, PingLog, Rejection
from pingforward.watchdog import deadline
from pingforward.windows import Windows

if TYPE_CHECKING:
    from pingforward.metrics import Counts

logger = logging.getLogger("pingforward.app")

XML = "text/xml; charset=utf-8"
# Real pingback bodies are under 1 KiB and arrive at once; a body still dripping in after this
# long is an attack on the worker, not a ping.
MAX_BODY_SECONDS = 5.0


class State(TypedDict):
    client: httpx.AsyncClient  # for POST /send
    transport: httpx.AsyncBaseTransport  # the client's own, for forwarding pings
    windows: Windows  # repeats, floods and verification fetches
    verifier: Verifier | None  # the spam checks (None: PINGFORWARD_SPAM_CHECKS=off)


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


PINGBACK_PATHS: Final = ("/", "/webmention")


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
        self.counts: Counts | None = None  # metrics are counted only when served
        if settings.metrics_token:
            from pingforward.metrics import Counts  # not imported otherwise: a worker's cold start counts

            self.counts = Counts()
        self.body_seconds = min(settings.timeout, MAX_BODY_SECONDS)
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
        """Read the request, and answer it: an HTTP error for a transport problem, else XML-RPC."""
        headers = _fields(scope)
        client_ip = scope["client"][0] if scope.get("client") else ""
        if VIA_BYTES in headers.get(b"via", b""):
            # Our own forward came back to us: a forward URL naming this proxy under another name.
            self.ping_log.rejected(Rejection.LOOP, client_ip or "-", "a request carrying our own Via")
            return LOOP
        try:
            with deadline(self.body_seconds):
                body = await _read_body(receive, headers, self.settings.max_body)
        except TimeoutError:
            self.ping_log.rejected(
                Rejection.TOO_SLOW, client_ip or "-", f"no whole body within {self.body_seconds:g} s"
            )
            return TOO_SLOW
        except _TooLarge:
            reason = f"body over {self.settings.max_body} bytes (PINGFORWARD_MAX_BODY)"
            self.ping_log.rejected(Rejection.TOO_LARGE, client_ip or "-", reason)
            return TOO_LARGE
        started = time.perf_counter()
        host = headers.get(b"host", b"").decode("latin-1") or _server(scope)
        where = self.destinations(scope["query_string"], scope["scheme"], host)
        if where.unusable is not None and LIST_METHODS_BYTES not in body:
            # No usable `forward` parameter: whatever the body says, nothing can be done with it, so it
            # is not parsed, and it is counted rather than logged (only the first of a minute gets a line):
            # such requests are junk, the bulk of pingback traffic
            # (https://github.com/aaronpk/webmention.io/issues/208), and a line each would cost twice as much
            # (bench/README.md).
            text = where.unusable.text
            kind = Rejection.UNROUTABLE if text == MISSING_FORWARD else Rejection.INVALID_FORWARD
            self.ping_log.rejected(kind, client_ip or "-", text, scope["query_string"])
            return _fault(FaultCode.GENERIC, text)
        try:
            call = parse_call(body)
            if call.method == LIST_METHODS:
                return _success(METHODS)
            if call.method != PINGBACK_PING:
                raise Fault(FaultCode.METHOD_NOT_FOUND, f"server error. requested method {call.method!r} not found")
        except Fault as fault:
            self.ping_log.rejected(Rejection.MALFORMED, client_ip or "-", fault.message, scope["query_string"])
            return _fault(fault.code, fault.message)
        outcome = await self.ping(scope["state"], call, where, client_ip)
        if self.counts is not None:
            self.counts.ping(outcome)
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
                retried=outcome.retried,
                refusal=outcome.refusal,
                failure=outcome.failure,
            )
        )
        if outcome.fault is None:
            return _success(outcome.text)
        return _fault(outcome.fault, outcome.text)

    async def ping(self, state: State, call: Call, where: Destination, client_ip: str) -> Outcome:
        """What becomes of one `pingback.ping` call: refused, or forwarded and the receiver's answer."""
        if where.unusable is not None:
            return where.unusable
        try:
            ping = ping_from_params(call.params)
        except Fault as fault:
            return Outcome(fault.message, fault.code)
        if where.refused is not None:
            return where.refused
        # Before anything is fetched or sent: a flood and a repeat cost no request.
        windows = state["windows"]
        triple = (ping.source, ping.target, where.url)
        source_host = _host(ping.source) if windows.flood_source else ""  # only its window needs it
        refused = await windows.flood(client_ip, source_host) or await windows.claim(*triple)
        if refused is not None:
            return refused
        delivered = False
        try:
            timeout = self.settings.timeout
            if (verifier := state["verifier"]) is not None:
                # Inside the ping's deadline: the checks get at most half of it, the forward the rest.
                started = time.perf_counter()
                refusal = await verifier.verify(ping, timeout / 2)
                verified = time.perf_counter() - started
                if self.counts is not None:
                    self.counts.verification.observe(verified)
                if refusal is not None:
                    return Outcome(refusal.text, refusal.code, refusal=refusal.name)
                timeout -= verified
            await windows.count_source(source_host)
            # The transport shares its connections fairly between destinations (pool.Slots).
            counts = self.counts  # the forward is timed only when metrics are on
            started = time.perf_counter() if counts is not None else 0.0
            outcome = await forward(state["transport"], ping, where.url, client_ip=client_ip, timeout=timeout)
            if counts is not None:
                counts.forward.observe(time.perf_counter() - started)
            delivered = outcome.fault is None
            return outcome
        finally:  # whatever happened, so that a ping not delivered may be sent again
            await windows.settle(*triple, delivered)


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


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # an unclosed IPv6 bracket
        return ""


def _server(scope: Scope) -> str:
    # No Host field (HTTP/1.0): the address the request came in on, as Starlette's `request.url` uses.
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else ""
