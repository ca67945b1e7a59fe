"""Outbound HTTP: one transport per worker, policy enforced inside. The proxy's `forward()` sends each
ping straight to it; the sender and `check` use an `httpx.AsyncClient` over it (`make_client`).

Every request's URL is checked against the `Policy` before it is sent (so every redirect hop is
checked too), and every new connection resolves the host once, checks every address, and
connects to a checked address; TLS still verifies the real host name. A second DNS lookup that
an attacker could answer differently (DNS rebinding) never happens. The connections themselves
are pool.py's, not httpcore's (bench/README.md has the numbers behind that).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import ssl
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import httpx

from pingforward import PROJECT_URL, __version__
from pingforward.config import Settings
from pingforward.errors import BrokenAnswer, ConnectFailed, Failure, OutboundError, OutboundTimeout
from pingforward.net.policy import Policy, embedded_ipv4
from pingforward.net.pool import Pool, Slots
from pingforward.net.resolver import Resolver

USER_AGENT = f"pingforward/{__version__} (+{PROJECT_URL})"
# RFC 9110 §7.6.3: gateways add Via. app.py refuses requests that carry it, so a forward URL
# that reaches this proxy under another name ends in an error instead of a loop.
VIA = "1.1 pingforward"
# The bulk of the outbound slots per worker (pool.Slots), which every destination draws on beyond its
# guaranteed share (pool.SHARE): four times the most one destination may hold (config.MAX_PER_HOST_LIMIT),
# so a burst of 1,000 pings to one slow receiver goes out at once (bench/README.md, "Sizing") while two
# or three that hang leave a quarter or more of it, and every other destination its share, to everyone
# else. Idle connections are dropped after 4 s, before the 5 s after which uvicorn, Apache and Node
# close them themselves; at 100 the one idle longest is closed.
LIMITS = httpx.Limits(max_connections=4000, max_keepalive_connections=100, keepalive_expiry=4.0)

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]


@functools.lru_cache(maxsize=4096)
def destination_of(address: str) -> str:
    """The destination an address counts against for the per-destination limit.

    An IPv6 address stands for its /64: one host or site is commonly given a whole /64 (RFC 7421),
    so 2^64 addresses of one hanging receiver must not count as 2^64 destinations. One that carries
    an IPv4 destination (mapped, NAT64, 6to4) counts as that IPv4 address.
    """
    if ":" not in address:
        return address
    ip = ipaddress.IPv6Address(address.split("%")[0])
    inner = embedded_ipv4(ip)
    if inner is not None:
        return str(inner)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class PolicyTransport(httpx.AsyncBaseTransport):
    """pool.py's connection pool, with every URL and every dialled address checked by the policy."""

    def __init__(
        self,
        policy: Policy,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolve | None = None,
        max_per_destination: int | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = Resolver() if resolver is None else None
        self._resolve = resolver or self._lookup
        self._pool = Pool(
            self._checked_addresses,
            max_connections=sys.maxsize if limits.max_connections is None else limits.max_connections,
            max_per_destination=max_per_destination,
            destination_of=destination_of,
            max_idle=sys.maxsize if limits.max_keepalive_connections is None else limits.max_keepalive_connections,
            keepalive_expiry=5.0 if limits.keepalive_expiry is None else limits.keepalive_expiry,
            ssl_context=ssl_context,
        )

    @property
    def slots(self) -> Slots:
        """The pool's outbound slots: `in_use`, `waiting` and `bulk_in_use` count requests, for metrics."""
        return self._pool.slots

    @property
    def lookups(self) -> Counter[str]:
        """Name lookups by result (resolver.Resolver.lookups), for metrics; empty with a resolver given in."""
        return Counter() if self._resolver is None else self._resolver.lookups

    async def destination(self, host: str) -> str | None:
        """The destination (`destination_of`) a request to `host` goes to, from its cached lookup; None if it
        has none. Bounds per destination count this, not the name: any number of names (a wildcard DNS
        entry) can point at one victim."""
        try:
            addresses = await self._resolve(host, 0)
        except OutboundError:
            return None
        return destination_of(addresses[0]) if addresses else None

    async def _lookup(self, host: str, port: int) -> Sequence[str]:
        assert self._resolver is not None
        return await self._resolver.resolve(host)

    async def _checked_addresses(self, host: str, port: int) -> Sequence[str]:
        addresses = await self._resolve(host, port)
        self._policy.check_addresses(addresses)  # all of them: refuse a name with any non-global answer
        return addresses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(str(request.url))
        try:
            return await self._pool.handle_async_request(request)
        except httpx.TransportError as exc:  # from a pool stood in for in tests (respx): ours, as the pool's own
            raise outbound_error(exc, request.url.host) from exc

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._resolver is not None:
            await self._resolver.aclose()


def outbound_error(exc: httpx.TransportError, host: str) -> OutboundError:
    """httpx's name for a failed exchange as the network layer's own (errors.OutboundError)."""
    if isinstance(exc, httpx.TimeoutException):
        return OutboundTimeout(f"no answer from {host} in time")
    if isinstance(exc, httpx.ConnectError):
        return ConnectFailed(f"could not connect to {host}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return OutboundError(f"cannot send that request to {host}", Failure.URL)
    return BrokenAnswer(f"broken exchange with {host}")


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class Client(httpx.AsyncClient):
    """An AsyncClient that keeps no cookies.

    One client serves every ping, so a cookie set by one receiver would ride along on pings from
    other blogs. Not looking for them also spares httpx building a cookiejar request and an email
    message from every answer, a third of the client's own cost per request (bench/README.md).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


def make_transport(settings: Settings) -> PolicyTransport:
    """The worker's one connection pool, with the policy inside; `forward` sends pings straight to it."""
    return PolicyTransport(settings.policy, LIMITS, max_per_destination=settings.max_per_host)


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An AsyncClient that enforces the policy, never follows redirects by itself and ignores proxy settings.

    Give it the worker's `transport` to share its connections; closing the client closes it.
    """
    if transport is None:
        # PINGFORWARD_ALLOWED_HOSTS names where pings are forwarded to (make_transport's policy);
        # the sender and `check` fetch and notify other sites, under every other rule.
        transport = PolicyTransport(dataclasses.replace(settings.policy, allowed_hosts=frozenset()), LIMITS)
    return Client(
        transport=transport,
        # No proxies or .netrc from the environment: we POST to URLs that strangers name.
        trust_env=False,
        follow_redirects=False,
        timeout=settings.timeout,
        headers={"User-Agent": USER_AGENT, "Via": VIA},
    )
