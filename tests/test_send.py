"""The sender: pure outcome tables, then whole sends against respx-mocked sites."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import xmlrpc.client
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from pingforward.config import Settings
from pingforward.net.transport import make_client
from pingforward.send import (
    Limits,
    Report,
    Result,
    SendError,
    Status,
    _in_thread,
    classify_pingback,
    classify_webmention,
    fetch_source,
    notify,
    origins,
    send,
)
from pingforward.webmention import Protocol


def fault(code: int, message: str = "x") -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode()


def success(text: str) -> bytes:
    return xmlrpc.client.dumps((text,), methodresponse=True).encode()


WEBMENTION_CASES = [
    pytest.param(200, None, b"", None, Status.SENT, "accepted", id="200"),
    pytest.param(201, "https://e.org/s/1", b"", None, Status.SENT, "created, status at https://e.org/s/1", id="201"),
    pytest.param(202, None, b'{"summary": "Queued"}', None, Status.SENT, "accepted for processing: Queued", id="202"),
    pytest.param(204, None, b"", None, Status.SENT, "accepted", id="204"),
    # Only redirects that cannot be followed get here (net/redirect.py); a 303 says the POST was processed.
    pytest.param(303, "https://e.org/s/1", b"", None, Status.SENT, "processed (303 See Other, at https://e", id="303"),
    pytest.param(303, None, b"", None, Status.SENT, "processed (303 See Other)", id="303-no-location"),
    pytest.param(
        301, None, b"", None, Status.FAILED, "redirected (301) without a usable Location", id="301-no-location"
    ),
    pytest.param(
        302, None, b"", None, Status.FAILED, "redirected (302) without a usable Location", id="302-no-location"
    ),
    pytest.param(
        307, None, b"", None, Status.FAILED, "redirected (307) without a usable Location", id="307-no-location"
    ),
    pytest.param(
        400,
        None,
        b'{"error": "no_link_found", "error_description": "no link"}',
        None,
        Status.FAILED,
        "refused it (400): no_link_found: no link",
        id="400-json",
    ),
    # webmention.io answers a repeated Webmention so; the receiver has it, as with pingback fault 48.
    pytest.param(
        400,
        None,
        b'{"error": "already_registered", "error_description": "seen"}',
        None,
        Status.SENT,
        "already registered (400): already_registered: seen",
        id="400-already-registered",
    ),
    pytest.param(404, None, b"<html><body>Not found</body></html>", None, Status.FAILED, "refused it (404)", id="404"),
    pytest.param(410, None, b"Gone for good", None, Status.FAILED, "refused it (410): Gone for good", id="410-text"),
    pytest.param(429, None, b"", None, Status.ERROR, "answered 429", id="429"),
    pytest.param(429, None, b"", "120", Status.ERROR, "answered 429; retry after 120 s", id="429-retry-after"),
    pytest.param(
        503,
        None,
        b"",
        "Wed, 21 Oct 2026 07:28:00 GMT",
        Status.ERROR,
        "answered 503; retry after Wed, 21 Oct 2026 07:28:00 GMT",
        id="503-retry-after-date",
    ),
    pytest.param(500, None, b"boom", None, Status.ERROR, "answered 500: boom", id="500"),
    pytest.param(400, None, b"", "60", Status.FAILED, "refused it (400)", id="retry-after-not-shown-on-failed"),
]


@pytest.mark.parametrize(("status", "location", "body", "retry_after", "bucket", "words"), WEBMENTION_CASES)
def test_classify_webmention(
    status: int, location: str | None, body: bytes, retry_after: str | None, bucket: Status, words: str
) -> None:
    got = classify_webmention(status, location, body, retry_after)
    assert (got.status, words in got.detail) == (bucket, True), got.detail
    if retry_after is not None and bucket == Status.FAILED:
        assert "retry" not in got.detail


PINGBACK_CASES = [
    pytest.param(200, success("Pingback registered."), Status.SENT, "Pingback registered.", None, id="success"),
    pytest.param(200, fault(48, "Already"), Status.SENT, "already registered (fault 48: Already)", 48, id="fault-48"),
    pytest.param(200, fault(17, "No link"), Status.FAILED, "fault 17: No link", 17, id="fault-17"),
    pytest.param(200, fault(33), Status.FAILED, "fault 33", 33, id="fault-33"),
    pytest.param(200, fault(50, "upstream: HTTP 503"), Status.ERROR, "fault 50: upstream", 50, id="fault-50-transient"),
    # WordPress, a second pingback within 15 s: a fault code Pingback 1.0 does not list, kept as sent.
    pytest.param(
        200,
        fault(429, "You are posting comments too quickly. Slow down."),
        Status.ERROR,
        "fault 429: You are posting comments too quickly. Slow down.",
        429,
        id="fault-429-wordpress-flood",
    ),
    pytest.param(200, fault(-32603), Status.ERROR, "fault -32603", -32603, id="internal-error-transient"),
    pytest.param(200, fault(99, "odd"), Status.FAILED, "fault 99: odd", 99, id="unknown-code-kept"),
    pytest.param(200, fault(0, ""), Status.FAILED, "fault 0 (empty faultString)", 0, id="empty-fault-string"),
    pytest.param(400, fault(0, "webmention.io style"), Status.FAILED, "fault 0: webmention.io style", 0, id="400"),
    pytest.param(502, fault(0, "bad gateway"), Status.ERROR, "answered 502, fault 0: bad gateway", 0, id="fault-502"),
    pytest.param(200, b"<html>not xml-rpc</html>", Status.FAILED, "not XML-RPC", None, id="html-200"),
    pytest.param(404, b"<html>Not found</html>", Status.FAILED, "refused it (404)", None, id="404"),
    pytest.param(503, b"", Status.ERROR, "answered 503", None, id="503"),
    pytest.param(500, success("ok?"), Status.ERROR, "answered 500", None, id="success-with-500"),
    pytest.param(403, success("ok?"), Status.FAILED, "answered 403", None, id="success-with-403"),
]


@pytest.mark.parametrize(("status", "body", "bucket", "words", "code"), PINGBACK_CASES)
def test_classify_pingback(status: int, body: bytes, bucket: Status, words: str, code: int | None) -> None:
    got = classify_pingback(status, body)
    assert (got.status, words in got.detail) == (bucket, True), got.detail
    assert (got.fault and got.fault.code) == code


def test_pingback_faults_are_kept_as_sent() -> None:
    empty = classify_pingback(200, fault(0, ""))
    assert empty.fault is not None and (empty.fault.code, empty.fault.string) == (0, "")
    assert "Error." not in empty.detail
    named = classify_pingback(
        200,
        b"<methodResponse><fault><value><struct><member><name>faultCode</name>"
        b"<value><string>E_FLOOD</string></value></member><member><name>faultString</name>"
        b"<value>slow</value></member></struct></value></fault></methodResponse>",
    )
    assert (named.status, named.detail) == (Status.FAILED, "fault E_FLOOD: slow")
    later = classify_pingback(503, b"", retry_after="30")
    assert (later.status, later.detail) == (Status.ERROR, "the pingback server answered 503; retry after 30 s")
    flood = classify_pingback(200, fault(429, "slow down"), retry_after="15")
    assert flood.detail == "fault 429: slow down; retry after 15 s"


def test_report_ok() -> None:
    def report(*statuses: Status) -> Report:
        return Report("s", tuple(Result("t", status, "") for status in statuses))

    assert report(Status.SENT, Status.SKIPPED, Status.DISCOVERED).ok
    assert report().ok
    assert not report(Status.SENT, Status.FAILED).ok
    assert not report(Status.ERROR).ok


# Whole sends against respx. Nothing leaves the process: unmatched requests fail the test.

SRC = "https://me.example/post"


def page(*links: str, head: str = "") -> httpx.Response:
    anchors = " ".join(f'<a href="{link}">x</a>' for link in links)
    body = f'<html><head>{head}</head><body><nav><a href="/">home</a></nav><article>{anchors}</article></body></html>'
    return httpx.Response(200, html=body)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(Settings(timeout=5.0)) as client:
        yield client


def form(request: httpx.Request) -> dict[str, list[str]]:
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    return parse_qs(request.content.decode())


@pytest.mark.anyio
async def test_send_webmention_pingback_and_nothing(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get(SRC).mock(
        return_value=page(
            "https://a.example/moved?x=1",
            "https://b.example/wp",
            "https://c.example/plain",
            "mailto:me@me.example",
            "#top",
        )
    )
    # a: the target redirects (relative Location); its relative endpoint resolves against the
    # final URL, and the POST names the target as linked, not where it moved to.
    respx_mock.get("https://a.example/moved?x=1").mock(return_value=httpx.Response(302, headers={"Location": "new/"}))
    respx_mock.get("https://a.example/new/").mock(
        return_value=httpx.Response(200, headers={"Link": "<wm?k=1>; rel=webmention"}, html="<p>a</p>")
    )
    a_endpoint = respx_mock.post("https://a.example/new/wm?k=1").mock(
        return_value=httpx.Response(201, headers={"Location": "/status/9"})
    )
    respx_mock.get("https://b.example/wp").mock(
        return_value=httpx.Response(200, headers={"X-Pingback": "https://b.example/xmlrpc.php"}, html="<p>b</p>")
    )
    b_server = respx_mock.post("https://b.example/xmlrpc.php").mock(
        return_value=httpx.Response(200, content=fault(48, "Already registered"))
    )
    respx_mock.get("https://c.example/plain").mock(return_value=httpx.Response(200, html="<p>nothing</p>"))

    report = await send(client, SRC)

    assert [(r.target, r.status, r.protocol) for r in report.results] == [
        ("https://a.example/moved?x=1", Status.SENT, Protocol.WEBMENTION),
        ("https://b.example/wp", Status.SENT, Protocol.PINGBACK),
        ("https://c.example/plain", Status.SKIPPED, None),
    ]
    assert report.ok
    assert report.results[0].location == "https://a.example/status/9"
    assert report.results[0].endpoint == "https://a.example/new/wm?k=1"
    assert form(a_endpoint.calls.last.request) == {"source": [SRC], "target": ["https://a.example/moved?x=1"]}
    assert xmlrpc.client.loads(b_server.calls.last.request.content) == (
        (SRC, "https://b.example/wp"),
        "pingback.ping",
    )


@pytest.mark.anyio
async def test_endpoint_303_is_the_final_answer(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://a.example/"))
    respx_mock.get("https://a.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    endpoint = respx_mock.post("https://a.example/wm").mock(
        return_value=httpx.Response(303, headers={"Location": "https://a.example/status/1"})
    )
    report = await send(client, SRC)  # respx fails the test if the status page is requested
    assert endpoint.call_count == 1
    assert report.results[0].status == Status.SENT
    assert "https://a.example/status/1" in report.results[0].detail
    assert report.ok


@pytest.mark.anyio
async def test_target_failures_land_in_their_buckets(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get(SRC).mock(
        return_value=page(
            "https://down.example/",
            "https://slow.example/",
            "https://gone.example/",
            "https://busy.example/",
            "https://loop.example/",
            "https://wm500.example/",
            "https://ftp.example/",
        )
    )
    respx_mock.get("https://down.example/").mock(side_effect=httpx.ConnectError("refused"))
    respx_mock.get("https://slow.example/").mock(side_effect=httpx.ReadTimeout("slow"))
    respx_mock.get("https://gone.example/").mock(return_value=httpx.Response(410, html="gone"))
    respx_mock.get("https://busy.example/").mock(return_value=httpx.Response(503))
    respx_mock.get("https://loop.example/").mock(return_value=httpx.Response(302, headers={"Location": "/"}))
    respx_mock.get("https://wm500.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    respx_mock.post("https://wm500.example/wm").mock(return_value=httpx.Response(500))
    respx_mock.get("https://ftp.example/").mock(return_value=httpx.Response(301, headers={"Location": "ftp://f/x"}))

    report = await send(client, SRC, limits=Limits(max_redirects=3))

    assert [result.status for result in report.results] == [
        Status.ERROR,
        Status.ERROR,
        Status.SKIPPED,
        Status.ERROR,
        Status.SKIPPED,
        Status.ERROR,
        Status.SKIPPED,
    ]
    assert "more than 3 redirects" in report.results[4].detail
    assert report.results[5].http_status == 500
    assert report.results[5].endpoint == "https://wm500.example/wm"


@pytest.mark.anyio
async def test_dry_run_discovers_and_sends_nothing(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://a.example/", "https://b.example/"))
    respx_mock.get("https://a.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    respx_mock.get("https://b.example/").mock(
        return_value=httpx.Response(200, html='<link rel="pingback" href="https://b.example/xmlrpc">')
    )
    report = await send(client, SRC, dry_run=True)
    assert [(r.status, r.protocol, r.endpoint) for r in report.results] == [
        (Status.DISCOVERED, Protocol.WEBMENTION, "https://a.example/wm"),
        (Status.DISCOVERED, Protocol.PINGBACK, "https://b.example/xmlrpc"),
    ]
    assert all(call.request.method == "GET" for call in respx_mock.calls)


@pytest.mark.anyio
async def test_source_problems_raise(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get("https://me.example/404").mock(return_value=httpx.Response(404))
    respx_mock.get("https://me.example/503").mock(return_value=httpx.Response(503))
    respx_mock.get("https://me.example/img").mock(
        return_value=httpx.Response(200, content=b"\x89PNG", headers={"Content-Type": "image/png"})
    )
    respx_mock.get("https://me.example/down").mock(side_effect=httpx.ConnectError("refused"))
    expected = {
        "https://me.example/404": Status.FAILED,
        "https://me.example/503": Status.ERROR,
        "https://me.example/img": Status.FAILED,
        "https://me.example/down": Status.ERROR,
        "ftp://me.example/x": Status.FAILED,
    }
    for url, bucket in expected.items():
        with pytest.raises(SendError) as caught:
            await fetch_source(client, url)
        assert caught.value.status == bucket, url


@pytest.mark.anyio
async def test_compressed_pages_are_read_within_the_cap(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    html = ('<a href="https://a.example/">a</a>' + " " * 5000 + '<a href="https://b.example/">b</a>').encode()
    respx_mock.get(SRC).mock(
        return_value=httpx.Response(
            200, content=gzip.compress(html), headers={"Content-Encoding": "gzip", "Content-Type": "text/html"}
        )
    )
    source = await fetch_source(client, SRC)
    assert source.targets == ("https://a.example/", "https://b.example/")
    # With a cap below the second link, only the first one is seen.
    source = await fetch_source(client, SRC, limits=Limits(max_bytes=1000))
    assert source.targets == ("https://a.example/",)


@pytest.mark.anyio
async def test_per_host_limit_and_target_cap(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    links = [f"https://{host}.example/{n}" for host in ("one", "two") for n in range(6)]
    respx_mock.get(SRC).mock(return_value=page(*links))
    in_flight: dict[str, int] = {"one.example": 0, "two.example": 0}
    most: dict[str, int] = {"one.example": 0, "two.example": 0}
    seen: list[str] = []

    async def slow_page(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        in_flight[host] += 1
        most[host] = max(most[host], in_flight[host])
        seen.append(str(request.url))
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight[host] -= 1
        return httpx.Response(200, html="<p>none</p>")

    respx_mock.get(url__regex=r"https://(one|two)\.example/\d").mock(side_effect=slow_page)
    progress: list[Result] = []
    source = await fetch_source(client, SRC)
    results = await notify(
        client, source, limits=Limits(per_host=2, concurrency=8, max_targets=10), on_result=progress.append
    )
    assert most == {"one.example": 2, "two.example": 2}
    assert [r.target for r in results] == links
    assert [r.status for r in results] == [Status.SKIPPED] * 12
    assert results[-1].detail == "over the limit of 10 links"
    assert len(seen) == 10
    assert sorted(r.target for r in progress) == sorted(links[:10])


@pytest.mark.anyio
async def test_deadline_turns_unfinished_targets_into_errors(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://stuck.example/", "https://fine.example/"))
    never = asyncio.Event()

    async def stuck(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    respx_mock.get("https://stuck.example/").mock(side_effect=stuck)
    respx_mock.get("https://fine.example/").mock(return_value=httpx.Response(200, html="<p>none</p>"))
    report = await send(client, SRC, limits=Limits(deadline=0.2))
    assert [(r.status, "deadline" in r.detail) for r in report.results] == [
        (Status.ERROR, True),
        (Status.SKIPPED, False),
    ]
    report = await send(client, SRC, limits=Limits(target_timeout=0.2))
    assert "within 0.2 s" in report.results[0].detail


@pytest.mark.anyio
async def test_policy_refusals_are_skips_and_sender_requests_carry_no_via(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    # The default policy refuses loopback before any connection is attempted.
    respx_mock.get(SRC).mock(return_value=page("http://127.0.0.1/local", "https://a.example/", "https://b.example/"))
    respx_mock.get("https://a.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "<http://127.0.0.1/wm>; rel=webmention"})
    )
    respx_mock.get("https://b.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    endpoint = respx_mock.post("https://b.example/wm").mock(return_value=httpx.Response(202))
    report = await send(client, SRC)
    assert [(r.status, r.detail.startswith("refused: ")) for r in report.results] == [
        (Status.SKIPPED, True),
        (Status.SKIPPED, True),
        (Status.SENT, False),
    ]
    assert report.results[1].endpoint == "http://127.0.0.1/wm"
    # Via marks the proxy's forwards; a pingforward proxy answers 508 to a request carrying it.
    assert all("via" not in call.request.headers for call in respx_mock.calls)
    assert endpoint.call_count == 1
    with pytest.raises(SendError) as caught:
        await fetch_source(client, "http://127.0.0.1/post")
    assert caught.value.status == Status.FAILED
    assert caught.value.detail.startswith("refused: ")


@pytest.mark.anyio
@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_endpoint_redirect_is_posted_again(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient, code: int
) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://a.example/"))
    respx_mock.get("https://a.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    first = respx_mock.post("https://a.example/wm").mock(
        return_value=httpx.Response(code, headers={"Location": "/wm2"})
    )
    second = respx_mock.post("https://a.example/wm2").mock(return_value=httpx.Response(202))
    report = await send(client, SRC)
    result = report.results[0]
    assert (result.status, result.endpoint, result.http_status) == (Status.SENT, "https://a.example/wm", 202)
    assert "re-sent to https://a.example/wm2" in result.detail
    # RFC 9110 §15.4.8/9: the same method and the same body.
    assert (
        form(first.calls.last.request)
        == form(second.calls.last.request)
        == {
            "source": [SRC],
            "target": ["https://a.example/"],
        }
    )


@pytest.mark.anyio
async def test_endpoint_redirect_loop_stops_at_the_limit(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://a.example/"))
    respx_mock.get("https://a.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    loop = respx_mock.post("https://a.example/wm").mock(return_value=httpx.Response(308, headers={"Location": "/wm"}))
    report = await send(client, SRC, limits=Limits(max_redirects=3))
    assert (report.results[0].status, report.results[0].detail) == (
        Status.FAILED,
        "the endpoint redirected more than 3 times",
    )
    assert loop.call_count == 4


@pytest.mark.anyio
async def test_retry_after_is_reported(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://busy.example/", "https://wm.example/"))
    respx_mock.get("https://busy.example/").mock(return_value=httpx.Response(503, headers={"Retry-After": "120"}))
    respx_mock.get("https://wm.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
    )
    respx_mock.post("https://wm.example/wm").mock(return_value=httpx.Response(429, headers={"Retry-After": "30"}))
    report = await send(client, SRC)
    assert [(r.status, r.retry_after, r.detail) for r in report.results] == [
        (Status.ERROR, 120, "the target answered 503; retry after 120 s"),
        (Status.ERROR, 30, "the endpoint answered 429; retry after 30 s"),
    ]


@pytest.mark.anyio
async def test_one_budget_of_requests_per_call(respx_mock: respx.MockRouter, client: httpx.AsyncClient) -> None:
    # 1 source fetch + per target a fetch, 2 redirects of the endpoint and the POST: 5 requests allowed.
    respx_mock.get(SRC).mock(return_value=page("https://a.example/", "https://b.example/"))
    for host in ("a", "b"):
        respx_mock.get(f"https://{host}.example/").mock(
            return_value=httpx.Response(200, headers={"Link": "</wm>; rel=webmention"})
        )
        respx_mock.post(f"https://{host}.example/wm").mock(
            return_value=httpx.Response(307, headers={"Location": "/wm2"})
        )
        respx_mock.post(f"https://{host}.example/wm2").mock(return_value=httpx.Response(202))
    report = await send(client, SRC, limits=Limits(max_requests=5, concurrency=1))
    assert len(respx_mock.calls) == 5
    assert [r.status for r in report.results] == [Status.SENT, Status.ERROR]
    assert report.results[1].detail == "not tried: this call's 5 outbound requests are spent"


@pytest.mark.anyio
async def test_no_parsing_outlives_its_call() -> None:
    """A call cut short by its deadline answers only once the parsing thread it started has ended."""
    started, ended = threading.Event(), threading.Event()

    def parse() -> None:
        started.set()
        time.sleep(0.3)  # stands for CPU-bound parsing that cannot be interrupted
        ended.set()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _in_thread(parse)
    assert started.is_set() and ended.is_set()


@pytest.mark.anyio
@pytest.mark.parametrize("max_requests", [3, 2])
async def test_a_proxys_own_pingback_endpoint_is_its_webmention_in_the_budget(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient, max_requests: int
) -> None:
    own = origins("PF.example.", None)  # the Host field of a call to POST /send, spelled oddly
    forward = "https://r.example/wm"
    respx_mock.get(SRC).mock(return_value=page("https://t.example/", "https://pf.example:443/about"))
    respx_mock.get("https://t.example/").mock(
        return_value=httpx.Response(200, headers={"X-Pingback": f"https://pf.example/?forward={forward}"})
    )
    received = respx_mock.post(forward).mock(return_value=httpx.Response(202))
    limits = Limits(own=own, max_requests=max_requests)
    report = await send(client, SRC, limits=limits)  # respx fails the test on any request to pf.example
    mention, about = report.results
    assert (about.status, about.detail) == (Status.SKIPPED, "refused: pf.example port 443 is this proxy itself")
    assert (mention.protocol, mention.endpoint) == (Protocol.PINGBACK, f"https://pf.example/?forward={forward}")
    if max_requests == 3:  # the source, the target and the Webmention
        assert mention.status == Status.SENT and received.call_count == 1
        assert form(received.calls.last.request) == {"source": [SRC], "target": ["https://t.example/"]}
    else:
        assert mention.status == Status.ERROR and "spent" in mention.detail and received.call_count == 0


@pytest.mark.parametrize(
    ("host", "server", "expected"),
    [
        pytest.param("pf.example", None, {("pf.example", 80), ("pf.example", 443)}, id="no-port"),
        pytest.param("PF.Example.:8000", ("10.0.0.5", 8000), {("pf.example", 8000), ("10.0.0.5", 8000)}, id="port"),
        pytest.param("127.1:8000", None, {("127.0.0.1", 8000)}, id="short-ipv4"),
        pytest.param("[::ffff:127.0.0.1]:80", None, {("127.0.0.1", 80)}, id="mapped-ipv6"),
        pytest.param("[", ("127.0.0.1", 80), {("127.0.0.1", 80)}, id="no-url"),
    ],
)
def test_origins(host: str, server: tuple[str, int] | None, expected: set[tuple[str, int]]) -> None:
    assert origins(host, server) == expected


@pytest.mark.anyio
async def test_a_pingback_server_redirect_is_followed_by_the_same_rule(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    respx_mock.get(SRC).mock(return_value=page("https://b.example/"))
    respx_mock.get("https://b.example/").mock(
        return_value=httpx.Response(200, headers={"X-Pingback": "http://b.example/xmlrpc.php"})
    )
    moved = respx_mock.post("http://b.example/xmlrpc.php").mock(
        return_value=httpx.Response(301, headers={"Location": "https://b.example/xmlrpc.php"})
    )
    ok = xmlrpc.client.dumps(("Pingback registered.",), methodresponse=True)
    server = respx_mock.post("https://b.example/xmlrpc.php").mock(return_value=httpx.Response(200, text=ok))
    (result,) = (await send(client, SRC)).results
    assert (result.status, result.protocol, result.http_status) == (Status.SENT, Protocol.PINGBACK, 200)
    assert result.detail == "Pingback registered. (re-sent to https://b.example/xmlrpc.php)"
    assert moved.calls.last.request.content == server.calls.last.request.content  # the same call
