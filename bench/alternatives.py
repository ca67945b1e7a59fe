"""Other ways to carry pingforward's outbound connections, kept so that bench/README.md's numbers can be re-run.

Each factory builds the real app with a different transport in place of `transport.make_transport`'s
(`forward()` sends every ping straight to it; POST /send's client gets it too), with the same URL check
in front, and every one dials through `pingforward.net.transport.resolve`, so the address policy costs the same:

    .venv/bin/python bench/run.py --app alternatives:stock             # httpx's own pool (httpcore 1.0)
    .venv/bin/python bench/run.py --app alternatives:stock_wide        # the same, 1,000 connections
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
import pingforward.endpoint
from pingforward.config import Settings
from pingforward.forward import Outcome
from pingforward.net.policy import Policy
from pingforward.net.transport import resolve
from pingforward.pingback import Ping


def _checked(policy: Policy) -> Callable[[str, int], Awaitable[list[str]]]:
    async def addresses(host: str, port: int) -> list[str]:
        found = await resolve(host, port)
        for address in found:
            policy.check_address(ipaddress.ip_address(address.split("%")[0]))
        return found

    return addresses


class _Checked(httpx.AsyncBaseTransport):
    """The policy's URL check in front of another transport, as PolicyTransport does it for pool.py."""

    def __init__(self, policy: Policy, inner: httpx.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(str(request.url))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _app_with(transport: Callable[[Settings], httpx.AsyncBaseTransport]) -> Starlette:
    def make_transport(settings: Settings) -> httpx.AsyncBaseTransport:
        return _Checked(settings.policy, transport(settings))

    pingforward.app.make_transport = make_transport  # type: ignore[attr-defined, assignment]  # the lifespan looks it up per start
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

    async def delivered(
        transport: httpx.AsyncBaseTransport,
        ping: Ping,
        url: str,
        *,
        client_ip: str,
        timeout: float,
    ) -> Outcome:
        return Outcome(f"Pingback from {ping.source} to {ping.target} was successful!", None, 202)

    pingforward.endpoint.forward = delivered  # type: ignore[attr-defined]
    return pingforward.app.create_app()


class _Answered(httpx.AsyncBaseTransport):
    """A transport that answers every request at once with the sink's 202, without a socket."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        body = b'{"status":"queued","summary":"Webmention was queued for processing"}'
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        return httpx.Response(202, headers=headers, stream=httpx.ByteStream(body))


def no_network() -> Starlette:
    """forward() and httpx's Request and Response run, but the transport answers without a socket."""
    return _app_with(lambda settings: _Answered())
