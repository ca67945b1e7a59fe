"""The outbound HTTP client: one per worker, shared by the proxy and the sender, policy enforced inside.

Every request's URL is checked against the `Policy` before it is sent (so every redirect hop is
checked too), and every new connection resolves the host once, checks every address, and
connects to a checked address; TLS still verifies the real host name. A second DNS lookup that
an attacker could answer differently (DNS rebinding) never happens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from pingforward import PROJECT_URL, __version__
from pingforward.config import Settings
from pingforward.policy import Policy

USER_AGENT = f"pingforward/{__version__} (+{PROJECT_URL})"
# RFC 9110 §7.6.3: gateways add Via. app.py refuses requests that carry it, so a forward URL
# that reaches this proxy under another name ends in an error instead of a loop.
VIA = "1.1 pingforward"


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, in the resolver's order, without duplicates."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: no such host
        raise httpcore.ConnectError(f"cannot resolve {host}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PolicyBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: Policy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolve = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port)
        for address in addresses:  # all of them: refuse a name with any non-global answer
            self._policy.check_address(ipaddress.ip_address(address.split("%")[0]))
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PolicyTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool dialling through the policy."""

    def __init__(
        self,
        policy: Policy,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        super().__init__(limits=limits)
        self._policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PolicyBackend(policy, resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(str(request.url))
        return await super().handle_async_request(request)


def make_client(settings: Settings) -> httpx.AsyncClient:
    """An AsyncClient that enforces the policy, never follows redirects by itself and ignores proxy settings."""
    return httpx.AsyncClient(
        transport=PolicyTransport(settings.policy, httpx.Limits(max_connections=200, max_keepalive_connections=50)),
        # No proxies or .netrc from the environment: we POST to URLs that strangers name.
        trust_env=False,
        follow_redirects=False,
        timeout=settings.timeout,
        headers={"User-Agent": USER_AGENT, "Via": VIA},
    )
