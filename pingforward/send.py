"""Notify every page a post links to: a Webmention where the page has an endpoint, else a pingback.

The I/O around webmention.py and feed.py: fetch the source once and each target once, discover,
then POST; for a feed, do that for each of its entries. `classify_webmention` and
`classify_pingback` are pure; outcomes use Bridgy's buckets. Every request of one call is counted
against its `Budget`. Specs: https://www.w3.org/TR/webmention/#sending-webmentions (§3.1)
and https://www.hixie.ch/specs/pingback/pingback (§3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, ParamSpec, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from pingforward import sendstate
from pingforward.errors import Failure, FeedError, ForwardError, OutboundError, PingforwardError, Refused
from pingforward.feed import ACCEPT as FEED_ACCEPT
from pingforward.feed import Feed, FeedFormat, pick, read_feed
from pingforward.forward import parse_forward
from pingforward.markup import is_html, media_type
from pingforward.net.policy import embedded_ipv4, host_literal
from pingforward.net.redirect import REDIRECTS, next_url
from pingforward.pingback import Fault, FaultCode, Ping, RemoteFault, is_http_url, parse_answer, render_call
from pingforward.sendstate import Change, Outcome, PostRecord, State
from pingforward.sendstate import Status as Status
from pingforward.webmention import Endpoint, Protocol, discover, extract_links

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

MAX_DETAIL: Final = 200
_PORTS: Final = {"http": 80, "https": 443}
FETCH_HEADERS: Final = {
    "Accept": "text/html, application/xhtml+xml;q=0.9, */*;q=0.1",
    # Compressed answers are inflated here under the byte cap (see read_capped), but few are sent.
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one send may do. Each request also has the client's own timeout."""

    concurrency: int = 8  # targets handled at once
    per_host: int = 2  # requests in flight to one host name, endpoints included
    max_bytes: int = 1_000_000  # read of any page; the rest is ignored
    max_answer: int = 64 * 1024  # read of an endpoint's answer
    max_redirects: int = 10  # what the webmention.rocks receiver allows
    max_targets: int = 100  # links beyond this are skipped
    max_requests: int = 1000  # outbound requests of the whole call: fetches, redirects, notifications
    target_timeout: float = 30.0  # fetch, discovery and notification of one target
    deadline: float = 120.0  # the whole call
    # (host, port) origins never requested: a proxy's own, for POST /send (`origins`). A pingback to
    # its own endpoint goes straight to the Webmention endpoint it forwards to, within the budget.
    own: frozenset[tuple[str, int]] = frozenset()


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one target."""

    target: str
    status: Status
    detail: str
    protocol: Protocol | None = None
    endpoint: str | None = None
    http_status: int | None = None  # the endpoint's answer, or the target's when that decided
    location: str | None = None  # a 201's Location (Webmention §3.2)
    retry_after: int | None = None  # seconds that answer's Retry-After asked for (RFC 9110 §10.2.3)
    fault_code: int | str | None = None  # a pingback server's fault, exactly as it sent it
    fault_string: str | None = None
    failure: str | None = None  # a network failure's kind (errors.Failure): dns, refused, tls, timeout...


@dataclass(frozen=True, slots=True)
class Source:
    """The post: the URL as given, where it ended up, and the targets it links to."""

    url: str
    final_url: str
    targets: tuple[str, ...]


PROBLEMS: Final = frozenset({Status.FAILED, Status.ERROR})


@dataclass(frozen=True, slots=True)
class Report:
    """One post and what happened to each of its targets; `status` and `detail` say why a post could not be read."""

    source: str
    results: tuple[Result, ...]
    status: Status | None = None
    detail: str | None = None
    published: datetime | None = None  # as its feed said
    reason: Change | None = None  # what became of the post since the last run (sendstate.plan)
    waiting: tuple[str, ...] = ()  # with a state: targets left for a later run by their Retry-After

    @property
    def ok(self) -> bool:
        """True when nothing failed or errored."""
        return self.status not in PROBLEMS and all(result.status not in PROBLEMS for result in self.results)


@dataclass(frozen=True, slots=True)
class FeedReport:
    """A feed, the entries picked from it (newest first) and a report on each."""

    feed: str  # as given
    url: str  # where the feed was read, after discovery and redirects
    format: FeedFormat
    listed: int  # entries in the feed
    entries: tuple[Report, ...]

    @property
    def ok(self) -> bool:
        return all(entry.ok for entry in self.entries)


class SendError(PingforwardError):
    """A page or endpoint could not be used; `status` is its bucket and the message says why."""

    def __init__(
        self, status: Status, detail: str, *, http_status: int | None = None, failure: str | None = None
    ) -> None:
        self.status = status
        self.detail = detail
        self.http_status = http_status  # the answer that decided, if one did
        self.failure = failure  # a network failure's kind, if one decided
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class _Answer:
    url: str  # after redirects, for a page
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Budget:
    """What one call (a send or a feed) may still use: requests in all, time, and slots per host name."""

    def __init__(self, limits: Limits) -> None:
        self.limit = self.left = limits.max_requests
        self.deadline = asyncio.get_running_loop().time() + limits.deadline
        self._per_host = limits.per_host
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.own = limits.own

    def slot(self, url: str) -> asyncio.Semaphore:
        """At most `per_host` requests in flight to each host name."""
        host = (urlsplit(url).hostname or "").rstrip(".")
        return self._slots.setdefault(host, asyncio.Semaphore(self._per_host))

    def spend(self) -> None:
        """Count one request, or raise `SendError` (an error: it may be retried) when none is left."""
        if self.left <= 0:
            raise SendError(Status.ERROR, f"not tried: this call's {self.limit} outbound requests are spent")
        self.left -= 1


def origin(host: str, port: int) -> tuple[str, int]:
    """A (host, port) in one spelling: lower case, no final dot, an IP address as `ipaddress` writes it."""
    host = host.strip("[]").rstrip(".").lower()
    address = host_literal(host)
    if isinstance(address, ipaddress.IPv6Address):
        address = embedded_ipv4(address) or address
    return (str(address) if address is not None else host), port


def origins(host_field: str, server: tuple[str, int] | None) -> frozenset[tuple[str, int]]:
    """A server's own origins: the name its clients used (the Host field) on its port, or on both default
    ports when it names none (a TLS-terminating router may stand between), and the address reached."""
    found: set[tuple[str, int]] = set()
    try:
        parts = urlsplit(f"http://{host_field.strip()}")
        ports = [parts.port] if parts.port else [80, 443]
    except ValueError:  # a Host field no URL could name: no URL names it either
        parts, ports = urlsplit(""), []
    if parts.hostname:
        found.update(origin(parts.hostname, port) for port in ports)
    if server is not None:
        found.add(origin(*server))
    return frozenset(found)


async def _in_thread(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run bounded CPU work (parsing) in a worker thread, keeping the event loop free meanwhile.

    A thread cannot be stopped; if the call is cancelled (its deadline, or its client gone), this
    waits for the work to end before the cancellation goes on, so that no work outlives its call. The
    parsers' input bounds keep that wait short (feed.MAX_ELEMENTS, Limits.max_bytes).
    """
    task = asyncio.ensure_future(asyncio.to_thread(work, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of the body, inflating gzip or deflate within the limit."""
    # httpx's own decoders inflate a whole network chunk at once (a 64 KiB gzip bomb chunk is
    # ~64 MB); zlib's max_length keeps memory at the cap. Unknown codings give no body.
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if coding in ("gzip", "x-gzip", "deflate") else None
    if inflater is None and coding not in ("identity", ""):
        return b""
    body = bytearray()
    async for chunk in response.aiter_raw():
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - len(body))
            except zlib.error:
                break
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[:limit])


async def _exchange(
    client: httpx.AsyncClient,
    budget: Budget,
    method: str,
    url: str,
    *,
    limit: int,
    unusable: Status,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> _Answer:
    """One request and a bounded read of its answer; transport problems become `SendError`."""
    try:
        request = client.build_request(method, url, content=content, headers=headers)
        # The host as it will be dialled (IDNA applied), so that no spelling of a proxy's own name passes.
        host, port = request.url.raw_host.decode("ascii"), request.url.port or _PORTS.get(request.url.scheme, 80)
        if budget.own and origin(host, port) in budget.own:
            # Its own pages and endpoint would be a loop, and work outside this call's budget.
            raise Refused(f"{host} port {port} is this proxy itself")
        budget.spend()
        # The sender starts requests and forwards none: Via is for intermediaries (RFC 9110
        # §7.6.3), and a pingforward proxy answers a request that carries ours with 508.
        request.headers.pop("via", None)
        async with budget.slot(url):
            response = await client.send(request, stream=True)
            try:
                body = await read_capped(response, limit)
            finally:
                await response.aclose()
        return _Answer(str(response.url), response.status_code, tuple(response.headers.multi_items()), body)
    except Refused as exc:  # the address policy, checked on every hop and every connection
        raise SendError(unusable, f"refused: {exc.reason}") from None
    except OutboundError as exc:  # the network layer's words name the host and the kind of failure
        if exc.failure is Failure.URL:
            raise SendError(unusable, f"unusable URL {url!r}: {exc.reason}") from None
        raise SendError(Status.ERROR, exc.reason, failure=exc.failure.value) from None
    except httpx.InvalidURL as exc:
        raise SendError(unusable, f"unusable URL {url!r}: {exc}") from None
    except UnicodeError as exc:  # idna's IDNAError: an xn-- label that is no Punycode, or a code point IDNA refuses
        raise SendError(unusable, f"unusable URL {url!r}: the host name is not valid IDNA ({exc})") from None


async def _fetch(
    client: httpx.AsyncClient,
    budget: Budget,
    url: str,
    limits: Limits,
    unusable: Status,
    headers: dict[str, str] = FETCH_HEADERS,
) -> _Answer:
    """GET a page, following redirects ourselves so each hop waits for its host's slot and counts."""
    for _ in range(limits.max_redirects + 1):
        answer = await _exchange(client, budget, "GET", url, limit=limits.max_bytes, unusable=unusable, headers=headers)
        location = _field(answer.headers, "location")
        hop = next_url("GET", answer.status, answer.url, location)
        if hop is None:
            if answer.status in REDIRECTS and location is not None:
                raise SendError(unusable, f"redirected to {location.strip()[:MAX_DETAIL]!r}, not an http(s) URL")
            return answer
        url = hop
    raise SendError(unusable, f"more than {limits.max_redirects} redirects")


async def fetch_source(
    client: httpx.AsyncClient,
    url: str,
    *,
    all_links: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    budget: Budget | None = None,
) -> Source:
    """Fetch the post once and list the targets it links to; raise `SendError` if it cannot be used."""
    if not is_http_url(url):
        raise SendError(Status.FAILED, f"the source {url!r} is not an absolute http(s) URL")
    budget = budget or Budget(limits)
    try:
        async with asyncio.timeout(limits.target_timeout):
            page = await _fetch(client, budget, url, limits, Status.FAILED)
    except TimeoutError:
        raise SendError(Status.ERROR, f"the source gave no page within {limits.target_timeout:g} s") from None
    if not 200 <= page.status < 300:
        raise SendError(
            Status.ERROR if _transient(page.status) else Status.FAILED,
            f"the source answered {page.status}{_retry_text(page.headers)}",
            http_status=page.status,
        )
    if not is_html(page.headers):
        raise SendError(Status.FAILED, f"the source is {media_type(page.headers)}, not HTML")
    if len(page.body) >= limits.max_bytes:
        logger.warning("source %r is larger than %d bytes; links after that are not seen", url, limits.max_bytes)
    # Parsing up to max_bytes takes CPU time (about a second per MB); a worker thread keeps the
    # event loop, and the other requests of a server, moving meanwhile.
    targets = await _in_thread(extract_links, page.url, page.headers, page.body, all_links=all_links, aliases=(url,))
    return Source(url, page.url, targets)


def _field(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _retry_after(headers: tuple[tuple[str, str], ...]) -> str | None:
    """The Retry-After field as given: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    value = _field(headers, "retry-after")
    if value is None:
        return None
    return " ".join(value.split())[:100] or None


def retry_seconds(value: str | None, now: datetime) -> int | None:
    """The seconds a Retry-After field asks for: delay-seconds, or an HTTP-date less `now` (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0, int((when - now).total_seconds()))


def _retry_text(headers: tuple[tuple[str, str], ...]) -> str:
    value = _retry_after(headers)
    if value is None:
        return ""
    return f"; retry after {value} s" if value.isdigit() else f"; retry after {value}"


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _summary(body: bytes) -> str:
    """A short, printable account of an endpoint's answer: its JSON error or message, or its text."""
    data = _json_object(body)
    if data:
        parts = [str(data[key]) for key in ("error", "error_description", "message", "summary") if data.get(key)]
        text = ": ".join(parts)
    else:
        text = body.decode("utf-8", "replace")
        if text.lstrip().startswith("<"):  # an HTML or XML page says little in 200 characters
            text = ""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


@dataclass(frozen=True, slots=True)
class Classified:
    """An endpoint's answer, judged: the bucket, a description, and a pingback server's fault as sent."""

    status: Status
    detail: str
    fault: RemoteFault | None = None


def _retry(classified: Classified, retry_after: str | None) -> Classified:
    if classified.status != Status.ERROR or not retry_after:
        return classified
    when = f"{retry_after} s" if retry_after.isdigit() else retry_after
    return Classified(classified.status, f"{classified.detail}; retry after {when}", classified.fault)


def classify_webmention(status: int, location: str | None, body: bytes, retry_after: str | None = None) -> Classified:
    """The bucket and a description of an endpoint's answer to a Webmention POST (not a 307/308 to follow)."""
    summary = _summary(body)
    said = f": {summary}" if summary else ""
    if 200 <= status < 300:
        # §3.1.3: "Any 2xx response code MUST be considered a success." §3.2: a 201 carries the
        # Location of a status page; a 202 means the Webmention is queued.
        if status == 201 and location:
            return Classified(Status.SENT, f"created, status at {location}")
        return Classified(Status.SENT, ("accepted for processing" if status == 202 else "accepted") + said)
    if status == 303:
        # The one redirect rule (net/redirect.py): a 303 says the POST was processed.
        return Classified(Status.SENT, f"processed (303 See Other{f', at {location}' if location else ''})")
    if 300 <= status < 400:  # only here when it cannot be followed
        return Classified(Status.FAILED, f"the endpoint redirected ({status}) without a usable Location")
    if _json_object(body).get("error") == "already_registered":
        # webmention.io's answer to a repeated Webmention: the receiver has it, which is what a
        # sender wants, as Pingback's fault 48 (see classify_pingback).
        return Classified(Status.SENT, f"already registered ({status}){said}")
    if _transient(status):
        return _retry(Classified(Status.ERROR, f"the endpoint answered {status}{said}"), retry_after)
    return Classified(Status.FAILED, f"the endpoint refused it ({status}){said}")


# Fault codes that mean "try again later" rather than "never": Pingback 1.0 §3's 0x0032 (an
# upstream server failed), XML-RPC's internal error, and the 429 that WordPress answers to a second
# pingback within 15 s ("You are posting comments too quickly", wp-includes/comment.php).
TRANSIENT_FAULTS: Final[frozenset[int | str]] = frozenset({FaultCode.UPSTREAM_ERROR, FaultCode.INTERNAL_ERROR, 429})


def classify_pingback(status: int, body: bytes, retry_after: str | None = None) -> Classified:
    """The bucket and a description of a pingback server's answer to pingback.ping.

    A fault's code and string are kept as the server sent them, including codes Pingback 1.0
    does not list and an empty string.
    """
    try:
        answer = parse_answer(body)
    except Fault as fault:  # not an XML-RPC answer: the HTTP status decides
        if _transient(status):
            return _retry(Classified(Status.ERROR, f"the pingback server answered {status}"), retry_after)
        if not 200 <= status < 300:
            return Classified(Status.FAILED, f"the pingback server refused it ({status})")
        return Classified(Status.FAILED, f"the answer is not XML-RPC ({fault.message})")
    if isinstance(answer, RemoteFault):
        string = " ".join(answer.string.split())[:MAX_DETAIL]
        described = f"fault {answer.code}: {string}" if string else f"fault {answer.code} (empty faultString)"
        if answer.code == FaultCode.GENERIC and _transient(status):  # a generic fault from a failing server
            return _retry(
                Classified(Status.ERROR, f"the pingback server answered {status}, {described}", answer), retry_after
            )
        if answer.code == FaultCode.ALREADY_REGISTERED:
            return Classified(Status.SENT, f"already registered ({described})", answer)
        bucket = Status.ERROR if answer.code in TRANSIENT_FAULTS else Status.FAILED
        return _retry(Classified(bucket, described, answer), retry_after)
    if not 200 <= status < 300:
        bucket = Status.ERROR if _transient(status) else Status.FAILED
        return _retry(Classified(bucket, f"the pingback server answered {status}"), retry_after)
    return Classified(Status.SENT, " ".join(answer.split())[:MAX_DETAIL] or "accepted")


async def _post(
    client: httpx.AsyncClient, budget: Budget, endpoint: str, content: bytes, headers: dict[str, str], limits: Limits
) -> tuple[_Answer, str]:
    """POST to an endpoint, following redirects by the rule of net/redirect.py (the same POST), each hop
    counted; the final answer and where it came from. Raise `SendError` past `max_redirects`."""
    url = endpoint
    for _ in range(limits.max_redirects + 1):
        answer = await _exchange(
            client,
            budget,
            "POST",
            url,
            limit=limits.max_answer,
            unusable=Status.SKIPPED,
            content=content,
            headers=headers,
        )
        hop = next_url("POST", answer.status, url, _field(answer.headers, "location"))
        if hop is None:
            return answer, url
        url = hop
    raise SendError(Status.FAILED, f"the endpoint redirected more than {limits.max_redirects} times")


async def _webmention(
    client: httpx.AsyncClient, budget: Budget, endpoint: str, source: str, target: str, limits: Limits
) -> Result:
    # §3.1.3: a form-encoded POST with source and target, to the endpoint URL as discovered (its
    # query stays in the URL, rocks test 21).
    content = urlencode({"source": source, "target": target}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json, */*;q=0.5"}
    answer, url = await _post(client, budget, endpoint, content, headers, limits)
    location = _field(answer.headers, "location")
    location = urljoin(url, location.strip()) if location else None
    retry_after = _retry_after(answer.headers)
    classified = classify_webmention(answer.status, location, answer.body, retry_after)
    detail = classified.detail if url == endpoint else f"{classified.detail} (re-sent to {url})"
    return Result(
        target,
        classified.status,
        detail,
        Protocol.WEBMENTION,
        endpoint,
        answer.status,
        location if answer.status == 201 else None,
        retry_seconds(retry_after, datetime.now(UTC)),
    )


async def _pingback(
    client: httpx.AsyncClient, budget: Budget, server: str, source: str, target: str, limits: Limits
) -> Result:
    # Pingback 1.0 §3: targetURI is "the target of the link, as given on the source page".
    content = render_call(Ping(source, target))
    answer, url = await _post(
        client, budget, server, content, {"Content-Type": "text/xml", "Accept": "text/xml"}, limits
    )
    retry_after = _retry_after(answer.headers)
    classified = classify_pingback(answer.status, answer.body, retry_after)
    fault = classified.fault
    return Result(
        target,
        classified.status,
        classified.detail if url == server else f"{classified.detail} (re-sent to {url})",
        Protocol.PINGBACK,
        server,
        answer.status,
        retry_after=retry_seconds(retry_after, datetime.now(UTC)),
        fault_code=None if fault is None else fault.code,
        fault_string=None if fault is None else fault.string,
    )


def _is_own(url: str, own: frozenset[tuple[str, int]]) -> bool:
    parts = urlsplit(url)
    return origin(parts.hostname or "", parts.port or _PORTS.get(parts.scheme, 80)) in own


async def _own_pingback(
    client: httpx.AsyncClient, budget: Budget, server: str, source: str, target: str, limits: Limits
) -> Result:
    # The target names this very proxy as its pingback server: what the proxy would do with the
    # ping is one Webmention to its forward URL, so that is sent here, counted in this call's budget.
    try:
        forward_url = parse_forward(urlsplit(server).query)
    except ForwardError as exc:
        return Result(target, Status.FAILED, f"this proxy's own pingback endpoint: {exc}", Protocol.PINGBACK, server)
    result = await _webmention(client, budget, forward_url, source, target, limits)
    detail = f"{result.detail} (sent to {forward_url}, where this proxy's own pingback endpoint forwards)"
    return replace(result, detail=detail, protocol=Protocol.PINGBACK, endpoint=server)


async def _notify(
    client: httpx.AsyncClient, budget: Budget, source: str, target: str, limits: Limits, dry_run: bool
) -> Result:
    if not is_http_url(target):
        return Result(target, Status.SKIPPED, "not an absolute http(s) URL")
    endpoint: Endpoint | None = None
    try:
        # One GET, kept for both protocols: webmention.rocks test 23 serves its page only once.
        page = await _fetch(client, budget, target, limits, Status.SKIPPED)
        endpoint = await _in_thread(discover, page.url, page.headers, page.body)
        if endpoint is None:
            if _transient(page.status):
                detail = f"the target answered {page.status}{_retry_text(page.headers)}"
                retry_after = retry_seconds(_retry_after(page.headers), datetime.now(UTC))
                return Result(target, Status.ERROR, detail, http_status=page.status, retry_after=retry_after)
            what = f"the target answered {page.status} and" if page.status >= 400 else "the target"
            return Result(target, Status.SKIPPED, f"{what} advertises no Webmention or Pingback endpoint")
        if not is_http_url(endpoint.url):
            return Result(target, Status.SKIPPED, "the endpoint is not an http(s) URL", endpoint.protocol, endpoint.url)
        if dry_run:
            return Result(target, Status.DISCOVERED, "not sent (dry run)", endpoint.protocol, endpoint.url)
        if endpoint.protocol == Protocol.PINGBACK and budget.own and _is_own(endpoint.url, budget.own):
            return await _own_pingback(client, budget, endpoint.url, source, target, limits)
        send = _webmention if endpoint.protocol == Protocol.WEBMENTION else _pingback
        return await send(client, budget, endpoint.url, source, target, limits)
    except SendError as exc:
        if endpoint is None:
            return Result(target, exc.status, exc.detail, failure=exc.failure)
        return Result(target, exc.status, exc.detail, endpoint.protocol, endpoint.url, failure=exc.failure)


async def notify(
    client: httpx.AsyncClient,
    source: Source,
    *,
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    on_result: Callable[[Result], None] | None = None,
    budget: Budget | None = None,
) -> tuple[Result, ...]:
    """Notify each of the source's targets; results in link order, `on_result` as each one ends."""
    loop = asyncio.get_running_loop()
    budget = budget or Budget(limits)
    gate = asyncio.Semaphore(limits.concurrency)

    async def one(target: str) -> Result:
        try:
            async with asyncio.timeout_at(budget.deadline):
                async with gate, asyncio.timeout(limits.target_timeout):
                    result = await _notify(client, budget, source.url, target, limits, dry_run)
        except TimeoutError:
            if loop.time() >= budget.deadline:
                result = Result(target, Status.ERROR, f"not done when the {limits.deadline:g} s deadline passed")
            else:
                result = Result(target, Status.ERROR, f"not done within {limits.target_timeout:g} s")
        except Exception:  # a bug of ours: report it on this target and carry on with the others
            logger.exception("sending to %r failed", target)
            result = Result(target, Status.ERROR, "internal error")
        logger.info(
            "send source=%r target=%r status=%s protocol=%s endpoint=%r detail=%r",
            source.url,
            target,
            result.status,
            result.protocol or "-",
            result.endpoint,
            result.detail,
        )
        if on_result is not None:
            on_result(result)
        return result

    targets, excess = source.targets[: limits.max_targets], source.targets[limits.max_targets :]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(target)) for target in targets]
    skipped = (Result(target, Status.SKIPPED, f"over the limit of {limits.max_targets} links") for target in excess)
    return (*(task.result() for task in tasks), *skipped)


async def send(
    client: httpx.AsyncClient,
    source_url: str,
    *,
    all_links: bool = False,
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    on_result: Callable[[Result], None] | None = None,
) -> Report:
    """Fetch the post and notify every page it links to; raise `SendError` if the post is unusable."""
    budget = Budget(limits)
    source = await fetch_source(client, source_url, all_links=all_links, limits=limits, budget=budget)
    results = await notify(client, source, dry_run=dry_run, limits=limits, on_result=on_result, budget=budget)
    return Report(source.url, results)


# ---------------------------------------------------------------------------------------------
# JSON: the one shape of results, for `pingforward send --json` and `POST /send` alike.


def result_json(result: Result) -> dict[str, object]:
    """One target's result as JSON: every field of `Result`, enums as their values."""
    return {
        "target": result.target,
        "status": result.status.value,
        "detail": result.detail,
        "protocol": result.protocol and result.protocol.value,
        "endpoint": result.endpoint,
        "http_status": result.http_status,
        "location": result.location,
        "retry_after": result.retry_after,
        "fault_code": result.fault_code,
        "fault_string": result.fault_string,
        "failure": result.failure,
    }


def report_json(report: Report) -> dict[str, object]:
    """One post as one JSON object: its results in a list (the answer of `POST /send`)."""
    return {
        "source": report.source,
        "published": report.published.isoformat() if report.published else None,
        "ok": report.ok,
        "status": report.status and report.status.value,
        "detail": report.detail,
        "reason": report.reason and report.reason.value,
        "waiting": list(report.waiting),
        "results": [result_json(result) for result in report.results],
    }


def report_lines(report: Report) -> list[dict[str, object]]:
    """One post as JSON lines, one per target (`send --json`); one line with no target if the post was unusable."""
    about = {"source": report.source, "published": report.published.isoformat() if report.published else None}
    if report.status is not None:
        return [{**about, "target": None, "status": report.status.value, "detail": report.detail}]
    reason = report.reason and report.reason.value
    return [{**about, "reason": reason, **result_json(result)} for result in report.results]


def problem_json(kind: str, url: str, exc: SendError) -> dict[str, object]:
    """Why a post (`kind` "source": a line with no target) or a feed (`kind` "feed") could not be used."""
    where: dict[str, object] = {kind: url, "target": None} if kind == "source" else {kind: url}
    return {**where, "status": exc.status.value, "detail": exc.detail, "failure": exc.failure}


def feed_summary(report: FeedReport) -> dict[str, object]:
    """Counts for the end of a run: entries, targets, each bucket, and what is worth retrying later."""
    results = [result for entry in report.entries for result in entry.results]
    buckets = {status.value: 0 for status in Status}
    for status in [*(r.status for r in results), *(e.status for e in report.entries if e.status is not None)]:
        buckets[status] += 1
    waiting = sum(len(entry.waiting) for entry in report.entries)
    return {
        "feed": report.url,
        "format": report.format.value,
        "listed": report.listed,
        "entries": sum(entry.reason is not Change.DELETED for entry in report.entries),
        "unreadable_entries": sum(entry.status is not None for entry in report.entries),
        "deleted": sum(entry.reason is Change.DELETED for entry in report.entries),
        "targets": len(results),
        **buckets,
        "retry_later": buckets[Status.ERROR] + waiting,  # errors, and targets waiting for their Retry-After
        "ok": report.ok,
    }


def feed_json(report: FeedReport) -> dict[str, object]:
    """A feed's run as one JSON object (the answer of `POST /send` with a feed)."""
    about = {"feed": report.feed, "url": report.url, "format": report.format.value, "listed": report.listed}
    return {**about, "ok": report.ok, "entries": [report_json(entry) for entry in report.entries]}


def _outcomes(results: Sequence[Result]) -> dict[str, Outcome]:
    return {
        result.target: Outcome(
            result.status, result.protocol and result.protocol.value, result.detail, result.retry_after
        )
        for result in results
    }


async def send_post(
    client: httpx.AsyncClient,
    url: str,
    previous: PostRecord | None,
    *,
    updated: str | None = None,
    published: datetime | None = None,
    gone_is_deletion: bool = True,
    all_links: bool = False,
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    budget: Budget | None = None,
    on_source: Callable[[Source, sendstate.Plan], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    now: datetime | None = None,
) -> tuple[Report, PostRecord | None]:
    """Send for one post as its record says (`sendstate.plan`); the report, and the record to keep (None: forget it).

    Without a record every link is notified, as `send` does. With one, a post that answers 410 Gone
    (when `gone_is_deletion`) is a deletion: the targets that have its mention are told once more.
    Raise `SendError` if the post cannot be read otherwise.
    """
    now = now or datetime.now(UTC)
    budget = budget or Budget(limits)
    try:
        async with asyncio.timeout_at(budget.deadline):
            source = await fetch_source(client, url, all_links=all_links, limits=limits, budget=budget)
    except TimeoutError:
        raise SendError(Status.ERROR, f"not done when the {limits.deadline:g} s deadline passed") from None
    except SendError as exc:
        if exc.http_status != 410 or previous is None or not gone_is_deletion:
            raise
        return await _deletion(client, url, previous, published, dry_run, limits, budget, on_source, on_result, now)
    plan = sendstate.plan(previous, source.targets, updated, now)
    if on_source is not None:
        on_source(source, plan)
    to_notify = Source(source.url, source.final_url, plan.notify)
    results = await notify(client, to_notify, dry_run=dry_run, limits=limits, on_result=on_result, budget=budget)
    kept = sendstate.record(previous, source.targets, updated, _outcomes(results), now)
    return Report(source.url, results, published=published, reason=plan.reason, waiting=plan.waiting), kept


async def _deletion(
    client: httpx.AsyncClient,
    url: str,
    previous: PostRecord,
    published: datetime | None,
    dry_run: bool,
    limits: Limits,
    budget: Budget,
    on_source: Callable[[Source, sendstate.Plan], None] | None,
    on_result: Callable[[Result], None] | None,
    now: datetime,
) -> tuple[Report, PostRecord | None]:
    # §3.1.4: "If the source URL was deleted, the sender SHOULD ... return HTTP 410 Gone"; its
    # receivers learn of it by fetching the source again when told, so each is told once more.
    plan = sendstate.plan_deletion(previous, now)
    source = Source(url, url, plan.notify)
    if on_source is not None:
        on_source(source, plan)
    results = await notify(client, source, dry_run=dry_run, limits=limits, on_result=on_result, budget=budget)
    kept = sendstate.record_deletion(previous, _outcomes(results), now)
    return Report(url, results, published=published, reason=plan.reason, waiting=plan.waiting), kept


async def answers_gone(client: httpx.AsyncClient, url: str, limits: Limits, budget: Budget) -> bool:
    """True when `url` answers 410 Gone; False for anything else, a failure to ask included."""
    try:
        async with asyncio.timeout(limits.target_timeout):
            page = await _fetch(client, budget, url, limits, Status.FAILED)
    except (SendError, TimeoutError):
        return False
    return page.status == 410


FEED_HEADERS: Final = {"Accept": FEED_ACCEPT, "Accept-Encoding": "identity"}


async def fetch_feed(
    client: httpx.AsyncClient, url: str, *, limits: Limits = DEFAULT_LIMITS, budget: Budget | None = None
) -> Feed:
    """Fetch a feed, or a page and the feed it names (read_feed); raise `SendError` if there is none."""
    if not is_http_url(url):
        raise SendError(Status.FAILED, f"the feed {url!r} is not an absolute http(s) URL")
    budget = budget or Budget(limits)
    given = url

    def where(found: str) -> str:
        # Messages are printed after the URL given: name another only when it is another.
        return "" if found == given else f"{found}: "

    try:
        async with asyncio.timeout(limits.target_timeout):
            for _ in range(2):  # the URL given, then the feed a page names
                page = await _fetch(client, budget, url, limits, Status.FAILED, FEED_HEADERS)
                if not 200 <= page.status < 300:
                    bucket = Status.ERROR if _transient(page.status) else Status.FAILED
                    who = "the feed" if page.url == given else page.url
                    what = f"{who} answered {page.status}{_retry_text(page.headers)}"
                    raise SendError(bucket, what, http_status=page.status)
                if len(page.body) >= limits.max_bytes:
                    logger.warning(
                        "feed %r is larger than %d bytes; entries after that are not seen", url, limits.max_bytes
                    )
                try:
                    # Parsing takes CPU time; a worker thread keeps the event loop moving meanwhile.
                    found = await _in_thread(read_feed, page.url, page.headers, page.body)
                except FeedError as exc:
                    raise SendError(Status.FAILED, f"{where(page.url)}{exc}") from None
                if isinstance(found, Feed):
                    return found
                url = found
    except TimeoutError:
        raise SendError(Status.ERROR, f"the feed gave no answer within {limits.target_timeout:g} s") from None
    raise SendError(Status.FAILED, f"{url}: the feed a page named is a page naming yet another feed")


async def send_feed(
    client: httpx.AsyncClient,
    feed_url: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
    all_links: bool = False,
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    state: State | None = None,
    on_feed: Callable[[Feed, int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_report: Callable[[Report], None] | None = None,
    on_record: Callable[[str, PostRecord | None], None] | None = None,
) -> FeedReport:
    """Read the feed, pick its entries (newest first) and send for each as `send_post` does for a post.

    Raise `SendError` if the feed cannot be read. Entries go one after the other, each with its
    targets in parallel, all within one budget. `on_feed` hears how many entries were picked. With
    a `state`, each post is sent as its record says, and each post the state knows that the feed no
    longer lists is asked for once: if it answers 410 Gone, its deletion is sent. `on_record` hears
    each post's new record as soon as it is known (None: forget the post).
    """
    budget = Budget(limits)
    feed = await fetch_feed(client, feed_url, limits=limits, budget=budget)
    entries = pick(feed.entries, since=since, limit=limit)
    if on_feed is not None:
        on_feed(feed, len(entries))
    remembered = state.posts if state is not None else {}
    reports = []

    def done(report: Report) -> None:
        if on_report is not None:
            on_report(report)
        reports.append(report)

    for entry in entries:
        try:
            report, kept = await send_post(
                client,
                entry.url,
                remembered.get(entry.url),
                updated=entry.updated.isoformat() if entry.updated else None,
                published=entry.published,
                gone_is_deletion=False,  # still listed: not deleted, whatever it answers now
                all_links=all_links,
                dry_run=dry_run,
                limits=limits,
                budget=budget,
                on_result=on_result,
            )
        except SendError as exc:
            done(Report(entry.url, (), exc.status, exc.detail, entry.published))
            continue
        if on_record is not None and state is not None:
            on_record(entry.url, kept)
        done(report)
    if state is not None:
        # A post that left the feed was deleted only if it answers 410; one that fell out of the
        # feed's window, or answers 404, keeps its record (Webmention §3.1.4 names 410 Gone).
        for url in sendstate.unlisted(state, (entry.url for entry in feed.entries)):
            if not await answers_gone(client, url, limits, budget):
                continue
            report, kept = await _deletion(
                client, url, state.posts[url], None, dry_run, limits, budget, None, on_result, datetime.now(UTC)
            )
            if on_record is not None:
                on_record(url, kept)
            done(report)
    return FeedReport(feed_url, feed.url, feed.format, len(feed.entries), tuple(reports))
