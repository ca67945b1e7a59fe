"""Forward one pingback as one Webmention, and map the receiver's answer back to a pingback result.

`parse_forward` and `classify` are pure and table-tested; `forward` is the only I/O.
Specs: https://www.w3.org/TR/webmention/#sending-the-webmention (§3.1.3, §3.2.3)
and https://www.hixie.ch/specs/pingback/pingback (fault codes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, quote_plus, urljoin, urlsplit

import httpx

from pingforward.errors import Failure, ForwardError, OutboundError, OutboundTimeout, Refused
from pingforward.net.policy import SCHEME_PORTS, host_literal
from pingforward.net.pool import RETRIED
from pingforward.net.redirect import FINAL_FOR_POST, REDIRECTS, next_url
from pingforward.net.transport import USER_AGENT, VIA
from pingforward.pingback import FaultCode, Ping, is_http_url
from pingforward.watchdog import deadline

MAX_FORWARD_URL: Final = 2048
MAX_ANSWER: Final = 64 * 1024  # of a receiver's body, read only to quote it
# How long a body may take after its head: real answers come with their head, and the status has
# decided the ping already, so the sender is not kept waiting for words (WordPress gives up at 3 s).
BODY_GRACE: Final = 1.0
# For pool.py: no timer on the head (the watchdog keeps the ping's deadline), each wait for body bytes
# at most BODY_GRACE.
BODY_TIMEOUT: Final = {"body": BODY_GRACE}
MAX_REDIRECTS: Final = 3

# The error names real receivers put in JSON `error` (webmention.io, Webmention spec examples)
# or `code` (the WordPress Webmention plugin's REST errors), to the nearest pingback fault.
# The WordPress plugin's `target_not_found` means "no link found", but webmention.io's meaning
# (the target does not exist) is the documented one, so it stays 32.
ERROR_NAMES: Final[dict[str, FaultCode]] = {
    "source_not_found": FaultCode.SOURCE_NOT_FOUND,
    "invalid_source": FaultCode.SOURCE_NOT_FOUND,
    "no_link_found": FaultCode.NO_LINK,
    "target_not_found": FaultCode.TARGET_NOT_FOUND,
    "target_not_supported": FaultCode.TARGET_NOT_PINGABLE,
    "invalid_target": FaultCode.TARGET_NOT_PINGABLE,
    "target_not_valid": FaultCode.TARGET_NOT_PINGABLE,
    "already_registered": FaultCode.ALREADY_REGISTERED,
    "access_denied": FaultCode.ACCESS_DENIED,
    "forbidden": FaultCode.ACCESS_DENIED,
}

MISSING_FORWARD: Final = "Missing 'forward' parameter"
INVALID_FORWARD: Final = "Invalid 'forward' parameter"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one ping: delivered (`fault` is None) or a fault, with its text."""

    text: str
    fault: FaultCode | None = None
    status: int | None = None  # the receiver's last HTTP status, if it answered at all
    # Why the proxy itself refused the ping before forwarding it, as a short name for logs and metrics
    # (no_link, source_gone, copy, repeat, flood, fetch_bound...); None when it was forwarded, or failed.
    refusal: str | None = None
    retried: bool = False  # sent twice: the receiver closed a kept-alive connection as it arrived (pool.RETRIED)
    # What kind of trouble the forward met on the network (refused, reset, timeout, dns, tls...), for logs
    # and metrics; None when the receiver answered.
    failure: Failure | None = None


# The raw `forward` parameter, as it is written in the query string.
_RAW_FORWARD: Final = re.compile(r"(?:^|&)forward=([^&]*)")
_UNENCODED: Final = re.compile(r"https?://[^?]*\?", re.IGNORECASE)
# RFC 1035 §2.3.1 labels, with the underscore that real host names carry; a numeric host is checked apart.
_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
HOW_TO_WRITE: Final = "forward URL written without percent-encoding; write ?forward= with the URL encoded"


def _written_unencoded(query: str) -> re.Match[str] | None:
    raw = _RAW_FORWARD.search(query)
    return raw if raw is not None and _UNENCODED.match(raw[1]) else None


def written_unencoded(query: str) -> bool:
    """Whether the query's forward URL was pasted without percent-encoding (it works; the log says how to write it)."""
    return _written_unencoded(query.replace("&amp;", "&")) is not None


