"""pingforward.net.resolver against a DNS server the test runs on 127.0.0.1: caching, sharing, timeouts, literals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from dnslib import RCODE

from pingforward.errors import ResolveError
from pingforward.net.resolver import ADDRESSES_PER_FAMILY, LOOKUP_TIMEOUT, Resolver
from pingforward.net.transport import destination_of
from tests.dns import Name, Zone, dns_server

pytestmark = pytest.mark.anyio

ZONE = {
    "site.test": Name([["11.22.33.44", "2001:4860:4860::8888"]]),
    "silent.test": Name(silent=True),
    "slow.test": Name([["11.22.33.45"]], delay=0.3),
}


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


@pytest.fixture
async def dns() -> AsyncIterator[tuple[Zone, Resolver]]:
    zone = Zone(dict(ZONE))
    with dns_server(zone) as (host, port):
        # A short lookup bound, so the silent name costs the suite little; the default is LOOKUP_TIMEOUT.
        resolver = Resolver(nameservers=[f"{host}:{port}"], timeout=0.5)
        yield zone, resolver
        await resolver.aclose()


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("11.22.33.44", "11.22.33.44"),
        ("0xb.22.33.44", "11.22.33.44"),  # inet_aton(3)'s legacy spellings of one address
        ("185999660", "11.22.33.44"),
        ("013.026.041.054", "11.22.33.44"),
        ("11.1450284", "11.22.33.44"),
        ("[::ffff:11.22.33.44]", "11.22.33.44"),  # IPv4-mapped: the same IPv4 destination
        ("[2001:4860:0:0::8888]", "2001:4860::8888"),
    ],
)
async def test_a_literal_needs_no_lookup_and_is_normalised(host: str, address: str) -> None:
    resolver = Resolver(nameservers=["127.0.0.1:9"])  # nothing listens there: a lookup would fail
    assert await resolver.resolve(host) == (address,)
    await resolver.aclose()


async def test_names_are_looked_up_once_and_shared(dns: tuple[Zone, Resolver]) -> None:
    zone, resolver = dns
    answers = await asyncio.gather(*(resolver.resolve("Site.Test.") for _ in range(20)))
    assert set(answers) == {("11.22.33.44", "2001:4860:4860::8888")}
    assert await resolver.resolve("site.test") == answers[0]
    assert zone.lookups("site.test") == 1


async def test_an_answer_with_ttl_0_is_still_kept_a_while(dns: tuple[Zone, Resolver]) -> None:
    zone, resolver = dns
    zone.names["zero.test"] = Name([["11.22.33.46"]], ttl=0)
    for _ in range(3):
        assert await resolver.resolve("zero.test") == ("11.22.33.46",)
    assert zone.lookups("zero.test") == 1


async def test_a_missing_name_is_an_error_and_cached_too(dns: tuple[Zone, Resolver]) -> None:
    zone, resolver = dns
    for _ in range(3):
        with pytest.raises(ResolveError, match="cannot resolve nowhere.test"):
            await resolver.resolve("nowhere.test")
    assert zone.lookups("nowhere.test") == 1


async def test_a_silent_name_costs_only_its_own_lookups(dns: tuple[Zone, Resolver]) -> None:
    zone, resolver = dns
    silent = [asyncio.ensure_future(resolver.resolve("silent.test")) for _ in range(50)]
    # Every other name is answered while the silent one is still pending: no pool of threads to starve.
    assert await resolver.resolve("slow.test") == ("11.22.33.45",)
    assert await resolver.resolve("site.test") == ("11.22.33.44", "2001:4860:4860::8888")
    assert not any(lookup.done() for lookup in silent)
    for lookup in silent:
        with pytest.raises(ResolveError, match="silent.test"):
            await lookup
    assert zone.lookups("silent.test") <= 2  # one lookup, which c-ares may have tried twice


async def test_a_waiter_that_gives_up_does_not_cancel_the_lookup(dns: tuple[Zone, Resolver]) -> None:
    zone, resolver = dns
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await resolver.resolve("slow.test")
    assert await resolver.resolve("slow.test") == ("11.22.33.45",)
    assert zone.lookups("slow.test") == 1


async def test_the_cache_is_bounded() -> None:
    # TTL 0: c-ares keeps no copy of its own, so what is looked up again is what this cache let go.
    zone = Zone({f"n{i}.test": Name([[f"11.22.33.{i}"]], ttl=0) for i in range(3)})
    with dns_server(zone) as (host, port):
        resolver = Resolver(nameservers=[f"{host}:{port}"], cache_size=2)
        for i in (0, 1, 2, 0):
            await resolver.resolve(f"n{i}.test")
        await resolver.aclose()
    assert (zone.lookups("n0.test"), zone.lookups("n1.test"), zone.lookups("n2.test")) == (2, 1, 1)


def test_the_default_lookup_bound_leaves_most_of_a_ping_s_time() -> None:
    from pingforward.config import DEFAULT_TIMEOUT

    assert LOOKUP_TIMEOUT <= DEFAULT_TIMEOUT / 3


@pytest.mark.parametrize(
    ("address", "destination"),
    [
        ("11.22.33.44", "11.22.33.44"),
        ("2001:4860:4860::8888", "2001:4860:4860::/64"),
        ("2001:4860:4860:0:ffff::1", "2001:4860:4860::/64"),  # the same /64: one site
        ("2001:4860:4860:1::1", "2001:4860:4860:1::/64"),
        ("::ffff:11.22.33.44", "11.22.33.44"),  # as a DNS answer may carry it: the IPv4 destination
        ("64:ff9b::b16:212c", "11.22.33.44"),  # NAT64 (RFC 6052): each IPv4 receiver its own
        ("64:ff9b::6358:4d42", "99.88.77.66"),
    ],
)
def test_an_ipv6_destination_is_its_64(address: str, destination: str) -> None:
    assert destination_of(address) == destination


async def test_a_channel_is_replaced_after_its_share_of_lookups() -> None:
    zone = Zone({f"r{n}.test": Name([[f"11.22.33.{n}"]]) for n in range(5)})
    with dns_server(zone) as (host, port):
        resolver = Resolver(nameservers=[f"{host}:{port}"], queries_per_channel=2, timeout=0.2)
        channels = set()
        for n in range(5):
            assert await resolver.resolve(f"r{n}.test") == (f"11.22.33.{n}",)
            channels.add(id(resolver._dns))
        assert len(channels) == 3  # 2 + 2 + 1 lookups
        assert not resolver._busy  # the replaced channels had no lookup left, and were closed
        await resolver.aclose()


@pytest.fixture
def server() -> Iterator[tuple[Zone, str]]:
    zone = Zone(dict(ZONE))
    with dns_server(zone) as (host, port):
        yield zone, f"{host}:{port}"


def quick(nameserver: str, **bounds: float) -> Resolver:
    """A resolver with bounds short enough for a test: answers fresh for 0.05 s, c-ares gives up after 0.2 s."""
    values = {"timeout": 1.0, "min_ttl": 0.05, "stale_wait": 0.1, "try_timeout": 0.2, "tries": 1, **bounds}
    return Resolver(nameservers=[nameserver], **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("outage", ["servfail", "silent"])
async def test_an_expired_answer_is_served_while_the_server_fails(server: tuple[Zone, str], outage: str) -> None:
    # RFC 8767: a blip of the DNS server costs nothing to a name already known.
    zone, nameserver = server
    zone.names["blip.test"] = Name([["11.22.33.46"], ["11.22.33.47"]], ttl=0)
    resolver = quick(nameserver, stale_ttl=0.3)
    assert await resolver.resolve("blip.test") == ("11.22.33.46",)
    await asyncio.sleep(0.1)  # expired
    zone.outage = outage
    for _ in range(3):
        assert await resolver.resolve("blip.test") == ("11.22.33.46",)
    assert resolver.lookups["stale"] == 3
    zone.outage = None
    await asyncio.sleep(0.4)  # past the stale answer's own 0.3 s: the name is asked for again
    assert await resolver.resolve("blip.test") == ("11.22.33.47",)
    await resolver.aclose()


async def test_a_name_gone_is_not_served_stale(server: tuple[Zone, str]) -> None:
    zone, nameserver = server
    zone.names["gone.test"] = Name([["11.22.33.46"]], ttl=0)
    resolver = quick(nameserver)
    await resolver.resolve("gone.test")
    await asyncio.sleep(0.1)
    del zone.names["gone.test"]  # NXDOMAIN is an answer (RFC 8767 §4 serves stale data only on failure)
    with pytest.raises(ResolveError, match="not found"):
        await resolver.resolve("gone.test")
    assert resolver.lookups["nxdomain"] == 1
    await resolver.aclose()


async def test_c_ares_own_timeout_is_not_remembered_as_the_answer(server: tuple[Zone, str]) -> None:
    zone, nameserver = server
    zone.names["later.test"] = Name([["11.22.33.46"]])
    resolver = quick(nameserver)  # c-ares gives up after 0.2 s, before the resolver's own 1 s bound
    zone.outage = "silent"
    with pytest.raises(ResolveError, match="Timeout while contacting DNS servers"):
        await resolver.resolve("later.test")
    zone.outage = None
    assert await resolver.resolve("later.test") == ("11.22.33.46",)
    assert (resolver.lookups["timeout"], resolver.lookups["answered"]) == (1, 1)
    await resolver.aclose()


async def test_an_unreachable_server_is_not_remembered_as_the_answer() -> None:
    zone = Zone({"back.test": Name([["11.22.33.46"]])})
    with dns_server(zone) as (host, port):
        pass  # stopped: nothing listens on its port now
    resolver = quick(f"{host}:{port}")
    with pytest.raises(ResolveError, match="back.test"):
        await resolver.resolve("back.test")
    with dns_server(zone, host, port):  # back on the same port
        assert await resolver.resolve("back.test") == ("11.22.33.46",)
    assert resolver.lookups["answered"] == 1 and resolver.lookups["unreachable"] + resolver.lookups["timeout"] == 1
    await resolver.aclose()


async def test_a_large_answer_over_tcp_keeps_a_handful_of_addresses_a_family(server: tuple[Zone, str]) -> None:
    zone, nameserver = server
    many = [f"11.{n >> 16}.{(n >> 8) & 255}.{n & 255}" for n in range(1, 4091)]
    zone.names["many.test"] = Name([[*many, *(f"2001:db8::{n:x}" for n in range(1, 21))]])
    resolver = quick(nameserver)
    addresses = await resolver.resolve("many.test")
    assert zone.tcp["many.test"] >= 1  # too large for UDP: asked again over TCP
    assert len(addresses) == 2 * ADDRESSES_PER_FAMILY
    assert sorted(":" in address for address in addresses) == [False] * 8 + [True] * 8
    await resolver.aclose()


async def test_lookups_are_counted_by_result(server: tuple[Zone, str]) -> None:
    zone, nameserver = server
    zone.names["broken.test"] = Name(rcode=RCODE.SERVFAIL)
    resolver = quick(nameserver)
    await resolver.resolve("site.test")
    await resolver.resolve("site.test")
    await resolver.resolve("11.22.33.44")  # a literal: no lookup
    for name in ("nowhere.test", "broken.test"):
        with pytest.raises(ResolveError):
            await resolver.resolve(name)
    assert resolver.lookups == {"answered": 1, "cached": 1, "nxdomain": 1, "servfail": 1}
    await resolver.aclose()


async def test_closing_gives_waiters_a_resolve_error(server: tuple[Zone, str]) -> None:
    zone, nameserver = server
    resolver = quick(nameserver)
    waiting = asyncio.ensure_future(resolver.resolve("silent.test"))
    await asyncio.sleep(0.05)
    await resolver.aclose()
    with pytest.raises(ResolveError, match="closing"):
        await waiting
