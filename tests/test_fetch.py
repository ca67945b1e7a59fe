"""fetch.py against real servers on 127.0.0.1, through the worker's own transport (policy, resolver, pool)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from pingforward.config import Settings
from pingforward.fetch import PAGE_SECONDS, Checks, Pages, Verifier
from pingforward.net.resolver import Resolver
from pingforward.net.transport import LIMITS, PolicyTransport, make_transport
from pingforward.pingback import FaultCode, Ping
from pingforward.verify import Missing, Page, Unread
from tests import pages
from tests.dns import Name, Zone, dns_server
from tests.servers import Site, free_port, serve_site

pytestmark = pytest.mark.anyio
HTML = [("Content-Type", "text/html; charset=utf-8")]


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as web:
        yield web


@asynccontextmanager
async def fetcher(settings: Settings, **options: object) -> AsyncIterator[Pages]:
    transport = make_transport(settings)
    async with transport:
        pages_ = Pages(transport, **options)  # type: ignore[arg-type]
        try:
            yield pages_
        finally:
            await pages_.aclose()


async def test_forty_pings_of_one_source_are_one_fetch(local_settings: Settings, site: Site) -> None:
    release = threading.Event()

    def slow() -> tuple[int, list[tuple[str, str]], bytes]:
        release.wait(5)  # every ping has asked by now: they must all share this one GET
        return 200, HTML, b"<a href='https://site.example/a'>a</a>"

    site.routes[("GET", "/post")] = slow
    async with fetcher(local_settings) as pages_:
        waiting = [asyncio.ensure_future(pages_.get(site.url("/post"))) for _ in range(40)]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.gather(*waiting)
        again = await pages_.get(site.url("/post"))  # and the cache answers a later one
    assert len(site.received("GET", "/post")) == 1
    assert all(isinstance(result, Page) and result is results[0] for result in results)
    assert again is results[0]


async def test_a_page_is_fetched_again_once_its_time_is_up(local_settings: Settings, site: Site) -> None:
    now = [0.0]
    site.routes[("GET", "/post")] = (200, HTML, b"<p>hello</p>")
    async with fetcher(local_settings, clock=lambda: now[0]) as pages_:
        await pages_.get(site.url("/post"))
        now[0] = PAGE_SECONDS - 1
        await pages_.get(site.url("/post"))
        assert len(site.received("GET", "/post")) == 1
        now[0] = PAGE_SECONDS + 1
        await pages_.get(site.url("/post"))
    assert len(site.received("GET", "/post")) == 2


async def test_the_cache_is_bounded_in_entries_and_bytes(local_settings: Settings, site: Site) -> None:
    for n in range(6):
        site.routes[("GET", f"/{n}")] = (200, HTML, b"<p>" + b" ".join(b"w%d" % i for i in range(50 * n)) + b"</p>")
    async with fetcher(local_settings, max_entries=3) as pages_:
        for n in range(6):
            await pages_.get(site.url(f"/{n}"))
        await pages_.get(site.url("/0"))  # evicted by the newer ones: fetched again
        await pages_.get(site.url("/5"))  # still there
    assert len(site.received("GET", "/0")) == 2 and len(site.received("GET", "/5")) == 1
    async with fetcher(local_settings, max_bytes=40_000) as pages_:
        for n in range(6):
            await pages_.get(site.url(f"/{n}"))
        held = pages_._bytes
    assert 0 < held <= 40_000


@pytest.mark.parametrize(
    ("status", "missing"),
    [
        (404, Missing.GONE),
        (410, Missing.GONE),
        (403, Missing.GONE),
        (500, Missing.UNREACHABLE),
        (503, Missing.UNREACHABLE),
        (429, Missing.UNREACHABLE),
    ],
)
async def test_statuses(local_settings: Settings, site: Site, status: int, missing: Missing) -> None:
    site.routes[("GET", "/post")] = (status, HTML, b"<a href='https://site.example/a'>a</a>")
    async with fetcher(local_settings) as pages_:
        result = await pages_.get(site.url("/post"))
    assert isinstance(result, Unread) and result.missing is missing and str(status) in result.reason


async def test_redirects_are_followed_up_to_three(local_settings: Settings, site: Site) -> None:
    site.routes[("GET", "/s/1")] = (301, [("Location", "/s/2")], b"")
    site.routes[("GET", "/s/2")] = (302, [("Location", site.url("/s/3"))], b"")
    site.routes[("GET", "/s/3")] = (307, [("Location", "/2024/post/")], b"")
    site.routes[("GET", "/2024/post/")] = (200, HTML, b"<a href='../target'>t</a>")
    site.routes[("GET", "/s/0")] = (308, [("Location", "/s/1")], b"")
    async with fetcher(local_settings) as pages_:
        three = await pages_.get(site.url("/s/1"))
        four = await pages_.get(site.url("/s/0"))
    assert isinstance(three, Page) and three.url == site.url("/2024/post/")
    assert site.url("/2024/target") in three.links  # resolved against where the page was read
    assert isinstance(four, Unread) and four.missing is Missing.GONE and "redirects" in four.reason


async def test_a_redirect_to_a_refused_address_is_not_followed(site: Site) -> None:
    # The defaults refuse loopback: the hop is checked by the policy, and nothing is fetched from it.
    site.routes[("GET", "/s")] = (302, [("Location", site.url("/secret"))], b"")
    settings = Settings.from_environ({"PINGFORWARD_ALLOWED_PORTS": "*"})
    async with fetcher(settings) as pages_:
        result = await pages_.get(site.url("/s"))
    assert isinstance(result, Unread) and result.missing is Missing.GONE
    assert "PINGFORWARD_ALLOW_PRIVATE_NETWORKS" in result.reason and not site.log


async def test_a_refused_connection_is_for_now(local_settings: Settings) -> None:
    async with fetcher(local_settings) as pages_:
        result = await pages_.get(f"http://127.0.0.1:{free_port()}/post")
    assert isinstance(result, Unread) and result.missing is Missing.UNREACHABLE


@pytest.mark.parametrize("url", ["http://xn--/", "http://xn--a/post", "http://xn--zz-/"])
async def test_a_host_that_is_no_valid_idn_is_gone(local_settings: Settings, url: str) -> None:
    # httpx refuses to build the request (IDNA rejects the A-label): nothing is looked up or sent.
    async with fetcher(local_settings) as pages_:
        result = await pages_.get(url)
    assert isinstance(result, Unread) and result.missing is Missing.GONE and "cannot be requested" in result.reason


async def test_a_hanging_source_is_given_up_in_time(local_settings: Settings, site: Site) -> None:
    stop = threading.Event()
    site.routes[("GET", "/hang")] = lambda: (stop.wait(5), (200, HTML, b""))[1]
    try:
        async with fetcher(local_settings, timeout=0.3) as pages_:
            result = await pages_.get(site.url("/hang"))
    finally:
        stop.set()
    assert isinstance(result, Unread) and result.missing is Missing.UNREACHABLE and "0.3 s" in result.reason


async def test_names_that_do_not_exist_are_gone_and_silent_ones_are_for_now(local_settings: Settings) -> None:
    # Through the real resolver (c-ares), asking a DNS server that answers NXDOMAIN or nothing.
    with dns_server(Zone({"silent.example": Name(silent=True)})) as (host, port):
        resolver = Resolver(nameservers=[f"{host}:{port}"], timeout=0.5)

        async def resolve(name: str, port: int) -> tuple[str, ...]:
            return await resolver.resolve(name)

        async with PolicyTransport(local_settings.policy, LIMITS, resolver=resolve) as transport:
            pages_ = Pages(transport)
            gone = await pages_.get("http://no-such-host.example/post")
            silent = await pages_.get("http://silent.example/post")
        await resolver.aclose()
    assert isinstance(gone, Unread) and gone.missing is Missing.GONE
    assert isinstance(silent, Unread) and silent.missing is Missing.UNREACHABLE


async def test_past_the_fetch_bound_nothing_is_fetched(local_settings: Settings, site: Site) -> None:
    site.routes[("GET", "/post")] = (200, HTML, b"<p>hello</p>")
    asked: list[str] = []

    async def allowed(host: str) -> bool:
        asked.append(host)
        return len(asked) > 1

    async with fetcher(local_settings, fetch_allowed=allowed) as pages_:
        first = await pages_.get(site.url("/post"))
        second = await pages_.get(site.url("/post"))  # a refusal by the bound is not kept
    assert isinstance(first, Unread) and first.missing is Missing.BOUND
    assert isinstance(second, Page) and asked == ["127.0.0.1", "127.0.0.1"]
    assert len(site.received("GET", "/post")) == 1


async def test_the_verifier_fetches_source_and_target_together(local_settings: Settings, site: Site) -> None:
    # The copy on another host than the target's (a site cannot copy itself).
    with serve_site("127.0.0.2") as scraper:
        await _copy_refused(local_settings, site, scraper)


async def _copy_refused(local_settings: Settings, site: Site, scraper: Site) -> None:
    target = site.url("/2024/03/weather-station/")
    both = threading.Barrier(2, timeout=3)  # each answer waits until the other request has arrived

    def meeting(body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        both.wait()
        return 200, HTML, body

    scraper.routes[("GET", "/copy")] = lambda: meeting(pages.scraper_copy(target))
    site.routes[("GET", "/2024/03/weather-station/")] = lambda: meeting(pages.wordpress_post())
    async with fetcher(local_settings) as pages_:
        refusal = await Verifier(pages_, Checks()).verify(Ping(scraper.url("/copy"), target), 5.0)
    assert refusal is not None and refusal.code == FaultCode.ACCESS_DENIED and refusal.name == "copy"


async def test_the_verifier_gives_up_on_the_target_but_not_the_ping(local_settings: Settings, site: Site) -> None:
    target = site.url("/slow-target")
    stop = threading.Event()
    site.routes[("GET", "/copy")] = (200, HTML, pages.scraper_copy(target))
    site.routes[("GET", "/slow-target")] = lambda: (stop.wait(5), (200, HTML, pages.wordpress_post()))[1]
    try:
        async with fetcher(local_settings) as pages_:
            refusal = await Verifier(pages_, Checks(timeout=0.3)).verify(Ping(site.url("/copy"), target), 5.0)
    finally:
        stop.set()
    assert refusal is None  # no target text in time: no copy check, and the link is there


async def test_pings_waiting_for_a_fetch_are_not_left_hanging_at_shutdown(local_settings: Settings, site: Site) -> None:
    stop = threading.Event()
    site.routes[("GET", "/hang")] = lambda: (stop.wait(5), (200, HTML, b""))[1]
    try:
        async with fetcher(local_settings) as pages_:
            waiting = asyncio.ensure_future(pages_.get(site.url("/hang")))
            await asyncio.sleep(0.1)
            await pages_.aclose()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, 2)
    finally:
        stop.set()


async def test_many_names_for_one_address_share_its_fetch_bound(local_settings: Settings, site: Site) -> None:
    # A wildcard DNS entry gives an attacker any number of names for one victim: the bound counts where
    # the GET goes, so every name here asks for the same destination, the victim's address.
    site.routes[("GET", "/post")] = (200, HTML, b"<p>hello</p>")
    port = int(site.url("/").split(":")[2].split("/")[0])

    async def resolve(name: str, port: int) -> tuple[str, ...]:
        return ("127.0.0.1",)

    asked: list[str] = []

    async def allowed(key: str) -> bool:
        asked.append(key)
        return True

    async with PolicyTransport(local_settings.policy, LIMITS, resolver=resolve) as transport:
        pages_ = Pages(transport, fetch_allowed=allowed)
        for n in range(3):
            assert isinstance(await pages_.get(f"http://n{n}.victim.example:{port}/post"), Page)
        await pages_.aclose()
    assert asked == ["127.0.0.1"] * 3


async def test_a_source_on_the_targets_own_host_costs_no_target_fetch(local_settings: Settings, site: Site) -> None:
    # A site cannot scrape itself, so a post linking its own site's pages spends no fetch on each target.
    target = site.url("/notes/1")
    site.routes[("GET", "/post")] = (200, HTML, f'<p><a href="{target}">a note</a></p>'.encode())
    async with fetcher(local_settings) as pages_:
        assert await Verifier(pages_, Checks()).verify(Ping(site.url("/post"), target), 5.0) is None
    assert len(site.received("GET", "/post")) == 1 and not site.received("GET", "/notes/1")