def parse_forward(query: str) -> str:
    """Take the forward URL out of a raw query string, or raise `ForwardError` saying what is wrong with it."""
    # WordPress copies the pingback href out of the page without decoding entities, so a
    # `<link href="...?a=1&amp;forward=...">` arrives as a literal `&amp;` (discover_pingback_server_uri in
    # https://github.com/WordPress/wordpress-develop/blob/trunk/src/wp-includes/comment.php).
    query = query.replace("&amp;", "&")
    raw = _written_unencoded(query)
    if raw is not None:
        # A URL pasted without encoding: `?forward=http://site/wm?x=1&y=2`. The proxy owns no other
        # parameter, so what follows the URL's own `?` in the raw query is the URL's, `&`s included.
        url = query[raw.start(1) :].strip()
    else:
        values = parse_qs(query, keep_blank_values=True).get("forward", [])
        if not values:
            raise ForwardError(MISSING_FORWARD)
        if len(values) > 1:
            raise ForwardError(f"{INVALID_FORWARD}: given {len(values)} times; give it once")
        url = values[0].strip()
    problem = forward_problem(url)
    if problem is not None:
        raise ForwardError(f"{INVALID_FORWARD}: {problem}")
    return url


_SPACE_OR_CONTROL: Final = re.compile(r"[\x00-\x20\x7f]")  # as pingback.is_http_url refuses
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
MAX_SHOWN_HOST: Final = 100  # of a host named in a fault string


def forward_problem(url: str) -> str | None:
    """What keeps a (decoded) forward URL from being used, in a site owner's words; None if nothing does."""
    if not url:
        return "empty; write the Webmention endpoint's whole URL, percent-encoded"
    if len(url) > MAX_FORWARD_URL:
        return f"longer than {MAX_FORWARD_URL} characters"
    if "\ufffd" in url:  # percent-escapes that are not UTF-8 decode to U+FFFD: a URL other than the one written
        return "percent-escapes that are not UTF-8"
    if url.startswith("//"):
        return "no scheme: write https://host/..., not //host/..."
    scheme = _SCHEME.match(url)
    if scheme is not None and url[scheme.end() : scheme.end() + 1].isdigit():  # site.example:8080/wm
        scheme = None
    if scheme is None or not url[scheme.end() :].startswith("//"):
        if scheme is not None and scheme[1].lower() not in ("http", "https"):
            return f"scheme {scheme[1][:20]!r}: only http and https"
        return "no scheme: write the whole URL, https://host/..."
    if scheme[1].lower() not in ("http", "https"):
        return f"scheme {scheme[1][:20]!r}: only http and https"
    if not is_http_url(url):
        parts = urlsplit(url)
        if _SPACE_OR_CONTROL.search(url):
            return "spaces or control characters in the URL; percent-encode them"
        if not parts.hostname:
            return "no host"
        return "the port is not a number up to 65535"
    parts = urlsplit(url)
    if parts.username is not None:  # userinfo would be sent as credentials
        return "credentials in the URL (user:password@) would be sent to the receiver; leave them out"
    if not _usable_host(url):
        return f"host {(parts.hostname or '')[:MAX_SHOWN_HOST]!r} is no name or address a connection can be made to"
    return None


def _usable_host(url: str) -> bool:
    """Whether the URL's host is one a connection can be made to: an address, or a name DNS can carry."""
    try:
        host = _url(url).raw_host.decode("ascii")  # an IDN comes back in its xn-- form
    except (httpx.InvalidURL, UnicodeError):
        return False
    if host_literal(host) is not None:
        return True
    name = host.removesuffix(".")
    # RFC 1035 §2.3.4: at most 63 octets a label and 255 a name (253 written out).
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser's recursion limit
        return {}
    return data if isinstance(data, dict) else {}


def _text(data: dict[str, object], *keys: str) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


# node's `pingback` client treats any answer containing "fault" as a fault
# (https://github.com/chjj/node-pingback, lib/pingback.js),
# so a success string must not contain it, not even inside "default". In a URL the "a" is
# percent-encoded, which keeps the URL equivalent (RFC 3986 §6.2.2.2); in prose, which people
# read, an invisible WORD JOINER (U+2060) goes between "fa" and "ult" instead.
_FAULT_WORD: Final = re.compile("(f)(a)(ult)", re.IGNORECASE)
_URL_IN_TEXT: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def _defang(text: str) -> str:
    text = _URL_IN_TEXT.sub(lambda url: _FAULT_WORD.sub(lambda m: f"{m[1]}%{ord(m[2]):X}{m[3]}", url[0]), text)
    return _FAULT_WORD.sub(lambda m: f"{m[1]}{m[2]}\u2060{m[3]}", text)


