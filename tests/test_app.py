"""HTTP behaviour of the app over ASGI; outbound HTTP is respx only."""

from __future__ import annotations

import asyncio
import xmlrpc.client
from urllib.parse import quote, urlsplit

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.responses import PlainTextResponse

from pingforward import endpoint as app_module
from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.errors import Refused
from pingforward.forwarded import forwarded_client
from pingforward.net import policy as policy_module
from pingforward.pingback import FaultCode
from tests.conftest import load

ENDPOINT = "https://site.example/webmention"
FORWARD = "?forward=" + quote(ENDPOINT, safe="")
SOURCE = "https://blog.example/post"
TARGET = "https://site.example/notes/42"


def ping_body(source: str = SOURCE, target: str = TARGET) -> bytes:
    return xmlrpc.client.dumps((source, target), "pingback.ping").encode()


def read(response: httpx.Response) -> str | tuple[int, str]:
    """The XML-RPC answer: the success string, or (faultCode, faultString). Checks the envelope."""
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert response.content.startswith(b"<?xml")
    # WordPress's IXR strips the declaration, trims, and needs the root to start right there.
    assert response.content.split(b"?>", 1)[1].lstrip().startswith(b"<methodResponse>")
    try:
        (value,), _ = xmlrpc.client.loads(response.content)
    except xmlrpc.client.Fault as fault:
        assert f"<int>{fault.faultCode}</int>".encode() in response.content
        assert fault.faultString
        return fault.faultCode, fault.faultString
    assert b"<string>" in response.content and value
    return str(value)


def fault(response: httpx.Response) -> tuple[int, str]:
    answer = read(response)
    assert isinstance(answer, tuple), answer
    return answer


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/webmention"])
@pytest.mark.parametrize("content_type", ["text/xml", "application/xml", "application/octet-stream", None])
async def test_ping_is_forwarded(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, path: str, content_type: str | None
) -> None:
    route = respx_mock.post(ENDPOINT).respond(202, json={"result": "Queued"})
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(path + FORWARD, content=ping_body(), headers=headers)
    assert read(response) == "Queued"
    sent = route.calls.last.request
    assert dict(httpx.QueryParams(sent.content.decode())) == {"source": SOURCE, "target": TARGET}
    assert sent.headers["original-remote-addr"] == "203.0.113.7"


@pytest.mark.anyio
async def test_wordpress_body_with_amp_in_query(client: httpx.AsyncClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(ENDPOINT).respond(200)
    url = "/?lang=en&amp;forward=" + quote(ENDPOINT, safe="")
    response = await client.post(url, content=load("pingback/wordpress.xml"), headers={"Content-Type": "text/xml"})
    assert isinstance(read(response), str)
    assert httpx.QueryParams(route.calls.last.request.content.decode())["source"].endswith("lang=en's")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "json", "expected"),
    [
        (400, {"error": "source_not_found"}, FaultCode.SOURCE_NOT_FOUND),
        (400, {"error": "no_link_found"}, FaultCode.NO_LINK),
        (400, {"error": "target_not_found"}, FaultCode.TARGET_NOT_FOUND),
        (400, {"error": "target_not_supported"}, FaultCode.TARGET_NOT_PINGABLE),
        (400, {"error": "already_registered"}, FaultCode.ALREADY_REGISTERED),
        (403, {}, FaultCode.ACCESS_DENIED),
        (503, {}, FaultCode.UPSTREAM_ERROR),
        (400, {"error": "invalid_request"}, FaultCode.GENERIC),
    ],
)
async def test_receiver_errors_reach_the_client_as_fault_codes(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, status: int, json: dict[str, str], expected: FaultCode
) -> None:
    respx_mock.post(ENDPOINT).respond(status, json=json)
    code, _ = fault(await client.post("/" + FORWARD, content=ping_body()))
    assert code == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "body", "expected"),
    [
        ("", ping_body(), (0, "Missing 'forward' parameter")),
        (
            "?forward=ftp%3A%2F%2Fsite.example%2F",
            ping_body(),
            (0, "Invalid 'forward' parameter: scheme 'ftp': only http and https"),
        ),
        (FORWARD, b"<methodCall>", FaultCode.PARSE_ERROR),
        (FORWARD, load("pingback/methodresponse.xml"), FaultCode.INVALID_XMLRPC),
        (FORWARD, ping_body("nope"), FaultCode.SOURCE_NOT_FOUND),
        (FORWARD, ping_body(SOURCE, "nope"), FaultCode.TARGET_NOT_PINGABLE),
        (FORWARD, xmlrpc.client.dumps((SOURCE,), "pingback.ping").encode(), FaultCode.INVALID_PARAMS),
        (FORWARD, xmlrpc.client.dumps((1, 2), "pingback.ping").encode(), FaultCode.INVALID_PARAMS),
        ("?forward=" + quote("http://127.0.0.1/wm", safe=""), ping_body(), FaultCode.ACCESS_DENIED),
        ("?forward=" + quote("https://proxy.test/webmention", safe=""), ping_body(), FaultCode.ACCESS_DENIED),
    ],
)
async def test_bad_requests_get_faults_and_nothing_is_sent(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, query: str, body: bytes, expected: object
) -> None:
    answer = read(await client.post("/" + query, content=body))
    assert isinstance(answer, tuple)
    assert answer == expected if isinstance(expected, tuple) else answer[0] == expected
    assert not respx_mock.calls


