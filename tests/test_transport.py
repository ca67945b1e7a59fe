"""The outbound client's connect-time policy, against real listeners on 127.0.0.1.

Host names here are never looked up for real: the resolver is a table, which is also how a DNS-rebinding
attacker's resolver is played.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trustme

from pingforward.config import DEFAULT_MAX_PER_HOST, Settings
from pingforward.errors import ConnectFailed, Refused, ResolveError
from pingforward.net.policy import Policy
from pingforward.net.pool import SHARE
from pingforward.net.transport import PolicyTransport, make_transport

LIMITS = httpx.Limits(max_connections=10)


class FakeDNS:
    """Answers lookups from a table and counts them."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise ResolveError(f"cannot resolve {host}")
        return self.table[host]


@pytest.fixture
def dns() -> FakeDNS:
    return FakeDNS()


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A tiny HTTP server on 127.0.0.1 that records each request head and answers 202."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], seen


def client(dns: FakeDNS, policy: Policy, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PolicyTransport(policy, LIMITS, ssl_context, dns), trust_env=False)


@pytest.mark.anyio
async def test_name_resolving_to_loopback_is_refused_before_connecting(
    dns: FakeDNS, listener: tuple[int, list[bytes]]
) -> None:
    port, seen = listener
    dns.table["rebind.test"] = ["127.0.0.1"]
    async with client(dns, Policy(allowed_ports=None)) as http:
        with pytest.raises(Refused, match="loopback address 127.0.0.1"):
            await http.post(f"http://rebind.test:{port}/wm")
    assert seen == [] and dns.lookups == ["rebind.test"]


@pytest.mark.anyio
async def test_any_refused_answer_refuses_the_name(dns: FakeDNS, listener: tuple[int, list[bytes]]) -> None:
    port, seen = listener
    dns.table["mixed.test"] = ["93.184.215.14", "127.0.0.1"]
    async with client(dns, Policy(allowed_ports=None)) as http:
        with pytest.raises(Refused):
            await http.post(f"http://mixed.test:{port}/wm")
    assert seen == []


@pytest.mark.anyio
async def test_connection_goes_to_the_checked_address(dns: FakeDNS, listener: tuple[int, list[bytes]]) -> None:
    # pinned.test exists only in the fake table: reaching the listener proves the connection used the
    # address that was checked, with no second lookup a rebinding resolver could answer differently.
    port, seen = listener
    dns.table["pinned.test"] = ["127.0.0.1"]
    async with client(dns, Policy(allowed_ports=None, allow_private_networks=True)) as http:
        response = await http.post(f"http://pinned.test:{port}/wm", content=b"x")
    assert response.status_code == 202
    assert dns.lookups == ["pinned.test"]
    assert b"host: pinned.test:" in seen[0].lower()


@pytest.mark.anyio
async def test_unknown_name_is_a_resolve_error(dns: FakeDNS) -> None:
    async with client(dns, Policy()) as http:
        with pytest.raises(ResolveError):
            await http.post("https://nowhere.test/wm")


@pytest.mark.anyio
async def test_url_rules_apply_to_every_request(dns: FakeDNS) -> None:
    async with client(dns, Policy(allowed_hosts=frozenset({"site.test"}))) as http:
        with pytest.raises(Refused, match="not allowed"):
            await http.post("https://other.test/wm")
    assert dns.lookups == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_listener(ca: trustme.CA) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("pinned.test").configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.anyio
async def test_tls_verifies_the_real_host_name(dns: FakeDNS, tls_listener: int, ca: trustme.CA) -> None:
    dns.table["pinned.test"] = ["127.0.0.1"]
    dns.table["impostor.test"] = ["127.0.0.1"]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with client(dns, Policy(allowed_ports=None, allow_private_networks=True), context) as http:
        assert (await http.get(f"https://pinned.test:{tls_listener}/")).status_code == 202
        # Same address, but the certificate is not for this name: connecting by IP must not skip the check.
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            await http.get(f"https://impostor.test:{tls_listener}/")


@pytest.mark.anyio
async def test_the_worker_transport_counts_for_metrics(dns: FakeDNS, listener: tuple[int, list[bytes]]) -> None:
    port, _ = listener
    dns.table["pinned.test"] = ["127.0.0.1"]
    transport = PolicyTransport(Policy(allowed_ports=None, allow_private_networks=True), LIMITS, resolver=dns)
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(f"http://pinned.test:{port}/wm", content=b"x")
        assert response.status_code == 202
        assert (transport.slots.in_use, transport.slots.waiting, transport.lookups) == (0, 0, {})
    worker = make_transport(Settings())
    assert (worker.slots._bulk, worker.slots._cap, worker.slots._share) == (4000, DEFAULT_MAX_PER_HOST, SHARE)
    await worker.aclose()