def classify(ping: Ping, status: int, body: bytes, location: str | None = None) -> Outcome:
    """Map a receiver's final answer (not a redirect to follow) to a pingback outcome."""
    data = _json_object(body)
    if 200 <= status < 300:
        # Webmention §3.1.3: "Any 2xx response code MUST be considered a success", whatever the body
        # says (an `error` member included): the receiver has taken the mention.
        text = _text(data, "result", "summary", "message") or (
            f"Pingback from {ping.source} to {ping.target} was successful!"
        )
        if status == 201 and location:
            text = f"{text} Status: {location}"
        return Outcome(_defang(text), None, status)
    if status == 303:
        # 303 See Other: the receiver processed the POST and points at a page about it.
        return Outcome(_defang(f"Pingback from {ping.source} to {ping.target} was accepted."), None, status)

    name = _text(data, "error", "code")
    detail = _text(data, "error_description", "message")
    described = f"{name}: {detail}" if name and detail else name or detail
    if name in ERROR_NAMES:
        return Outcome(described, ERROR_NAMES[name], status)
    if status in (401, 403):
        return Outcome(f"HTTP {status} {described}".strip(), FaultCode.ACCESS_DENIED, status)
    if status == 429 or status >= 500 or 300 <= status < 400:
        # Pingback 1.0: 0x0032 "SHOULD be used by pingback proxies when propagating errors".
        return Outcome(f"upstream: HTTP {status} {described}".strip(), FaultCode.UPSTREAM_ERROR, status)
    return Outcome(f"HTTP {status} {described}".strip(), FaultCode.GENERIC, status)


def _upstream(reason: str, status: int | None = None, failure: Failure | None = None) -> Outcome:
    return Outcome(f"upstream: {reason}", FaultCode.UPSTREAM_ERROR, status, failure=failure)


# Every forward carries these, then Original-Remote-Addr, Host and Content-Length.
HEADERS: Final = (
    (b"User-Agent", USER_AGENT.encode()),
    (b"Via", VIA.encode()),
    (b"Content-Type", b"application/x-www-form-urlencoded"),
    (b"Accept", b"application/json"),
    # An uncompressed answer keeps the byte cap honest: no bomb can inflate past it.
    (b"Accept-Encoding", b"identity"),
)


def _url(url: str) -> httpx.URL:
    # Pings to one site all name the same forward URL: parse it once (httpx.URL is immutable).
    # Only URLs as short as a forward URL may be are kept, so the cache stays under 1024 x 2 KiB.
    return _parsed_url(url) if len(url) <= MAX_FORWARD_URL else httpx.URL(url)


_parsed_url: Final = functools.lru_cache(maxsize=1024)(httpx.URL)


def webmention_request(ping: Ping, url: str, client_ip: str) -> httpx.Request:
    """The Webmention POST for `ping` (Webmention §3.1.3: form-encoded `source` and `target`)."""
    # ":" and "/" may stay as they are in a query (RFC 3986 §3.4), as in the Webmention spec's own
    # example (§3.1.2); every form parser reads them so, and quote_plus has far less to do on a
    # URL that needs no other escape.
    body = f"source={quote_plus(ping.source, safe=':/')}&target={quote_plus(ping.target, safe=':/')}".encode()
    parsed = _url(url)
    headers = [
        (b"Host", parsed.netloc),
        *HEADERS,
        (b"Original-Remote-Addr", client_ip.encode("ascii", "replace")),
        (b"Content-Length", b"%d" % len(body)),
    ]
    # `stream=` builds exactly this request; `content=` would re-derive Host and Content-Length
    # through httpx's encoders, several times the cost (bench/README.md).
    request = httpx.Request(
        "POST", parsed, headers=headers, stream=httpx.ByteStream(body), extensions={"timeout": BODY_TIMEOUT}
    )
    request.read()  # so that `request.content` is there for whoever inspects it (respx, logs)
    return request


