"""Notify every page a post links to: a Webmention where the page has an endpoint, else a pingback.

The I/O around webmention.py: fetch the source once and each target once, discover, then POST.
`classify_webmention` and `classify_pingback` are pure; outcomes use Bridgy's buckets.
Specs: https://www.w3.org/TR/webmention/#sending-webmentions (§3.1)
and https://www.hixie.ch/specs/pingback/pingback (§3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from pingforward.pingback import Fault, FaultCode, Ping, is_http_url, parse_response, render_call
from pingforward.policy import Refused
from pingforward.webmention import Endpoint, Protocol, discover, extract_links, is_html, media_type

logger = logging.getLogger(__name__)

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_DETAIL: Final = 200
FETCH_HEADERS: Final = {
    "Accept": "text/html, application/xhtml+xml;q=0.9, */*;q=0.1",
    # Compressed answers are inflated here under the byte cap (see read_capped), but few are sent.
    "Accept-Encoding": "identity",
}


class Status(StrEnum):
    """Bridgy's buckets (bridgy tasks.py SendWebmentions), plus one for --dry-run."""

    SENT = "sent"  # accepted: any 2xx to a Webmention, a pingback string or fault 48
    SKIPPED = "skipped"  # nothing to notify: no endpoint, not an http(s) URL, refused address
    FAILED = "failed"  # permanent: 3xx or 4xx other than 429, a permanent fault
    ERROR = "error"  # transient, worth retrying: 5xx, 429, network errors, timeouts
    DISCOVERED = "discovered"  # dry run: an endpoint was found and nothing was sent


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one send may do. Each request also has the client's own timeout."""

    concurrency: int = 8  # targets handled at once
    per_host: int = 2  # requests in flight to one host name, endpoints included
    max_bytes: int = 1_000_000  # read of any page; the rest is ignored
    max_answer: int = 64 * 1024  # read of an endpoint's answer
    max_redirects: int = 10  # what the webmention.rocks receiver allows
    max_targets: int = 100  # links beyond this are skipped
    target_timeout: float = 30.0  # fetch, discovery and notification of one target
    deadline: float = 120.0  # the whole send


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


@dataclass(frozen=True, slots=True)
class Source:
    """The post: the URL as given, where it ended up, and the targets it links to."""

    url: str
    final_url: str
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Report:
    source: str
    results: tuple[Result, ...]

    @property
    def ok(self) -> bool:
        """True when nothing failed or errored."""
        return all(result.status not in (Status.FAILED, Status.ERROR) for result in self.results)


