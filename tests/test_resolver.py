"""pingforward.net.resolver against a DNS server the test runs on 127.0.0.1: caching, sharing, timeouts, literals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pingforward.errors import ResolveError
from pingforward.net.resolver import LOOKUP_TIMEOUT, Resolver
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
        await asyncio.sleep(1.5)  # the retired channels close once past the lookup bound
        await resolver.aclose()