async def forward(
    transport: httpx.AsyncBaseTransport,
    ping: Ping,
    url: str,
    *,
    client_ip: str,
    timeout: float,
) -> Outcome:
    """POST the ping as a Webmention to `url`, re-POSTing across redirects, within `timeout`.

    The deadline is kept by the event loop's watchdog (`watchdog.deadline`), not by a timer of its own.

    `transport` is the worker's `transport.PolicyTransport`: it checks every URL and address. It is
    called directly, without an `httpx.AsyncClient` around it: the client's merging of defaults and
    its auth, redirect and event-hook machinery cost more than the pool's own exchange, and none of it
    applies to one fixed POST (bench/README.md).
    """
    retried: list[bool] = []  # True once a request went out twice
    outcome = await _forward(transport, ping, url, client_ip, timeout, retried)
    return dataclasses.replace(outcome, retried=True) if retried else outcome


async def _forward(
    transport: httpx.AsyncBaseTransport, ping: Ping, url: str, client_ip: str, timeout: float, retried: list[bool]
) -> Outcome:
    heard: list[tuple[int, str | None]] = []  # a final answer's status and Location, once its head arrived
    try:
        with deadline(timeout):
            return await _post(transport, ping, url, client_ip, heard, retried)
    except Refused as exc:
        return Outcome(f"forward refused: {exc.reason}", FaultCode.ACCESS_DENIED, failure=Failure.POLICY)
    except TimeoutError:
        if heard:  # the deadline came while its body was being read: the status has decided
            status, location = heard[0]
            return classify(ping, status, b"", location)
        return _upstream(f"no answer from {_where(url)} within {timeout:g} s", failure=Failure.TIMEOUT)
    except OutboundError as exc:  # its words name the host and port and what went wrong: no internals
        if heard and isinstance(exc, OutboundTimeout):
            status, location = heard[0]
            return classify(ping, status, b"", location)
        return _upstream(exc.reason, failure=exc.failure)
    except httpx.InvalidURL:
        return _upstream("the forward URL cannot be requested", failure=Failure.URL)


def _where(url: str) -> str:
    """A URL's host and port, as the network layer names them in its reasons."""
    parsed = _url(url)
    return f"{parsed.host} port {parsed.port or SCHEME_PORTS.get(parsed.scheme, 80)}"


async def _post(
    transport: httpx.AsyncBaseTransport,
    ping: Ping,
    url: str,
    client_ip: str,
    heard: list[tuple[int, str | None]],
    retried: list[bool],
) -> Outcome:
    # Redirects are followed by the one rule of net/redirect.py: the same POST on 301, 302, 307, 308.
    for _ in range(MAX_REDIRECTS + 1):
        response = await transport.handle_async_request(webmention_request(ping, url, client_ip))
        if RETRIED in response.extensions:
            retried.append(True)
        # The transport's own stream, read and closed as httpx's client does underneath: its
        # `aiter_raw` and `aclose` would add a chunker and two context managers per ping.
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        try:
            status, fields = response.status_code, dict(response.headers.items())
            hop = next_url("POST", status, url, fields.get("location"))
            if hop is not None:
                url = hop
                continue
            if status in REDIRECTS - FINAL_FOR_POST:
                return _upstream(f"HTTP {status} without a usable Location", status)
            location = fields.get("location") if status == 201 else None  # 201 Created names the mention
            location = location and urljoin(url, location)
            # The status line decides (Webmention §3.1.3: any 2xx is a success); the body only picks
            # the words, and for an error the fault code, when it can be read. Too large, compressed,
            # stalled or cut, it is left unread and the status alone answers.
            heard.append((status, location))
            length = fields.get("content-length", "")
            if length.isdigit() and int(length) > MAX_ANSWER:
                return classify(ping, status, b"", location)
            answer = await _read_quote(stream)
            if answer is None or fields.get("content-encoding", "identity").lower() != "identity":
                answer = b""  # asked for identity; a compressed answer is not worth decoding
            return classify(ping, status, answer, location)
        finally:
            await stream.aclose()
    return _upstream(f"more than {MAX_REDIRECTS} redirects")


async def _read_quote(stream: httpx.AsyncByteStream) -> bytes | None:
    """The answer's body if it is whole within MAX_ANSWER bytes and BODY_GRACE seconds, else None.

    Each wait for more bytes is bounded by the transport (the request's `body` timeout); the time
    between them is checked here, so a body dripping in cannot stretch the grace either.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BODY_GRACE
    answer = bytearray()
    try:
        async for chunk in stream:
            answer += chunk
            if len(answer) > MAX_ANSWER or loop.time() > give_up:
                return None
    except OutboundError:  # stalled past the grace, cut, reset: the status has already answered
        return None
    return bytes(answer)
