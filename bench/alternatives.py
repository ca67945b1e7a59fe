"""Other ways to carry pingforward's outbound connections, kept so that bench/README.md's numbers can be re-run.

Each factory builds the real app with a different transport under the same client class
(`pingforward.transport.Client`, which keeps no cookies) and the same URL hook, and every one
dials through `pingforward.transport.resolve`, so the address policy costs the same:

    .venv/bin/python bench/run.py --app alternatives:stock             # httpx's own pool (httpcore 1.0)
    .venv/bin/python bench/run.py --app alternatives:stock_wide        # the same, 1,000 connections
    .venv/bin/python bench/run.py --app alternatives:pool_with_cookies # pool.py under a plain AsyncClient
    .venv/bin/python bench/run.py --app alternatives:no_forward        # diagnosis: no outbound HTTP at all
    .venv/bin/python bench/run.py --app alternatives:no_network        # diagnosis: httpx, but no sockets
    /other/venv/bin/python bench/run.py --app alternatives:aiohttp_transport  # needs httpx-aiohttp
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import httpcore
import httpx
from starlette.applications import Starlette

import pingforward.app
from pingforward.config import Settings
from pingforward.forward import Outcome
from pingforward.pingback import Ping
from pingforward.policy import Policy
from pingforward.transport import LIMITS, USER_AGENT, VIA, Client, PolicyTransport, resolve


def _checked(policy: Policy) -> Callable[[str, int], Awaitable[list[str]]]:
    async def addresses(host: str, port: int) -> list[str]:
        found = await resolve(host, port)
        for address in found:
            policy.check_address(ipaddress.ip_address(address.split("%")[0]))
        return found

    return addresses


def _app_with(
    transport: Callable[[Settings], httpx.AsyncBaseTransport],
    client: type[httpx.AsyncClient] = Client,
    check_urls: bool = True,  # PolicyTransport checks URLs itself; the others get httpx's request hook
) -> Starlette:
    def make_client(settings: Settings) -> httpx.AsyncClient:
        policy = settings.policy

        async def check_url(request: httpx.Request) -> None:
            policy.check_url(str(request.url))

        return client(
            transport=transport(settings),
            event_hooks={"request": [check_url] if check_urls else []},
            trust_env=False,
            follow_redirects=False,
            timeout=settings.timeout,
            headers={"User-Agent": USER_AGENT, "Via": VIA},
        )

    pingforward.app.make_client = make_client  # type: ignore[attr-defined]  # the lifespan looks it up per start
    return pingforward.app.create_app()


class _PolicyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, dialling the addresses `resolve` checked (main's design before pool.py)."""

    def __init__(self, settings: Settings) -> None:
        self._resolve = _checked(settings.policy)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in await self._resolve(host, port):
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _httpcore_transport(limits: httpx.Limits, settings: Settings) -> httpx.AsyncBaseTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_PolicyBackend(settings),
    )
    return transport


def stock() -> Starlette:
    """httpx's default transport (httpcore's pool) with main's limits before pool.py."""
    return _app_with(partial(_httpcore_transport, httpx.Limits(max_connections=200, max_keepalive_connections=50)))


def stock_wide() -> Starlette:
    """httpcore's pool with room for the 1,000-ping burst."""
    return _app_with(partial(_httpcore_transport, httpx.Limits(max_connections=1000, max_keepalive_connections=100)))


def pool_with_cookies() -> Starlette:
    """pool.py under httpx's plain AsyncClient, which looks for cookies in every answer."""
    return _app_with(lambda settings: PolicyTransport(settings.policy, LIMITS), httpx.AsyncClient, check_urls=False)


def aiohttp_transport() -> Starlette:
    """httpx-aiohttp's transport: aiohttp's connector under httpx, resolving through the policy."""
    import aiohttp as aio  # type: ignore[import-not-found]
    from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found]

    class PolicyResolver(aio.abc.AbstractResolver):  # type: ignore[misc]
        def __init__(self, settings: Settings) -> None:
            self._resolve = _checked(settings.policy)

        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
            return [
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
                for address in await self._resolve(host, port)
            ]

        async def close(self) -> None:
            pass

    def transport(settings: Settings) -> httpx.AsyncBaseTransport:
        def session() -> aio.ClientSession:
            connector = aio.TCPConnector(limit=1000, limit_per_host=0, resolver=PolicyResolver(settings))
            return aio.ClientSession(connector=connector)

        return AiohttpTransport(client=session)  # type: ignore[no-any-return]

    return _app_with(transport)


# --- Not designs: the same app with layers cut away, to see what each layer costs (bench/README.md) ---


def no_forward() -> Starlette:
    """Everything up to forward(), which answers at once without HTTP: Starlette plus our own code."""

    async def delivered(client: httpx.AsyncClient, ping: Ping, url: str, *, client_ip: str, timeout: float) -> Outcome:
        return Outcome(f"Pingback from {ping.source} to {ping.target} was successful!", None, 202)

    pingforward.app.forward = delivered  # type: ignore[attr-defined]
    return pingforward.app.create_app()


class _Answered(httpx.AsyncBaseTransport):
    """A transport that answers every request at once with the sink's 202, without a socket."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        body = b'{"status":"queued","summary":"Webmention was queued for processing"}'
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        return httpx.Response(202, headers=headers, stream=httpx.ByteStream(body))


def no_network() -> Starlette:
    """forward() and the httpx client run, but the transport answers without a socket."""
    return _app_with(lambda settings: _Answered())
