"""The sender end to end on 127.0.0.1: real servers in threads, the real client, the real proxy.

A stdlib HTTP server plays the web (source post, targets, Webmention receivers, webmention.rocks
style pages); pingforward itself, started with the Procfile's command, is the pingback server of
one target, so the sender's Pingback fallback and the proxy's Webmention forwarding talk to each other.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import quote

import httpx
import pytest

from pingforward.config import Settings
from pingforward.net.transport import make_client
from pingforward.send import Limits, Status, fetch_source, send
from pingforward.webmention import Protocol
from tests import servers
from tests.servers import Answer, Site

TOKEN = "e2e-send-token-0123456789"


def local_settings() -> Settings:
    """Settings for talking to 127.0.0.1 on random ports, which the address policy refuses by default."""
    return replace(Settings.from_environ(servers.LOCAL_ENV), timeout=5.0)


def html(body: str, *headers: tuple[str, str], status: int = 200) -> Answer:
    return status, [("Content-Type", "text/html; charset=utf-8"), *headers], body.encode()


@pytest.fixture
def site() -> Iterator[Site]:
    with servers.serve_site() as web:
        yield web


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    """pingforward itself, started with the Procfile's command, with POST /send on; its base URL."""
    with servers.proxy({**servers.LOCAL_ENV, "PINGFORWARD_SEND_TOKEN": TOKEN}) as base:
        yield base


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(local_settings()) as client:
        yield client


def four_targets(site: Site, proxy: str) -> None:
    """A post linking to a Webmention target, a pingback-only target served by the proxy, a
    target with no endpoint, and one whose endpoint fails; plus a nav link that is not the post's."""
    site.routes[("GET", "/post")] = html(
        f"""<!doctype html><html><head><title>Post</title></head><body>
        <nav><a href="/about">about</a></nav>
        <article class="h-entry"><h1 class="p-name">Post</h1><div class="e-content">
        <p><a href="/wm-target?id=1">webmention</a>, <a href="{site.url("/pb-target")}">pingback</a>,
        <a href="/plain">plain</a>, <a href="/broken">broken</a>, <a href="#top">top</a></p>
        </div></article></body></html>"""
    )
    site.routes[("GET", "/wm-target?id=1")] = html("<p>wm</p>", ("Link", '</wm-endpoint>; rel="webmention"'))
    site.routes[("POST", "/wm-endpoint")] = (202, [], b"")
    forward = quote(site.url("/pb-receiver"), safe="")
    site.routes[("GET", "/pb-target")] = html(
        f'<html><head><link rel="pingback" href="{proxy}/?forward={forward}" /></head><body>pb</body></html>'
    )
    site.routes[("POST", "/pb-receiver")] = (
        200,
        [("Content-Type", "application/json")],
        b'{"result": "Webmention was successful"}',
    )
    site.routes[("GET", "/plain")] = html("<p>nothing to see</p>")
    site.routes[("GET", "/broken")] = html("<p>broken</p>", ("Link", "</broken-endpoint>; rel=webmention"))
    site.routes[("POST", "/broken-endpoint")] = (500, [("Content-Type", "text/plain")], b"database is down")


def assert_four_targets_notified(site: Site, source_reads: int = 2) -> None:
    """`source_reads`: the sender reads the post once, and the proxy once more to check that the post links to
    the target it is pinged about; POST /send, in the proxy itself, hands that target its Webmention directly."""
    (mention,) = site.received("POST", "/wm-endpoint")
    assert mention.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert mention.form == {"source": [site.url("/post")], "target": [site.url("/wm-target?id=1")]}
    # The proxy turned our pingback into this Webmention.
    (forwarded,) = site.received("POST", "/pb-receiver")
    assert forwarded.form == {"source": [site.url("/post")], "target": [site.url("/pb-target")]}
    assert len(site.received("POST", "/broken-endpoint")) == 1
    assert site.received("GET", "/about") == []
    assert [item.path for item in site.log if item.method == "GET"].count("/post") == source_reads


