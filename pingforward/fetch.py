"""The spam checks' I/O: fetch a ping's source and target through the worker's transport, and decide.

`Pages` GETs a page once however many pings ask for it at the same time, and keeps what it read
briefly, within a bound in entries and bytes: one post linking 40 pages of a site sends 40 pings with
one source, all verified from one fetch. `Verifier` runs the checks of one ping within its own time
bound; verify.py decides. Specs: https://www.hixie.ch/specs/pingback/pingback (§3) and
https://www.w3.org/TR/webmention/#webmention-verification (§3.2.2: follow redirects, with a limit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx

from pingforward.config import Settings
from pingforward.errors import Failure, OutboundError, Refused, ResolveError
from pingforward.net.redirect import next_url
from pingforward.net.transport import LIMITS, USER_AGENT, PolicyTransport
from pingforward.pingback import Ping
from pingforward.verify import MAX_PAGE, Missing, Page, Refusal, Unread, judge, junk, read_page

logger = logging.getLogger(__name__)

# Asked before every GET with the page's host: False refuses the fetch (a reflector's bound, kept elsewhere).
FetchAllowed = Callable[[str], Awaitable[bool]]

MAX_REDIRECTS: Final = 3  # a shortlink to its permalink, and http to https, fit
# A page read stays this long: a burst of pings naming it (one post's links) is one fetch, and a
# copy-blog pinging again within a minute is answered without one. What could not be read is kept
# shorter: a sender that retries later gets a new look.
PAGE_SECONDS: Final = 60.0
UNREAD_SECONDS: Final = 10.0
MAX_ENTRIES: Final = 1024
MAX_BYTES: Final = 32 * 1024 * 1024  # of pages held, as `Page.size` counts them
# A page larger than this is read in a worker thread, so the event loop keeps answering meanwhile.
THREAD_BYTES: Final = 64 * 1024
HEADERS: Final = (
    ("User-Agent", USER_AGENT),
    ("Accept", "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"),
    # An uncompressed answer keeps the byte cap honest.
    ("Accept-Encoding", "identity"),
)


async def always(host: str) -> bool:
    """A `FetchAllowed` with no bound."""
    return True


class Pages:
    """Pages fetched for the checks, by URL: one GET at a time per URL, each result kept briefly."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        fetch_allowed: FetchAllowed = always,
        timeout: float = 10.0,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._fetch_allowed = fetch_allowed
        self._destination = transport.destination if isinstance(transport, PolicyTransport) else None
        self._timeout = timeout
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Page | Unread, int]] = OrderedDict()
        self._bytes = 0
        self._pending: dict[str, asyncio.Future[Page | Unread]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.fetches = 0  # GETs started, redirects included

    async def get(self, url: str) -> Page | Unread:
        """The page at `url`: from the cache, from the fetch already under way, or fetched now."""
        cached = self._cache.get(url)
        if cached is not None:
            if cached[0] > self._clock():
                self._cache.move_to_end(url)
                return cached[1]
            self._forget(url)
        pending = self._pending.get(url)
        if pending is None:
            pending = self._pending[url] = asyncio.get_running_loop().create_future()
            # Its own task: a ping that stops waiting (its deadline) cancels only its wait, and the
            # page still arrives for the others and for the cache.
            task = asyncio.get_running_loop().create_task(self._run(url, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(_cancel_unless_done, pending))  # a fetch cancelled at shutdown
        return await asyncio.shield(pending)

    async def _run(self, url: str, future: asyncio.Future[Page | Unread]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._fetch(url)
        except TimeoutError:
            result = Unread(Missing.UNREACHABLE, f"no page from {_host(url)} within {self._timeout:g} s")
        except Exception as exc:  # a bug of ours: every ping waiting for the page hears of it
            future.set_exception(exc)
            future.exception()
            return
        finally:
            del self._pending[url]
        self._store(url, result)
        future.set_result(result)

    def _store(self, url: str, result: Page | Unread) -> None:
        if isinstance(result, Unread) and result.missing is Missing.BOUND:
            return  # nothing was fetched: the bound is asked again next time
        size = result.size if isinstance(result, Page) else len(result.reason) + 100
        if size > self._max_bytes:
            return
        seconds = PAGE_SECONDS if isinstance(result, Page) or result.missing is Missing.GONE else UNREAD_SECONDS
        self._cache[url] = (self._clock() + seconds, result, size)
        self._bytes += size
        while len(self._cache) > self._max_entries or self._bytes > self._max_bytes:
            self._forget(next(iter(self._cache)))

    def _forget(self, url: str) -> None:
        self._bytes -= self._cache.pop(url)[2]

    async def _fetch(self, url: str) -> Page | Unread:
        """GET the page, following up to MAX_REDIRECTS redirects, each hop checked by the transport's policy."""
        from pingforward.send import read_capped  # the sender's bounded read; imported once a page is fetched

        for _ in range(MAX_REDIRECTS + 1):
            host = _host(url)
            # Counted by where the GET goes, so that many names for one victim share its bound.
            where = await self._destination(host) if self._destination is not None else None
            if not await self._fetch_allowed(where or host):
                return Unread(Missing.BOUND, f"too many fetches to {host} just now")
            self.fetches += 1
            try:
                response = await self._transport.handle_async_request(httpx.Request("GET", url, headers=HEADERS))
                try:
                    status = response.status_code
                    following = next_url("GET", status, url, response.headers.get("location"))
                    if following is not None:
                        url = following
                        continue
                    if status >= 500 or status in (408, 429):  # RFC 9110 §15.6: the server's trouble, for now
                        return Unread(Missing.UNREACHABLE, f"HTTP {status} from {host}")
                    if not 200 <= status < 300:  # 404, 410, and whatever else keeps the page from us
                        return Unread(Missing.GONE, f"HTTP {status} from {host}")
                    body = await read_capped(response, MAX_PAGE)
                    headers = response.headers
                finally:
                    await response.aclose()
            except Refused as exc:  # the address policy: such a source is none we may read
                return Unread(Missing.GONE, f"refused: {exc.reason}")
            except ResolveError as exc:
                return Unread(Missing.GONE if exc.no_such_name else Missing.UNREACHABLE, exc.reason)
            except OutboundError as exc:
                return Unread(Missing.GONE if exc.failure is Failure.URL else Missing.UNREACHABLE, exc.reason)
            except (httpx.InvalidURL, UnicodeError):  # UnicodeError: a host IDNA rejects, such as "xn--"
                return Unread(Missing.GONE, f"{url!r} cannot be requested")
            if len(body) > THREAD_BYTES:
                return await asyncio.to_thread(read_page, url, headers, body)
            return read_page(url, headers, body)
        return Unread(Missing.GONE, f"more than {MAX_REDIRECTS} redirects")

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _cancel_unless_done(future: asyncio.Future[Page | Unread], task: asyncio.Task[None]) -> None:
    if not future.done():
        future.cancel()


def _host(url: str) -> str:
    return urlsplit(url).hostname or "-"


@dataclass(frozen=True, slots=True)
class Checks:
    """Which checks run, from the settings: None turns the copy check off."""

    verify_source: bool = True
    copy_share: float | None = 0.5
    timeout: float = 1.5  # for fetching the source and the target, inside the ping's deadline


class Verifier:
    """The checks of one ping before it is forwarded; `verify` answers a `Refusal`, or None to forward it."""

    def __init__(self, pages: Pages, checks: Checks, own: httpx.AsyncBaseTransport | None = None) -> None:
        self.pages = pages
        self.checks = checks
        self._own = own  # a transport made for the pages alone, closed with them

    @classmethod
    def start(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport, fetch_allowed: FetchAllowed = always
    ) -> Verifier | None:
        """The worker's verifier, fetching through its `transport`; None when the settings turn the checks off."""
        if not settings.spam_checks:
            return None
        own = None
        if settings.allowed_hosts:
            # PINGFORWARD_ALLOWED_HOSTS names where pings go, not which blogs may ping: pages are read
            # under every other rule of the policy, on a pool of their own.
            policy = dataclasses.replace(settings.policy, allowed_hosts=frozenset())
            transport = own = PolicyTransport(policy, LIMITS, max_per_destination=settings.max_per_host)
        pages = Pages(transport, fetch_allowed=fetch_allowed, timeout=settings.verify_timeout)
        checks = Checks(settings.verify_source, settings.copy_share, settings.verify_timeout)
        return cls(pages, checks, own)

    async def aclose(self) -> None:
        await self.pages.aclose()
        if self._own is not None:
            await self._own.aclose()

    async def verify(self, ping: Ping, seconds: float) -> Refusal | None:
        """Check `ping` within `seconds` (and within the checks' own timeout)."""
        refusal = junk(ping)
        if refusal is not None or not self.checks.verify_source:
            return refusal
        seconds = min(seconds, self.checks.timeout)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds
        # The target is fetched beside the source, not after it: an honest ping waits for one round trip.
        target = None
        # A site cannot scrape itself (see verify.judge): a source on the target's own host needs no target,
        # and its fetch would only spend the host's fetch bound (a post linking its own site's pages).
        if self.checks.copy_share is not None and _host(ping.source) != _host(ping.target):
            target = loop.create_task(self.pages.get(ping.target))
        try:
            try:
                async with asyncio.timeout_at(give_up):
                    source = await self.pages.get(ping.source)
            except TimeoutError:
                source = Unread(Missing.UNREACHABLE, f"no page from {_host(ping.source)} within {seconds:g} s")
            target_page: Page | Unread | None = None
            if target is not None and isinstance(source, Page):
                try:
                    async with asyncio.timeout_at(give_up):
                        target_page = await target
                except TimeoutError:  # the copy check needs the target's text; without it, it is not made
                    target_page = None
            if isinstance(source, Page) and isinstance(target_page, Page) and len(source.visible) > THREAD_BYTES:
                # The copy check reads the source's text whole: a long one in a worker thread, as `read_page`.
                return await asyncio.to_thread(judge, ping, source, target_page, self.checks.copy_share)
            return judge(ping, source, target_page, self.checks.copy_share)
        finally:
            if target is not None:
                if not target.done():
                    target.cancel()  # only the wait: the fetch goes on for the cache
                elif not target.cancelled():
                    target.exception()  # seen: a source that failed the checks needs no target
