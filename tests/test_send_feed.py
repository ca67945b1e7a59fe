"""`pingforward send --feed` end to end on 127.0.0.1: a blog with feeds of each format, targets that
advertise a Webmention endpoint, a Pingback server, both or neither; hostile feeds; POST /send feed=."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sys
import threading
import xmlrpc.client
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from pingforward.app import create_app
from pingforward.cli import main
from pingforward.config import Settings
from pingforward.feed import FeedFormat
from pingforward.net.transport import make_client
from pingforward.send import Limits, SendError, Status, fetch_feed
from pingforward.send_route import MAX_SENDS
from tests import servers
from tests.servers import Answer, Site

TOKEN = "feed-send-token-0123456789"


def html(body: str, *headers: tuple[str, str]) -> Answer:
    return 200, [("Content-Type", "text/html; charset=utf-8"), *headers], body.encode()


def post(*hrefs: str) -> Answer:
    links = " ".join(f'<a href="{href}">link</a>' for href in hrefs)
    return html(
        f'<html><body><nav><a href="/">home</a></nav><article class="h-entry"><div class="e-content">{links}'
        "</div></article></body></html>"
    )


# Posts by day of January 2026, and the targets each links to.
POSTS = {3: ("/t/wm", "/t/pb"), 2: ("/t/both", "/t/none"), 1: ("/t/wm",)}
ORDER = (1, 3, 2)  # the order the feeds list them in: not the newest first


def build_blog(site: Site) -> None:
    site.routes[("GET", "/t/wm")] = html("<p>wm</p>", ("Link", "</wm>; rel=webmention"))
    site.routes[("POST", "/wm")] = (202, [], b"")
    site.routes[("GET", "/t/pb")] = html("<p>pb</p>", ("X-Pingback", site.url("/xmlrpc")))
    ok = xmlrpc.client.dumps(("Pingback registered.",), methodresponse=True).encode()
    site.routes[("POST", "/xmlrpc")] = (200, [("Content-Type", "text/xml")], ok)
    # Both: the Webmention endpoint wins.
    site.routes[("GET", "/t/both")] = html('<link rel="webmention" href="/wm2">', ("X-Pingback", site.url("/xmlrpc")))
    site.routes[("POST", "/wm2")] = (201, [("Location", "/status/1")], b"")
    site.routes[("GET", "/t/none")] = html("<p>nothing</p>")
    for day, targets in POSTS.items():
        site.routes[("GET", f"/posts/{day}")] = post(*targets)

    items = "".join(
        f"<item><title>{day}</title><link>{site.url(f'/posts/{day}')}</link>"
        f"<pubDate>{['', 'Thu', 'Fri', 'Sat'][day]}, 0{day} Jan 2026 10:00:00 GMT</pubDate></item>"
        for day in ORDER
    )
    rss = f'<?xml version="1.0"?><rss version="2.0"><channel><title>Blog</title>{items}</channel></rss>'
    site.routes[("GET", "/feed.xml")] = (200, [("Content-Type", "application/rss+xml")], rss.encode())
    entries = "".join(
        f'<entry><id>urn:{day}</id><title>{day}</title><link href="/posts/{day}"/>'
        f"<updated>2026-01-0{day}T10:00:00Z</updated></entry>"
        for day in ORDER
    )
    atom = f'<feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title>{entries}</feed>'
    site.routes[("GET", "/atom.xml")] = (200, [("Content-Type", "application/atom+xml")], atom.encode())
    json_feed = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "Blog",
        "items": [
            {"id": str(day), "url": site.url(f"/posts/{day}"), "date_published": f"2026-01-0{day}T10:00:00Z"}
            for day in ORDER
        ],
    }
    site.routes[("GET", "/feed.json")] = (
        200,
        [("Content-Type", "application/feed+json")],
        json.dumps(json_feed).encode(),
    )
    h_entries = "".join(
        f'<article class="h-entry"><a class="u-url p-name" href="/posts/{day}">{day}</a>'
        f'<time class="dt-published" datetime="2026-01-0{day}T10:00:00Z">{day} Jan</time></article>'
        for day in ORDER
    )
    site.routes[("GET", "/notes")] = html(f'<main class="h-feed">{h_entries}</main>')
    # The home page names its Atom feed.
    site.routes[("GET", "/")] = html(
        '<html><head><link rel="alternate" type="application/atom+xml" href="/atom.xml"></head>'
        '<body><a href="/posts/1">a post</a></body></html>'
    )


@pytest.fixture
def blog() -> Iterator[Site]:
    with servers.serve_site() as site:
        build_blog(site)
        yield site


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["send", "--json", *argv], environ=servers.LOCAL_ENV)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        pytest.param("/feed.xml", FeedFormat.RSS, id="rss2"),
        pytest.param("/atom.xml", FeedFormat.ATOM, id="atom"),
        pytest.param("/feed.json", FeedFormat.JSON, id="json-feed"),
        pytest.param("/notes", FeedFormat.HFEED, id="h-feed"),
        pytest.param("/", FeedFormat.ATOM, id="home-page-names-its-feed"),
    ],
)
def test_each_feed_format_end_to_end(blog: Site, capsys: pytest.CaptureFixture[str], path: str, kind: str) -> None:
    code, lines, _ = run(capsys, "--feed", blog.url(path))
    assert code == 0
    *results, summary = lines
    assert [(r["source"], r["target"], r["status"], r["protocol"]) for r in results] == [
        (blog.url("/posts/3"), blog.url("/t/wm"), "sent", "webmention"),
        (blog.url("/posts/3"), blog.url("/t/pb"), "sent", "pingback"),
        (blog.url("/posts/2"), blog.url("/t/both"), "sent", "webmention"),
        (blog.url("/posts/2"), blog.url("/t/none"), "skipped", None),
        (blog.url("/posts/1"), blog.url("/t/wm"), "sent", "webmention"),
    ]
    assert results[0]["published"] == "2026-01-03T10:00:00+00:00"
    assert results[2]["location"] == blog.url("/status/1")
    assert summary == {
        "summary": {
            "feed": blog.url("/atom.xml" if path == "/" else path),
            "format": kind,
            "listed": 3,
            "entries": 3,
            "unreadable_entries": 0,
            "targets": 5,
            "sent": 4,
            "skipped": 1,
            "failed": 0,
            "error": 0,
            "discovered": 0,
            "deleted": 0,
            "retry_later": 0,
            "ok": True,
        }
    }
    assert [m.form for m in blog.received("POST", "/wm")] == [
        {"source": [blog.url("/posts/3")], "target": [blog.url("/t/wm")]},
        {"source": [blog.url("/posts/1")], "target": [blog.url("/t/wm")]},
    ]
    (ping,) = blog.received("POST", "/xmlrpc")
    assert xmlrpc.client.loads(ping.body) == ((blog.url("/posts/3"), blog.url("/t/pb")), "pingback.ping")
    assert [m.form for m in blog.received("POST", "/wm2")] == [
        {"source": [blog.url("/posts/2")], "target": [blog.url("/t/both")]}
    ]


def test_text_output_since_and_limit(blog: Site, capsys: pytest.CaptureFixture[str]) -> None:
    feed = blog.url("/feed.xml")
    assert main(["send", "--feed", feed, "--limit", "1"], environ=servers.LOCAL_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"== {blog.url('/posts/3')} (2026-01-03)"
    assert out[1].split() == ["STATUS", "VIA", "TARGET", "DETAIL"]
    assert [line.split()[:3] for line in out[2:4]] == [
        ["sent", "webmention", blog.url("/t/wm")],
        ["sent", "pingback", blog.url("/t/pb")],
    ]
    assert out[-1] == "1 of 3 entries, 2 targets: 2 sent"

    assert main(["send", "--dry-run", "--feed", feed, "--since", "2026-01-02"], environ=servers.LOCAL_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("==")] == [
        f"== {blog.url('/posts/3')} (2026-01-03)",
        f"== {blog.url('/posts/2')} (2026-01-02)",
    ]
    assert out[-1] == "2 of 3 entries, 4 targets: 1 skipped, 3 discovered"
    assert len(blog.received("POST", "/wm")) == 1  # the dry run sent nothing


def test_failures_make_the_exit_status(blog: Site, capsys: pytest.CaptureFixture[str]) -> None:
    blog.routes[("GET", "/posts/4")] = post("/t/broken", "/t/flood")
    blog.routes[("GET", "/t/broken")] = html("<p>b</p>", ("Link", "</broken>; rel=webmention"))
    blog.routes[("POST", "/broken")] = (503, [("Retry-After", "120")], b"")
    blog.routes[("GET", "/t/flood")] = html("<p>f</p>", ("X-Pingback", blog.url("/wp-xmlrpc")))
    flood = xmlrpc.client.Fault(429, "You are posting comments too quickly. Slow down.")
    blog.routes[("POST", "/wp-xmlrpc")] = (200, [], xmlrpc.client.dumps(flood, methodresponse=True).encode())
    feed = {"version": "https://jsonfeed.org/version/1.1", "items": [{"url": "/posts/4"}, {"url": "/posts/gone"}]}
    blog.routes[("GET", "/bad.json")] = (200, [("Content-Type", "application/feed+json")], json.dumps(feed).encode())

    code, lines, _ = run(capsys, "--feed", blog.url("/bad.json"))
    assert code == 1
    *results, summary = lines
    assert [(r["target"], r["status"], r["detail"]) for r in results] == [
        (blog.url("/t/broken"), "error", "the endpoint answered 503; retry after 120 s"),
        (blog.url("/t/flood"), "error", "fault 429: You are posting comments too quickly. Slow down."),
        (None, "failed", "the source answered 404"),
    ]
    assert (results[0]["retry_after"], results[1]["fault_code"]) == (120, 429)
    assert {
        key: summary["summary"][key]
        for key in ("entries", "unreadable_entries", "targets", "error", "failed", "retry_later")
    } == {
        "entries": 2,
        "unreadable_entries": 1,
        "targets": 2,
        "error": 2,
        "failed": 1,
        "retry_later": 2,
    }

    code, lines, err = run(capsys, "--feed", blog.url("/nothing-here"))
    assert (code, lines) == (
        1,
        [
            {
                "feed": blog.url("/nothing-here"),
                "status": "failed",
                "detail": "the feed answered 404",
                "failure": None,
            }
        ],
    )
    assert "answered 404" in err


def test_the_request_budget_covers_the_whole_feed(blog: Site, capsys: pytest.CaptureFixture[str]) -> None:
    # The feed, then posts/3 and its two targets (2 requests each): 6 requests; then nothing.
    code, lines, _ = run(capsys, "--feed", blog.url("/feed.xml"), "--max-requests", "6")
    assert code == 1
    assert len(blog.log) == 6
    *results, _summary = lines
    assert [(r["source"], r["status"]) for r in results] == [
        (blog.url("/posts/3"), "sent"),
        (blog.url("/posts/3"), "sent"),
        (blog.url("/posts/2"), "error"),
        (blog.url("/posts/1"), "error"),
    ]
    assert results[-1]["detail"] == "not tried: this call's 6 outbound requests are spent"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="neither"),
        pytest.param(["https://blog.example/p", "--feed", "https://blog.example/feed"], id="both"),
        pytest.param(["https://blog.example/p", "--limit", "2"], id="limit-without-feed"),
        pytest.param(["--feed", "https://blog.example/feed", "--since", "last week"], id="bad-date"),
        pytest.param(["--feed", "https://blog.example/feed", "--limit", "0"], id="bad-limit"),
        pytest.param(["--feed", "https://blog.example/feed", "--max-requests", "x"], id="bad-budget"),
    ],
)
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["send", *argv], environ={})
    assert caught.value.code == 2
    assert capsys.readouterr().out == ""


# Hostile feeds: each answered within the caps on size, time and entities.


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(replace(Settings.from_environ(servers.LOCAL_ENV), timeout=5.0)) as client:
        yield client


ITEM = b"<item><link>https://blog.example/p</link><description>" + b"x" * 1000 + b"</description></item>"


@pytest.mark.anyio
async def test_huge_and_compressed_feeds_are_read_to_the_cap(blog: Site, client: httpx.AsyncClient) -> None:
    items = b"".join(ITEM.replace(b"/p<", b"/p%d<" % n) for n in range(3000))
    huge = b'<rss version="2.0"><channel>' + items + b"</channel></rss>"
    blog.routes[("GET", "/huge.xml")] = (200, [("Content-Type", "application/rss+xml")], huge)
    feed = await fetch_feed(client, blog.url("/huge.xml"), limits=Limits(max_bytes=100_000))
    assert 0 < len(feed.entries) < 100  # what fits in 100 kB, read as a truncated feed
    bomb = gzip.compress(b'<rss version="2.0"><channel>' + ITEM + b" " * 50_000_000)
    blog.routes[("GET", "/bomb.xml")] = (
        200,
        [("Content-Type", "application/rss+xml"), ("Content-Encoding", "gzip")],
        bomb,
    )
    feed = await fetch_feed(client, blog.url("/bomb.xml"), limits=Limits(max_bytes=100_000))
    assert [entry.url for entry in feed.entries] == ["https://blog.example/p"]


def test_entity_laden_feed_is_refused(blog: Site, capsys: pytest.CaptureFixture[str]) -> None:
    laughs = b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + b"x" * 100_000 + b'">\n]>\n'
    laughs += b'<rss version="2.0"><channel><item><link>/posts/1</link><title>' + b"&a;" * 100_000
    laughs += b"</title></item></channel></rss>"
    blog.routes[("GET", "/laughs.xml")] = (200, [("Content-Type", "application/rss+xml")], laughs)
    code, lines, err = run(capsys, "--feed", blog.url("/laughs.xml"))
    assert code == 1
    assert lines[0]["status"] == "failed"
    assert "declares XML entities" in err
    assert [item.path for item in blog.log] == ["/laughs.xml"]  # no entry was fetched


@pytest.mark.anyio
async def test_post_send_refuses_feeds_shaped_as_no_feed_is(blog: Site, app_client: httpx.AsyncClient) -> None:
    # 1 MB of 100,000 nested elements: seconds of feedparser's CPU, in a thread that outlived the call.
    nested = b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><entry><link href="/posts/1"/>'
    nested = (nested + b"<content type='xhtml'>" + b"<div>" * 100_000 + b"</div>" * 100_000)[:1_000_000]
    blog.routes[("GET", "/nested.xml")] = (200, [("Content-Type", "application/atom+xml")], nested)
    answers = await asyncio.gather(
        *(app_client.post("/send", data={"feed": blog.url("/nested.xml")}, headers=AUTH) for _ in range(4))
    )
    assert [answer.status_code for answer in answers] == [422] * 4
    assert all("nests elements more than 100 deep" in answer.json()["error"] for answer in answers)
    assert {item.path for item in blog.log} == {"/nested.xml"}


@contextmanager
def streaming_server() -> Iterator[tuple[str, threading.Event]]:
    """GET /endless: a feed that never ends; GET /stall: half a feed, then silence until the test ends."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self.wfile.write(
                    b"%x\r\n%s\r\n" % (len(b'<rss version="2.0"><channel>'), b'<rss version="2.0"><channel>')
                )
                self.wfile.flush()
                if self.path == "/stall":
                    stop.wait(10)  # bounded: the test's timeout is far shorter
                    return
                for _ in range(100_000):  # bounded: 100 MB at most
                    if stop.is_set():
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(ITEM), ITEM))
            except OSError:
                return

    server = ThreadingHTTPServer((servers.LOCALHOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{servers.LOCALHOST}:{server.server_address[1]}", stop
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.anyio
async def test_endless_and_stalling_feeds_end_at_the_caps(client: httpx.AsyncClient) -> None:
    with streaming_server() as (base, _):
        feed = await fetch_feed(client, f"{base}/endless", limits=Limits(max_bytes=50_000))
        assert [entry.url for entry in feed.entries] == ["https://blog.example/p"]
        with pytest.raises(SendError) as caught:
            await fetch_feed(client, f"{base}/stall", limits=Limits(target_timeout=0.3))
        assert caught.value.status == Status.ERROR
        assert "within 0.3 s" in caught.value.detail


# POST /send with feed=, and the bound on calls served at once.


@pytest.fixture
async def app_client() -> AsyncIterator[httpx.AsyncClient]:
    settings = replace(Settings.from_environ(servers.LOCAL_ENV), send_token=TOKEN, timeout=5.0)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pf.test", timeout=30) as http:
            yield http


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.anyio
async def test_post_send_feed(blog: Site, app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/send", data={"feed": blog.url("/"), "since": "2026-01-02", "limit": "5"}, headers=AUTH
    )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["url"], answer["format"], answer["listed"], answer["ok"]) == (blog.url("/atom.xml"), "atom", 3, True)
    assert [(entry["source"], entry["published"]) for entry in answer["entries"]] == [
        (blog.url("/posts/3"), "2026-01-03T10:00:00+00:00"),
        (blog.url("/posts/2"), "2026-01-02T10:00:00+00:00"),
    ]
    assert [r["status"] for r in answer["entries"][1]["results"]] == ["sent", "skipped"]
    for data in ({"feed": blog.url("/"), "since": "soon"}, {"feed": blog.url("/"), "limit": "-1"}):
        assert (await app_client.post("/send", data=data, headers=AUTH)).status_code == 400
    bad = await app_client.post("/send", data={"feed": blog.url("/t/none")}, headers=AUTH)
    assert bad.status_code == 422
    assert "names no feed" in bad.json()["error"]


@pytest.mark.anyio
async def test_post_send_serves_a_bounded_number_at_once(blog: Site, app_client: httpx.AsyncClient) -> None:
    release = threading.Event()

    def slow_post() -> Answer:
        release.wait(10)  # bounded: released as soon as the extra call has been answered
        return post("/t/none")

    blog.routes[("GET", "/slow")] = slow_post
    calls = [
        asyncio.ensure_future(app_client.post("/send", data={"source": blog.url("/slow")}, headers=AUTH))
        for _ in range(MAX_SENDS)
    ]
    try:
        for _ in range(500):  # bounded: until every call is waiting on the slow page
            if len(blog.received("GET", "/slow")) == MAX_SENDS:
                break
            await asyncio.sleep(0.01)
        extra = await app_client.post("/send", data={"source": blog.url("/slow")}, headers=AUTH)
    finally:
        release.set()
    assert extra.status_code == 503
    assert extra.headers["retry-after"] == "10"
    assert [(await call).status_code for call in calls] == [200] * MAX_SENDS
    # Once they are done, calls are served again.
    again = await app_client.post("/send", data={"source": blog.url("/posts/1")}, headers=AUTH)
    assert again.status_code == 200


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_names_the_entry(
    blog: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["send", "--feed", blog.url("/feed.xml"), "--limit", "2"], environ=servers.LOCAL_ENV) == 0
    shown = terminal.getvalue()
    assert "rss feed " + blog.url("/feed.xml") + ": 2 of 3 entries" in shown
    assert "entry 1/2 [2] sent " in shown
    assert "entry 2/2 [1] " in shown
    assert shown.endswith("\r\x1b[K")  # cleared at the end
    assert "\x1b" not in capsys.readouterr().out
