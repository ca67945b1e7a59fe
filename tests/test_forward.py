from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from pingforward.config import Settings
from pingforward.errors import Failure, ForwardError
from pingforward.forward import (
    INVALID_FORWARD,
    MAX_ANSWER,
    MISSING_FORWARD,
    Outcome,
    classify,
    forward,
    parse_forward,
    written_unencoded,
)
from pingforward.net.transport import make_transport
from pingforward.pingback import FaultCode, Ping
from pingforward.watchdog import _watchdogs, stop

PING = Ping("https://blog.example/post", "https://site.example/notes/42")
DEFAULT_OK = "Pingback from https://blog.example/post to https://site.example/notes/42 was successful!"
ENDPOINT = "https://site.example/webmention"


NO_SCHEME = "no scheme: write the whole URL, https://host/..."


def bad(why: str) -> str:
    """The fault 0 message for an unusable forward parameter (its start, when `why` is cut short)."""
    return f"{INVALID_FORWARD}: {why}"


# Raw query string -> forward URL, or the fault 0 message (or its start).
FORWARD_CASES = [
    ("forward=https%3A%2F%2Fsite.example%2Fwebmention", "https://site.example/webmention"),
    ("forward=https://site.example/webmention", "https://site.example/webmention"),
    ("forward=https%3A%2F%2Fsite.example%2Fwm%3Fkey%3D1%26x%3D2", "https://site.example/wm?key=1&x=2"),
    ("a=1&amp;forward=https%3A%2F%2Fsite.example%2Fwm", "https://site.example/wm"),  # WordPress's &amp;
    ("forward=%20https%3A%2F%2Fsite.example%2Fwm%20", "https://site.example/wm"),
    # Pasted without encoding: what follows the URL's own "?" is the URL's, "&" included.
    ("forward=https://site.example/wm?x=1&y=2", "https://site.example/wm?x=1&y=2"),
    ("a=1&forward=https://site.example/wm?x=%2F&forward=3", "https://site.example/wm?x=%2F&forward=3"),
    ("a=1&amp;forward=http://site.example/wm?x=1&amp;y=2", "http://site.example/wm?x=1&y=2"),
    ("forward=https%3A%2F%2Fsite.example%2Fwm%3Fx%3D1&y=2", "https://site.example/wm?x=1"),  # encoded: y is ours
    ("forward=https://m%C3%BCnchen.example/wm", "https://münchen.example/wm"),  # an IDN host
    ("forward=https://11.22.33.44/wm", "https://11.22.33.44/wm"),
    ("forward=https://[2001:db8::1]:8443/wm", "https://[2001:db8::1]:8443/wm"),
    ("forward=https://_dmarc-ish.site.example/wm", "https://_dmarc-ish.site.example/wm"),
    # Hosts no connection can be made to, and escapes that are not UTF-8: unusable, fault 0.
    ("forward=http://a..b/", bad("host 'a..b' is no name or address a connection can be made to")),
    ("forward=http://" + "a" * 64 + ".example/", bad("host '" + "a" * 64 + ".example' is no name")),
    ("forward=http://" + "a." * 127 + "example/", bad("host '" + "a." * 50 + "' is no name")),
    ("forward=http://%25ff.example/", bad("host '%ff.example' is no name")),
    ("forward=http%3A%2F%2Fsite.example%2F%FF", bad("percent-escapes that are not UTF-8")),
    ("forward=http://013.22.041.45/wm", bad("host '013.22.041.45' is no name")),
    (
        "forward=http://%E2%98%83%F0%9F%98%80.example/",
        bad("host '\u2603\U0001f600.example' is no name"),
    ),  # not IDNA 2008
    ("forward=http://site.example:99999/", bad("the port is not a number up to 65535")),
    ("", MISSING_FORWARD),
    ("foo=bar", MISSING_FORWARD),
    ("forward=", bad("empty; write the Webmention endpoint's whole URL, percent-encoded")),
    ("forward=ftp%3A%2F%2Fsite.example%2F", bad("scheme 'ftp': only http and https")),
    ("forward=%2Fwebmention", bad(NO_SCHEME)),
    ("forward=https%3A%2F%2Fuser%3Apass%40site.example%2F", bad("credentials in the URL (user:password@)")),
    ("forward=https%3A%2F%2Fa.example%2F&forward=https%3A%2F%2Fb.example%2F", bad("given 2 times; give it once")),
    ("forward=https%3A%2F%2Fsite.example%2F" + "a" * 2100, bad("longer than 2048 characters")),
    ("forward=https%3A%2F%2F", bad("no host")),
    ("forward=%2F%2Fsite.example%2Fwm", bad("no scheme: write https://host/..., not //host/...")),
    ("forward=webmention.io%2Fexample.com%2Fwebmention", bad(NO_SCHEME)),
    ("forward=site.example%3A8080%2Fwm", bad(NO_SCHEME)),
    ("forward=mailto%3Awm%40site.example", bad("scheme 'mailto': only http and https")),
    ("forward=https%3A%2F%2Fsite%20x.example%2F", bad("spaces or control characters in the URL; percent-encode them")),
]