@pytest.mark.anyio
async def test_unknown_method_is_named(client: httpx.AsyncClient) -> None:
    body = xmlrpc.client.dumps((SOURCE, TARGET), "weblogUpdates.ping").encode()
    code, message = fault(await client.post("/" + FORWARD, content=body))
    assert code == FaultCode.METHOD_NOT_FOUND and "weblogUpdates.ping" in message


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["", "?forward=", "?forward=ftp%3A%2F%2Fx%2F", "?a=1"])
async def test_without_a_usable_forward_the_body_is_not_read_into(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, query: str
) -> None:
    # Whatever the body is, nothing can be done with it: the answer is the forward parameter's fault.
    for body in (ping_body(), b"<?xml version='1.0'?><methodCall><methodName>", b"\x00junk"):
        code, message = fault(await client.post("/" + query, content=body))
        assert code == FaultCode.GENERIC and "'forward' parameter" in message
    assert not respx_mock.calls


@pytest.mark.anyio
async def test_list_methods(client: httpx.AsyncClient) -> None:
    body = xmlrpc.client.dumps((), "system.listMethods").encode()
    response = await client.post("/", content=body)
    assert xmlrpc.client.loads(response.content)[0] == (["pingback.ping", "system.listMethods"],)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/" + FORWARD, "/webmention" + FORWARD])
async def test_other_methods_never_redirect(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code in (200, 405)
    assert "location" not in response.headers


@pytest.mark.anyio
async def test_trailing_slash_is_not_redirected(client: httpx.AsyncClient) -> None:
    response = await client.post("/webmention/" + FORWARD, content=ping_body())
    assert response.status_code == 404 and "location" not in response.headers


@pytest.mark.anyio
async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.anyio
@pytest.mark.parametrize("settings", [Settings(max_body=2048)])
async def test_oversized_body_is_413(client: httpx.AsyncClient, respx_mock: respx.MockRouter) -> None:
    body = ping_body() + b" " * 4096
    response = await client.post("/" + FORWARD, content=body)
    assert response.status_code == 413 and response.headers["connection"] == "close"  # the rest is not read

    async def chunked() -> object:
        for _ in range(10):
            yield b" " * 1000

    assert (await client.post("/" + FORWARD, content=chunked())).status_code == 413  # type: ignore[arg-type]
    assert not respx_mock.calls


@pytest.mark.anyio
async def test_a_sender_that_hangs_up_mid_body_gets_nothing_and_logs_nothing(
    respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = app_module.PingbackEndpoint(Settings(), page=PlainTextResponse("page"))
    messages = iter([{"type": "http.request", "body": b"<?xml", "more_body": True}, {"type": "http.disconnect"}])
    sent: list[object] = []

    async def receive() -> object:
        return next(messages)

    async def send(message: object) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [], "query_string": FORWARD[1:].encode()}
    await endpoint(scope, receive, send)  # type: ignore[arg-type]
    assert sent == [] and not respx_mock.calls
    assert not caplog.records and capsys.readouterr().out == ""  # not an internal error, not a ping


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["[", "[::1", "a:b:c", "x:99999999"])
async def test_a_host_field_no_url_could_name_is_not_an_error(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, host: str
) -> None:
    respx_mock.post(ENDPOINT).respond(202)
    response = await client.post("/" + FORWARD, content=ping_body(), headers={"Host": host})
    assert isinstance(xmlrpc.client.loads(response.content)[0][0], str)  # forwarded, not an internal error


def test_caches_keep_only_short_keys() -> None:
    # A flood of long, distinct query strings or URLs must not grow the per-worker caches.
    endpoint = app_module.PingbackEndpoint(Settings(), page=PlainTextResponse("page"))
    long_query = b"forward=https%3A%2F%2Fsite.example%2F" + b"a" * 9000
    assert endpoint.destinations(long_query, "https", "proxy.test").unusable is not None
    assert endpoint.destinations(FORWARD[1:].encode(), "https", "proxy.test").unusable is None
    assert endpoint._cached.cache_info().currsize == 1
    before = policy_module._cached_refusal.cache_info().currsize
    with pytest.raises(Refused):
        Settings().policy.check_url("ftp://site.example/" + "a" * 3000)
    assert policy_module._cached_refusal.cache_info().currsize == before
    before = app_module._short_fault.cache_info().currsize
    status, _, body = app_module._fault(FaultCode.UPSTREAM_ERROR, "upstream: HTTP 500 " + "x" * 5000)
    assert app_module._short_fault.cache_info().currsize == before
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(body)
    assert status == 200 and fault.value.faultCode == FaultCode.UPSTREAM_ERROR