class SendError(Exception):
    """A page or endpoint could not be used; `status` is its bucket and the message says why."""

    def __init__(self, status: Status, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class _Answer:
    url: str  # after redirects, for a page
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _HostSlots:
    """At most `limit` requests in flight to each host name."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[str, asyncio.Semaphore] = {}

    def __call__(self, url: str) -> asyncio.Semaphore:
        host = (urlsplit(url).hostname or "").rstrip(".")
        return self._slots.setdefault(host, asyncio.Semaphore(self._limit))


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
    hosts: _HostSlots,
    method: str,
    url: str,
    *,
    limit: int,
    unusable: Status,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> _Answer:
    """One request and a bounded read of its answer; transport problems become `SendError`."""
    host = urlsplit(url).hostname or url
    try:
        request = client.build_request(method, url, content=content, headers=headers)
        # The sender starts requests and forwards none: Via is for intermediaries (RFC 9110
        # §7.6.3), and a pingforward proxy answers a request that carries ours with 508.
        request.headers.pop("via", None)
        async with hosts(url):
            response = await client.send(request, stream=True)
            try:
                body = await read_capped(response, limit)
            finally:
                await response.aclose()
        return _Answer(str(response.url), response.status_code, tuple(response.headers.multi_items()), body)
    except Refused as exc:  # the address policy, checked on every hop and every connection
        raise SendError(unusable, f"refused: {exc.reason}") from None
    except httpx.TimeoutException:
        raise SendError(Status.ERROR, f"{host}: no answer in time") from None
    except httpx.NetworkError:
        raise SendError(Status.ERROR, f"{host}: could not connect or the connection broke") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        raise SendError(unusable, f"unusable URL {url!r}: {exc}") from None
    except httpx.HTTPError as exc:  # a malformed answer, a proxy error...
        raise SendError(Status.ERROR, f"{host}: {type(exc).__name__}: {exc}") from None


async def _fetch(client: httpx.AsyncClient, hosts: _HostSlots, url: str, limits: Limits, unusable: Status) -> _Answer:
    """GET a page, following redirects ourselves so each hop waits for its host's slot."""
    for _ in range(limits.max_redirects + 1):
        answer = await _exchange(
            client, hosts, "GET", url, limit=limits.max_bytes, unusable=unusable, headers=FETCH_HEADERS
        )
        location = dict((name.lower(), value) for name, value in answer.headers).get("location")
        if answer.status not in REDIRECTS or location is None:
            return answer
        url = urljoin(answer.url, location.strip())
        if not is_http_url(url):
            raise SendError(unusable, f"redirected to {url!r}, not an http(s) URL")
    raise SendError(unusable, f"more than {limits.max_redirects} redirects")


async def fetch_source(
    client: httpx.AsyncClient, url: str, *, all_links: bool = False, limits: Limits = DEFAULT_LIMITS
) -> Source:
    """Fetch the post once and list the targets it links to; raise `SendError` if it cannot be used."""
    if not is_http_url(url):
        raise SendError(Status.FAILED, f"the source {url!r} is not an absolute http(s) URL")
    try:
        async with asyncio.timeout(limits.target_timeout):
            page = await _fetch(client, _HostSlots(1), url, limits, Status.FAILED)
    except TimeoutError:
        raise SendError(Status.ERROR, f"the source gave no page within {limits.target_timeout:g} s") from None
    if not 200 <= page.status < 300:
        raise SendError(
            Status.ERROR if _transient(page.status) else Status.FAILED, f"the source answered {page.status}"
        )
    if not is_html(page.headers):
        raise SendError(Status.FAILED, f"the source is {media_type(page.headers)}, not HTML")
    if len(page.body) >= limits.max_bytes:
        logger.warning("source %r is larger than %d bytes; links after that are not seen", url, limits.max_bytes)
    # Parsing up to max_bytes takes CPU time (about a second per MB); a worker thread keeps the
    # event loop, and the other requests of a server, moving meanwhile.
    targets = await asyncio.to_thread(
        extract_links, page.url, page.headers, page.body, all_links=all_links, aliases=(url,)
    )
    return Source(url, page.url, targets)


def _summary(body: bytes) -> str:
    """A short, printable account of an endpoint's answer: its JSON error or message, or its text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[key]) for key in ("error", "error_description", "message", "summary") if data.get(key)]
        text = ": ".join(parts)
    else:
        text = body.decode("utf-8", "replace")
        if text.lstrip().startswith("<"):  # an HTML or XML page says little in 200 characters
            text = ""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def classify_webmention(status: int, location: str | None, body: bytes) -> tuple[Status, str]:
    """The bucket and a description of an endpoint's answer to a Webmention POST."""
    summary = _summary(body)
    said = f": {summary}" if summary else ""
    if 200 <= status < 300:
        # §3.1.3: "Any 2xx response code MUST be considered a success." §3.2: a 201 carries the
        # Location of a status page; a 202 means the Webmention is queued.
        if status == 201 and location:
            return Status.SENT, f"created, status at {location}"
        return Status.SENT, ("accepted for processing" if status == 202 else "accepted") + said
    if 300 <= status < 400:
        # Following would turn the POST into a GET that looks like success (snarfed/bridgy#753).
        where = f" to {location}" if location else ""
        return Status.FAILED, f"the endpoint redirected{where} ({status}); a Webmention is not re-sent"
    if _transient(status):
        return Status.ERROR, f"the endpoint answered {status}{said}"
    return Status.FAILED, f"the endpoint refused it ({status}){said}"


# Pingback 1.0 §3 fault codes that mean "try again later" rather than "never".
TRANSIENT_FAULTS: Final = frozenset({FaultCode.UPSTREAM_ERROR, FaultCode.INTERNAL_ERROR})


def classify_pingback(status: int, body: bytes) -> tuple[Status, str]:
    """The bucket and a description of a pingback server's answer to pingback.ping."""
    try:
        text = parse_response(body)
    except Fault as fault:
        if fault.code in (FaultCode.PARSE_ERROR, FaultCode.INVALID_XMLRPC) or (
            fault.code == FaultCode.GENERIC and _transient(status)
        ):
            # Not an XML-RPC answer (or a generic fault from a failing server): the HTTP status decides.
            if _transient(status):
                return Status.ERROR, f"the pingback server answered {status}"
            if not 200 <= status < 300:
                return Status.FAILED, f"the pingback server refused it ({status})"
        message = " ".join(fault.message.split())[:MAX_DETAIL]
        if fault.code == FaultCode.ALREADY_REGISTERED:
            return Status.SENT, f"already registered (fault 48): {message}"
        bucket = Status.ERROR if fault.code in TRANSIENT_FAULTS else Status.FAILED
        return bucket, f"fault {int(fault.code)}: {message}"
    if not 200 <= status < 300:
        return (Status.ERROR if _transient(status) else Status.FAILED), f"the pingback server answered {status}"
    return Status.SENT, " ".join(text.split())[:MAX_DETAIL] or "accepted"


async def _webmention(
    client: httpx.AsyncClient, hosts: _HostSlots, endpoint: str, source: str, target: str, limits: Limits
) -> Result:
    # §3.1.3: a form-encoded POST with source and target, to the endpoint URL as discovered (its
    # query stays in the URL, rocks test 21). The client does not follow redirects.
    answer = await _exchange(
        client,
        hosts,
        "POST",
        endpoint,
        limit=limits.max_answer,
        unusable=Status.SKIPPED,
        content=urlencode({"source": source, "target": target}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json, */*;q=0.5"},
    )
    location = dict((name.lower(), value) for name, value in answer.headers).get("location")
    location = urljoin(endpoint, location.strip()) if location else None
    status, detail = classify_webmention(answer.status, location, answer.body)
    reported = location if answer.status == 201 else None
    return Result(target, status, detail, Protocol.WEBMENTION, endpoint, answer.status, reported)


async def _pingback(
    client: httpx.AsyncClient, hosts: _HostSlots, server: str, source: str, target: str, limits: Limits
) -> Result:
    # Pingback 1.0 §3: targetURI is "the target of the link, as given on the source page".
    answer = await _exchange(
        client,
        hosts,
        "POST",
        server,
        limit=limits.max_answer,
        unusable=Status.SKIPPED,
        content=render_call(Ping(source, target)),
        headers={"Content-Type": "text/xml", "Accept": "text/xml"},
    )
    status, detail = classify_pingback(answer.status, answer.body)
    return Result(target, status, detail, Protocol.PINGBACK, server, answer.status)


async def _notify(
    client: httpx.AsyncClient, hosts: _HostSlots, source: str, target: str, limits: Limits, dry_run: bool
) -> Result:
    if not is_http_url(target):
        return Result(target, Status.SKIPPED, "not an absolute http(s) URL")
    endpoint: Endpoint | None = None
    try:
        # One GET, kept for both protocols: webmention.rocks test 23 serves its page only once.
        page = await _fetch(client, hosts, target, limits, Status.SKIPPED)
        endpoint = await asyncio.to_thread(discover, page.url, page.headers, page.body)
        if endpoint is None:
            if _transient(page.status):
                return Result(target, Status.ERROR, f"the target answered {page.status}", http_status=page.status)
            what = f"the target answered {page.status} and" if page.status >= 400 else "the target"
            return Result(target, Status.SKIPPED, f"{what} advertises no Webmention or Pingback endpoint")
        if not is_http_url(endpoint.url):
            return Result(target, Status.SKIPPED, "the endpoint is not an http(s) URL", endpoint.protocol, endpoint.url)
        if dry_run:
            return Result(target, Status.DISCOVERED, "not sent (dry run)", endpoint.protocol, endpoint.url)
        send = _webmention if endpoint.protocol == Protocol.WEBMENTION else _pingback
        return await send(client, hosts, endpoint.url, source, target, limits)
    except SendError as exc:
        if endpoint is None:
            return Result(target, exc.status, exc.detail)
        return Result(target, exc.status, exc.detail, endpoint.protocol, endpoint.url)


async def notify(
    client: httpx.AsyncClient,
    source: Source,
    *,
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    on_result: Callable[[Result], None] | None = None,
) -> tuple[Result, ...]:
    """Notify each of the source's targets; results in link order, `on_result` as each one ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.deadline
    gate = asyncio.Semaphore(limits.concurrency)
    hosts = _HostSlots(limits.per_host)

    async def one(target: str) -> Result:
        try:
            async with asyncio.timeout_at(deadline):
                async with gate, asyncio.timeout(limits.target_timeout):
                    result = await _notify(client, hosts, source.url, target, limits, dry_run)
        except TimeoutError:
            if loop.time() >= deadline:
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
    source = await fetch_source(client, source_url, all_links=all_links, limits=limits)
    results = await notify(client, source, dry_run=dry_run, limits=limits, on_result=on_result)
    return Report(source.url, results)