@pytest.mark.parametrize(("query", "expected"), FORWARD_CASES)
def test_parse_forward(query: str, expected: str) -> None:
    if expected == MISSING_FORWARD or expected.startswith(INVALID_FORWARD):
        with pytest.raises(ForwardError) as caught:
            parse_forward(query)
        assert str(caught.value).startswith(expected)
    else:
        assert parse_forward(query) == expected


def j(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# The receiver's final answer (status, body, Location) -> what the pinging blog is told.
CLASSIFY_CASES = [
    # Webmention §3.1.3: any 2xx is a success.
    (202, j(result="Webmention queued"), None, Outcome("Webmention queued", None, 202)),
    (202, b"", None, Outcome(DEFAULT_OK, None, 202)),
    (202, b"<html>Accepted</html>", None, Outcome(DEFAULT_OK, None, 202)),
    (
        200,
        j(code="success", message="Webmention was successful"),
        None,
        Outcome("Webmention was successful", None, 200),
    ),
    (202, j(code="scheduled", message="Webmention is scheduled"), None, Outcome("Webmention is scheduled", None, 202)),
    (
        201,
        j(status="queued", summary="Webmention was queued for processing", location="https://wm.example/s/1"),
        "https://wm.example/s/1",
        Outcome("Webmention was queued for processing Status: https://wm.example/s/1", None, 201),
    ),
    (201, b"", "https://wm.example/s/2", Outcome(DEFAULT_OK + " Status: https://wm.example/s/2", None, 201)),
    (204, b"", None, Outcome(DEFAULT_OK, None, 204)),
    (200, j(result=""), None, Outcome(DEFAULT_OK, None, 200)),
    (200, j(result=["not", "a", "string"]), None, Outcome(DEFAULT_OK, None, 200)),
    (200, b"[1, 2]", None, Outcome(DEFAULT_OK, None, 200)),
    # node's pingback client fails any answer containing "fault": an invisible word joiner in prose,
    # "%61" for the "a" in a URL.
    (
        202,
        j(result="No fault found, default path at https://wm.example/default?x=FAULT"),
        None,
        Outcome("No fa\u2060ult found, defa\u2060ult path at https://wm.example/def%61ult?x=F%41ULT", None, 202),
    ),
    (
        303,
        b"",
        "https://site.example/mentions/1",
        Outcome("Pingback from https://blog.example/post to https://site.example/notes/42 was accepted.", None, 303),
    ),
    # A 2xx is a success whatever its body says (Webmention §3.1.3), an `error` member included.
    (200, j(error="no_link_found"), None, Outcome(DEFAULT_OK, None, 200)),
    (202, j(error="spam", message="queued anyway"), None, Outcome("queued anyway", None, 202)),
    (200, b"[" * 1000 + b"]" * 1000, None, Outcome(DEFAULT_OK, None, 200)),  # deeper than json's recursion
    (400, b"[" * 100_000, None, Outcome("HTTP 400", FaultCode.GENERIC, 400)),
    # Named errors: webmention.io's `error` and the WordPress plugin's `code`.
    (
        400,
        j(error="source_not_found", error_description="404 at source"),
        None,
        Outcome("source_not_found: 404 at source", FaultCode.SOURCE_NOT_FOUND, 400),
    ),
    (400, j(error="invalid_source"), None, Outcome("invalid_source", FaultCode.SOURCE_NOT_FOUND, 400)),
    (
        400,
        j(error="no_link_found", error_description="The source does not link here"),
        None,
        Outcome("no_link_found: The source does not link here", FaultCode.NO_LINK, 400),
    ),
    (400, j(error="target_not_found"), None, Outcome("target_not_found", FaultCode.TARGET_NOT_FOUND, 400)),
    (400, j(error="target_not_supported"), None, Outcome("target_not_supported", FaultCode.TARGET_NOT_PINGABLE, 400)),
    (400, j(error="invalid_target"), None, Outcome("invalid_target", FaultCode.TARGET_NOT_PINGABLE, 400)),
    (
        400,
        j(code="target_not_valid", message="Target is not on this site", data={"status": 400}),
        None,
        Outcome("target_not_valid: Target is not on this site", FaultCode.TARGET_NOT_PINGABLE, 400),
    ),
    (400, j(error="already_registered"), None, Outcome("already_registered", FaultCode.ALREADY_REGISTERED, 400)),
    (403, j(error="access_denied"), None, Outcome("access_denied", FaultCode.ACCESS_DENIED, 403)),
    (400, j(code="forbidden", message="No"), None, Outcome("forbidden: No", FaultCode.ACCESS_DENIED, 400)),
    (500, j(error="source_not_found"), None, Outcome("source_not_found", FaultCode.SOURCE_NOT_FOUND, 500)),
    # Unnamed errors, by status.
    (401, b"", None, Outcome("HTTP 401", FaultCode.ACCESS_DENIED, 401)),
    (403, b"<h1>Forbidden</h1>", None, Outcome("HTTP 403", FaultCode.ACCESS_DENIED, 403)),
    (
        429,
        j(error="rate_limit_exceeded"),
        None,
        Outcome("upstream: HTTP 429 rate_limit_exceeded", FaultCode.UPSTREAM_ERROR, 429),
    ),
    (500, b"<html>Traceback ...</html>", None, Outcome("upstream: HTTP 500", FaultCode.UPSTREAM_ERROR, 500)),
    (502, b"", None, Outcome("upstream: HTTP 502", FaultCode.UPSTREAM_ERROR, 502)),
    (300, b"", None, Outcome("upstream: HTTP 300", FaultCode.UPSTREAM_ERROR, 300)),
    (
        400,
        j(error="invalid_request", error_description="target missing"),
        None,
        Outcome("HTTP 400 invalid_request: target missing", FaultCode.GENERIC, 400),
    ),
    (404, b"Not Found", None, Outcome("HTTP 404", FaultCode.GENERIC, 404)),
    (410, j(message="Gone"), None, Outcome("HTTP 410 Gone", FaultCode.GENERIC, 410)),
]


def test_written_unencoded() -> None:
    assert written_unencoded("forward=https://site.example/wm?x=1&y=2")
    assert written_unencoded("a=1&amp;forward=http://site.example/wm?x=1")
    assert not written_unencoded("forward=https://site.example/wm")
    assert not written_unencoded("forward=https%3A%2F%2Fsite.example%2Fwm%3Fx%3D1")


@pytest.mark.parametrize(("status", "body", "location", "expected"), CLASSIFY_CASES)
def test_classify(status: int, body: bytes, location: str | None, expected: Outcome) -> None:
    outcome = classify(PING, status, body, location)
    assert outcome == expected
    if outcome.fault is None:
        assert "fault" not in outcome.text.lower()  # node's pingback client reads that as failure


# --- forward() against respx-mocked receivers -------------------------------------------------


async def run(url: str = ENDPOINT, timeout: float = 2.0) -> Outcome:
    async with make_transport(Settings(timeout=timeout)) as transport:
        return await forward(transport, PING, url, client_ip="198.51.100.9", timeout=timeout)


@pytest.mark.anyio
async def test_forward_sends_a_webmention(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(ENDPOINT).respond(202, json={"result": "queued"})
    assert await run() == Outcome("queued", None, 202)
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["original-remote-addr"] == "198.51.100.9"
    assert request.headers["user-agent"].startswith("pingforward/")
    assert httpx.QueryParams(request.content.decode()) == httpx.QueryParams(
        {"source": PING.source, "target": PING.target}
    )
    assert list(httpx.QueryParams(request.content.decode()).keys()) == ["source", "target"]


@pytest.mark.anyio
async def test_form_body_escapes_what_a_form_parser_would_split_on(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(ENDPOINT).respond(202)
    ping = Ping("https://blog.example/p?a=1&b=2+3 4#x%20y", "https://site.example/é/?q=ü")
    async with make_transport(Settings()) as transport:
        await forward(transport, ping, ENDPOINT, client_ip="198.51.100.9", timeout=2.0)
    body = route.calls.last.request.content
    assert parse_qsl(body.decode("ascii"), strict_parsing=True) == [("source", ping.source), ("target", ping.target)]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_forward_reposts_across_redirects(respx_mock: respx.MockRouter, status: int) -> None:
    first = respx_mock.post(ENDPOINT).respond(status, headers={"Location": "/wm2?x=1"})
    second = respx_mock.post("https://site.example/wm2?x=1").respond(202)
    assert await run() == Outcome(DEFAULT_OK, None, 202)
    assert first.calls.last.request.content == second.calls.last.request.content
    assert second.calls.last.request.method == "POST"


@pytest.mark.anyio
async def test_forward_gives_up_after_three_redirects(respx_mock: respx.MockRouter) -> None:
    hops = [
        respx_mock.post(f"https://site.example/hop{n}").respond(307, headers={"Location": f"/hop{n + 1}"})
        for n in range(4)
    ]
    outcome = await run("https://site.example/hop0")
    assert outcome.fault is FaultCode.UPSTREAM_ERROR and "redirects" in outcome.text
    assert [hop.call_count for hop in hops] == [1, 1, 1, 1]


@pytest.mark.anyio
async def test_redirect_loop_ends(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(ENDPOINT).respond(302, headers={"Location": ENDPOINT})
    outcome = await run()
    assert outcome.fault is FaultCode.UPSTREAM_ERROR
    assert route.call_count == 4


@pytest.mark.anyio
@pytest.mark.parametrize("location", [None, "ftp://site.example/", "http://"])
async def test_redirect_without_usable_location(respx_mock: respx.MockRouter, location: str | None) -> None:
    respx_mock.post(ENDPOINT).respond(301, headers={"Location": location} if location else {})
    outcome = await run()
    assert outcome.fault is FaultCode.UPSTREAM_ERROR and "Location" in outcome.text


@pytest.mark.anyio
async def test_redirect_to_a_refused_address_is_fault_49(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(ENDPOINT).respond(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    outcome = await run()
    assert outcome.fault is FaultCode.ACCESS_DENIED
    assert "link-local" in outcome.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "words", "failure"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "could not connect to site.example", Failure.REFUSED),
        (httpx.ConnectTimeout("timed out"), "no answer from site.example in time", Failure.TIMEOUT),
        (httpx.ReadTimeout("timed out"), "no answer from site.example in time", Failure.TIMEOUT),
        (httpx.RemoteProtocolError("illegal header"), "broken exchange with site.example", Failure.PROTOCOL),
    ],
)
async def test_transport_errors_are_fault_50_without_internals(
    respx_mock: respx.MockRouter, error: Exception, words: str, failure: Failure
) -> None:
    respx_mock.post(ENDPOINT).mock(side_effect=error)
    outcome = await run()
    assert outcome == Outcome(f"upstream: {words}", FaultCode.UPSTREAM_ERROR, failure=failure)
    assert "Errno" not in outcome.text


class _Hanging(httpx.AsyncBaseTransport):
    """A receiver that takes the request and never answers."""

    def __init__(self) -> None:
        self.cancelled = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("not cut off")


@pytest.mark.anyio
async def test_a_receiver_that_never_answers_is_cut_off_at_the_timeout() -> None:
    transport = _Hanging()
    outcome = await forward(transport, PING, ENDPOINT, client_ip="198.51.100.9", timeout=0.05)
    expected = "upstream: no answer from site.example port 443 within 0.05 s"
    assert outcome == Outcome(expected, FaultCode.UPSTREAM_ERROR, failure=Failure.TIMEOUT)
    watchdog = _watchdogs[asyncio.get_running_loop()]
    assert transport.cancelled and not watchdog._deadlines  # the exchange was stopped, nothing left behind
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    stop()


@pytest.mark.anyio
async def test_an_oversized_answer_is_not_read_and_its_status_decides(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(ENDPOINT).respond(202, content=b"x" * (MAX_ANSWER + 1))
    assert await run() == Outcome(DEFAULT_OK, None, 202)
    respx_mock.post(ENDPOINT).respond(
        403, content=b'{"error": "access_denied"}' + b" " * MAX_ANSWER, headers={"Content-Length": "99999"}
    )
    assert await run() == Outcome("HTTP 403", FaultCode.ACCESS_DENIED, 403)


@pytest.mark.anyio
async def test_compressed_answer_is_not_decoded(respx_mock: respx.MockRouter) -> None:
    import gzip

    body = gzip.compress(json.dumps({"result": "zipped"}).encode())
    respx_mock.post(ENDPOINT).respond(202, content=body, headers={"Content-Encoding": "gzip"})
    assert await run() == Outcome(DEFAULT_OK, None, 202)


@pytest.mark.anyio
@pytest.mark.parametrize(("head", "expected"), [(b"202 Accepted", None), (b"503 Busy", FaultCode.UPSTREAM_ERROR)])
async def test_the_deadline_during_the_body_leaves_the_status_to_decide(
    head: bytes, expected: FaultCode | None
) -> None:
    # The ping's deadline (0.3 s) comes before the body's grace ends: the head that arrived decides.
    done = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 " + head + b"\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.wait_for(done.wait(), 5)  # bounded; the ping's deadline is far shorter
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(timeout=0.3, allow_private_networks=True, allowed_ports=None)
    async with server, make_transport(settings) as transport:
        outcome = await forward(transport, PING, f"http://127.0.0.1:{port}/wm", client_ip="-", timeout=0.3)
        done.set()
        await asyncio.gather(*handlers, return_exceptions=True)
    assert outcome.fault is expected and outcome.status == int(head[:3])