@pytest.mark.anyio
async def test_our_own_forward_coming_back_is_a_loop(client: httpx.AsyncClient, respx_mock: respx.MockRouter) -> None:
    response = await client.post("/" + FORWARD, content=ping_body(), headers={"Via": "1.1 vegur, 1.1 pingforward"})
    assert response.status_code == 508
    assert not respx_mock.calls


@pytest.mark.anyio
async def test_internal_error_is_a_fault_without_details(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app_module, "forward", broken)
    code, message = fault(await client.post("/" + FORWARD, content=ping_body()))
    assert code == FaultCode.INTERNAL_ERROR and "secret" not in message
    assert "secret internal detail" in caplog.text  # the operator still sees it


@pytest.mark.anyio
async def test_one_log_line_per_ping_with_escaped_values(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.post(ENDPOINT).respond(400, json={"error": "no_link_found"})
    # Control characters are refused as URLs; these two pass that check but break lines in some viewers.
    await client.post("/" + FORWARD, content=ping_body(SOURCE + "?x=\u2028FAKE\x85LINE", TARGET))
    await asyncio.sleep(0)  # lines are written when the event loop comes round
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("INFO pingforward.app: ping ")
    assert line.isprintable() and "\\u2028FAKE\\u0085LINE" in line
    for part in ("client=203.0.113.7", "forward_host=site.example", "status=400", "outcome=17", "ms="):
        assert part in line


@pytest.mark.anyio
async def test_a_forward_url_pasted_unencoded_arrives_whole_and_the_log_says_how_to_write_it(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = respx_mock.post(f"{ENDPOINT}?x=1&y=2").respond(202, json={"result": "queued"})
    assert read(await client.post(f"/?forward={ENDPOINT}?x=1&y=2", content=ping_body())) == "queued"
    assert route.called
    await asyncio.sleep(0)  # lines are written when the event loop comes round
    (line,) = capsys.readouterr().out.splitlines()
    assert "outcome=ok" in line and "percent-encoding" in line


@pytest.mark.anyio
@pytest.mark.parametrize(
    "forward",
    ["http://a..b/wm", "http://" + "a" * 64 + ".example/", "http://%25ff.example/", "http://013.22.041.45/"],
)
async def test_an_unusable_forward_host_is_fault_0_without_a_traceback(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture, forward: str
) -> None:
    host = urlsplit(forward).hostname
    response = await client.post("/?forward=" + quote(forward, safe=""), content=ping_body())
    expected = f"Invalid 'forward' parameter: host {host!r} is no name or address a connection can be made to"
    assert read(response) == (FaultCode.GENERIC, expected)
    assert "Traceback" not in caplog.text and not respx_mock.calls


@pytest.mark.parametrize(
    ("header", "hops", "client"),
    [
        ("6.6.6.6, 10.1.2.3", 1, "10.1.2.3"),  # the sender wrote 6.6.6.6; the router appended 10.1.2.3
        ("6.6.6.6, 10.1.2.3", 2, "6.6.6.6"),
        ("6.6.6.6,10.1.2.3 , 192.0.2.9", 1, "192.0.2.9"),
        ("192.0.2.9:4711", 1, "192.0.2.9"),
        ("[2001:db8::1]:4711", 1, "2001:db8::1"),
        ("2001:db8::1", 1, "2001:db8::1"),
        ("10.1.2.3", 2, None),  # fewer entries than proxies: not what the proxies wrote
        ("unknown", 1, None),
        ("", 1, None),
        ("1.2.3.4, <script>", 1, None),
    ],
)
def test_forwarded_client(header: str, hops: int, client: str | None) -> None:
    assert forwarded_client(header, hops) == client


@pytest.mark.anyio
@pytest.mark.parametrize(("hops", "client"), [(0, "203.0.113.7"), (1, "10.1.2.3")])
async def test_x_forwarded_for_is_read_only_behind_proxies(
    hops: int, client: str, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(ENDPOINT).respond(202)
    app = create_app(Settings(timeout=2.0, proxy_hops=hops, verify_source=False))  # no source read, as `settings`
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as http:
            headers = {"X-Forwarded-For": "6.6.6.6, 10.1.2.3"}
            await http.post("/" + FORWARD, content=ping_body(), headers=headers)
    assert route.calls.last.request.headers["original-remote-addr"] == client