@pytest.mark.anyio
async def test_webmention_pingback_via_proxy_nothing_and_failure(
    site: Site, proxy: str, client: httpx.AsyncClient
) -> None:
    four_targets(site, proxy)
    report = await send(client, site.url("/post"))
    assert [(r.target, r.status, r.protocol) for r in report.results] == [
        (site.url("/wm-target?id=1"), Status.SENT, Protocol.WEBMENTION),
        (site.url("/pb-target"), Status.SENT, Protocol.PINGBACK),
        (site.url("/plain"), Status.SKIPPED, None),
        (site.url("/broken"), Status.ERROR, Protocol.WEBMENTION),
    ]
    assert report.results[1].endpoint is not None and report.results[1].endpoint.startswith(proxy)
    assert report.results[1].detail == "Webmention was successful"
    assert report.results[3].http_status == 500
    assert "database is down" in report.results[3].detail
    assert not report.ok
    assert_four_targets_notified(site)


@pytest.mark.anyio
async def test_post_send_endpoint(site: Site, proxy: str) -> None:
    four_targets(site, proxy)
    async with httpx.AsyncClient(timeout=30) as http:
        refused = await http.post(f"{proxy}/send", data={"source": site.url("/post")})
        assert refused.status_code == 401
        assert site.log == []  # nothing fetched for an unauthorized request
        response = await http.post(
            f"{proxy}/send", data={"source": site.url("/post")}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 200
    answer = response.json()
    assert answer["source"] == site.url("/post")
    assert answer["ok"] is False
    assert [(r["target"], r["status"]) for r in answer["results"]] == [
        (site.url("/wm-target?id=1"), "sent"),
        (site.url("/pb-target"), "sent"),
        (site.url("/plain"), "skipped"),
        (site.url("/broken"), "error"),
    ]
    assert_four_targets_notified(site, source_reads=1)
    # The proxy is the pingback server of /pb-target: the call sent the Webmention it forwards to
    # itself, in its own budget, instead of a pingback to itself.
    assert "where this proxy's own pingback endpoint forwards" in answer["results"][1]["detail"]


@pytest.mark.anyio
async def test_post_send_never_fetches_the_proxy_itself(site: Site, proxy: str) -> None:
    port = proxy.rsplit(":", 1)[1]
    spellings = [f"http://{host}:{port}" for host in ("127.0.0.1", "127.1", "2130706433", "[::ffff:127.0.0.1]")]
    own_pages = [f"{base}{path}" for base in spellings for path in ("/", "/healthz", "/?forward=x")]
    links = "".join(f'<a href="{url}">x</a>' for url in own_pages)
    site.routes[("GET", "/post")] = html(f'<article class="h-entry"><div class="e-content">{links}</div></article>')
    feed = "".join(f"<item><link>{url}</link></item>" for url in [site.url("/post"), *own_pages])
    site.routes[("GET", "/feed.xml")] = (
        200,
        [("Content-Type", "application/rss+xml")],
        f"<rss><channel>{feed}</channel></rss>".encode(),
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=30) as http:
        for base in spellings:
            answer = await http.post(f"{proxy}/send", data={"source": f"{base}/"}, headers=auth)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"].endswith("is this proxy itself")
        answer = await http.post(f"{proxy}/send", data={"feed": site.url("/feed.xml")}, headers=auth)
    assert answer.status_code == 200
    entries = answer.json()["entries"]
    assert len(entries) == 1 + len(own_pages)
    assert all(entry["detail"].endswith("is this proxy itself") for entry in entries[1:])
    results = entries[0]["results"]
    assert [r["status"] for r in results] == ["skipped"] * len(own_pages)
    assert all(r["detail"].endswith("is this proxy itself") for r in results)


BAD_HOSTS = ["xn--zz.example", "xn--abc.example", "xn--ls8h.la", "💩.la", "a..b.example", "ex ample.com"]


@pytest.mark.anyio
async def test_post_send_answers_every_host_spelling_without_a_500(site: Site, proxy: str) -> None:
    """An xn-- label that is no Punycode, a code point IDNA refuses, an emoji: in the source, the feed, a
    redirect and a feed's entry, each is the sender's "failed" or "skipped" bucket with words."""
    site.routes[("GET", "/moved")] = (302, [("Location", "http://xn--zz.example/post")], b"")
    links = "".join(f'<a href="http://{host}/">x</a>' for host in BAD_HOSTS)
    site.routes[("GET", "/post")] = html(f'<article class="h-entry"><div class="e-content">{links}</div></article>')
    items = "".join(f"<item><link>http://{host}/p</link></item>" for host in BAD_HOSTS)
    site.routes[("GET", "/feed.xml")] = (
        200,
        [("Content-Type", "application/rss+xml")],
        f"<rss><channel>{items}</channel></rss>".encode(),
    )
    forms = [
        *({"source": f"http://{host}/"} for host in BAD_HOSTS),
        *({"feed": f"http://{host}/feed"} for host in BAD_HOSTS),
        {"source": site.url("/moved")},
        {"feed": site.url("/moved")},
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=30) as http:
        for form in forms:
            answer = await http.post(f"{proxy}/send", data=form, headers=auth)
            assert answer.status_code in (422, 502), (form, answer.text)
            assert answer.json()["error"], form
        targets = (await http.post(f"{proxy}/send", data={"source": site.url("/post")}, headers=auth)).json()
        entries = (await http.post(f"{proxy}/send", data={"feed": site.url("/feed.xml")}, headers=auth)).json()
    assert {r["status"] for r in targets["results"]} <= {"skipped", "error"}
    assert all(r["detail"] for r in targets["results"])
    assert {entry["status"] for entry in entries["entries"]} <= {"failed", "error"}
    assert all(entry["detail"] for entry in entries["entries"])
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{proxy}/healthz")).status_code == 200


def test_cli_subprocess(site: Site, proxy: str) -> None:
    four_targets(site, proxy)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PINGFORWARD_")}
    result = subprocess.run(
        [sys.executable, "-m", "pingforward", "send", "--json", site.url("/post")],
        env={**environ, **servers.LOCAL_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr  # one target errored
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["target"], line["status"]) for line in lines] == [
        (site.url("/wm-target?id=1"), "sent"),
        (site.url("/pb-target"), "sent"),
        (site.url("/plain"), "skipped"),
        (site.url("/broken"), "error"),
    ]
    assert_four_targets_notified(site)


# webmention.rocks discovery tests served locally: the page markup follows the rules in
# https://webmention.rocks/; each receiver accepts one POST, decoys ("/error") record a failure.


def rocks_site(site: Site) -> dict[int, str]:
    """Install a selection of rocks tests; return, per test, the endpoint path that must be POSTed to."""
    pages = {
        1: ([("Link", "</test/1/webmention>; rel=webmention")], "", ""),
        7: ([("LinK", f"<{site.url('/test/7/webmention')}>; rel=webmention")], "", ""),
        10: ([("Link", f'<{site.url("/test/10/webmention")}>; rel="webmention somethingelse"')], "", ""),
        11: (
            [("Link", '</test/11/webmention>; rel="webmention"')],
            '<link rel="webmention" href="/test/11/webmention/error">',
            '<a rel="webmention" href="/test/11/webmention/error">x</a>',
        ),
        13: (
            [],
            '<!-- <link rel="webmention" href="/test/13/webmention/error"> -->',
            '<!-- <a rel="webmention" href="/test/13/webmention/error">x</a> -->'
            '<a rel="webmention" href="/test/13/webmention">x</a>',
        ),
        15: ([], '<link rel="webmention" href="">', ""),
        16: (
            [],
            "",
            '<a href="/test/16/webmention" rel="webmention">x</a>'
            '<link rel="webmention" href="/test/16/webmention/error">',
        ),
        19: (
            [("Link", '</test/19/webmention/error>; rel="other", </test/19/webmention>; rel="webmention"')],
            "",
            "",
        ),
        20: ([], '<link rel="webmention">', '<a href="/test/20/webmention" rel="webmention">x</a>'),
        21: ([], '<link rel="webmention" href="/test/21/webmention?query=yes">', ""),
        22: ([], '<link rel="webmention" href="22/webmention">', ""),
    }
    endpoints = {number: f"/test/{number}/webmention" for number in pages}
    endpoints[15] = "/test/15"
    endpoints[21] = "/test/21/webmention?query=yes"
    for number, (headers, head, body) in pages.items():
        site.routes[("GET", f"/test/{number}")] = html(
            f"<!doctype html><html><head><title>Test {number}</title>{head}</head>"
            f'<body><div class="h-entry"><div class="e-content">{body}</div></div></body></html>',
            *headers,
        )
        site.routes[("POST", endpoints[number])] = (202, [], b"")
        site.routes[("POST", f"/test/{number}/webmention/error")] = (400, [], b"decoy")

    # Test 23: /test/23/page redirects (relative Location) to a page that can be fetched once and
    # names a relative endpoint that accepts one POST.
    page_key, endpoint_key = secrets.token_hex(4), secrets.token_hex(4)
    served: list[str] = []

    def one_time_page() -> Answer:
        served.append(page_key)
        if len(served) > 1:
            return 410, [("Content-Type", "text/plain")], b"Code expired"
        return html("<p>23</p>", ("Link", f'<webmention-endpoint/{endpoint_key}>; rel="webmention"'))

    site.routes[("GET", "/test/23/page")] = (302, [("Location", f"page/{page_key}")], b"")
    site.routes[("GET", f"/test/23/page/{page_key}")] = one_time_page
    site.routes[("POST", f"/test/23/page/webmention-endpoint/{endpoint_key}")] = (202, [], b"")
    endpoints[23] = f"/test/23/page/webmention-endpoint/{endpoint_key}"

    links = "".join(
        f'<a href="{site.url(f"/test/{number}/page" if number == 23 else f"/test/{number}")}">{number}</a> '
        for number in endpoints
    )
    site.routes[("GET", "/rocks")] = html(f'<article class="h-entry"><div class="e-content">{links}</div></article>')
    return endpoints


@pytest.mark.anyio
async def test_rocks_discovery_end_to_end(site: Site, client: httpx.AsyncClient) -> None:
    endpoints = rocks_site(site)
    report = await send(client, site.url("/rocks"))
    assert {r.target: r.status for r in report.results} == {
        site.url(f"/test/{number}/page" if number == 23 else f"/test/{number}"): Status.SENT for number in endpoints
    }
    for number, path in endpoints.items():
        target = site.url(f"/test/{number}/page" if number == 23 else f"/test/{number}")
        (mention,) = site.received("POST", path)
        # The target as linked (for 23, not where it redirected); 21's query stays in the URL only.
        assert mention.form == {"source": [site.url("/rocks")], "target": [target]}, number
    assert [item.path for item in site.log if item.path.endswith("/error")] == []


@pytest.mark.anyio
async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(site: Site, client: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b'<a href="https://a.example/">a</a>' + b" " * 50_000_000, compresslevel=9)
    site.routes[("GET", "/bomb")] = (200, [("Content-Type", "text/html"), ("Content-Encoding", "gzip")], bomb)
    tracemalloc.start()
    try:
        source = await fetch_source(client, site.url("/bomb"), limits=Limits(max_bytes=100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.targets == ("https://a.example/",)
    assert peak < 5_000_000  # inflating it whole would take 50 MB
