from __future__ import annotations

import contextlib
import json
import xmlrpc.client
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingforward.app import create_app
from pingforward.check import (
    Finding,
    Page,
    Verdict,
    analyze,
    check,
    explain,
    judge_ping,
    wordpress_pingback,
)
from pingforward.cli import main
from pingforward.config import Settings
from pingforward.errors import (
    BrokenAnswer,
    ConnectFailed,
    Failure,
    OutboundError,
    OutboundTimeout,
    Refused,
    ResolveError,
)
from pingforward.net.resolver import Resolver
from pingforward.net.transport import LIMITS, PolicyTransport, make_client
from pingforward.pingback import is_http_url
from tests.dns import Zone, dns_server
from tests.servers import Answer, Site, free_port, serve_app, serve_site

PF = "https://pf.example/?forward="
WM = "https://wm.example/webmention"
GOOD = PF + quote(WM, safe="")
OTHER = PF + quote("https://other.example/", safe="")

# (HEAD's X-Pingback, body) -> what WordPress's discover_pingback_server_uri returns (wp-includes/comment.php)
WORDPRESS = [
    pytest.param(None, f'<head><link rel="pingback" href="{GOOD}"></head>', GOOD, id="spec-form"),
    pytest.param("https://h.example/", f'<head><link rel="pingback" href="{GOOD}">', "https://h.example/", id="head"),
    pytest.param(None, "<head><link rel='pingback' href='https://a/x'>", "https://a/x", id="single-quotes"),
    pytest.param(None, '<p><link rel="pingback" href="https://a/?x=1&amp;y=2">', "https://a/?x=1&amp;y=2", id="amp"),
    pytest.param(
        None,
        '<p><link href="https://a/" rel="pingback"><link rel="stylesheet" href="/s.css">',
        "/s.css",
        id="href-first",
    ),
    pytest.param(
        None,
        '<p><link rel="pingback" href=\'https://a/\'><meta name="x">',
        "https://a/'><meta name=",
        id="mixed-quotes",
    ),
    pytest.param(None, '<html><link rel="pingback">', "<link rel=", id="no-href-reads-from-6"),
    pytest.param(None, 'rel="pingback" href="https://a/"', None, id="at-offset-0"),
    pytest.param(None, '<p><link rel="pingback" href="">', None, id="empty-href"),
    pytest.param(None, '<p><link rel="PINGBACK" href="https://a/">', None, id="case-sensitive"),
    pytest.param(None, "<p><link rel=pingback href=https://a/>", None, id="unquoted"),
    pytest.param(None, "", None, id="empty"),
]


@pytest.mark.parametrize(("head", "html", "expected"), WORDPRESS)
def test_wordpress_discovery(head: str | None, html: str, expected: str | None) -> None:
    assert wordpress_pingback(head, html) == expected


POST = "https://site.example/2024/post"
WM_LINK = f'<link rel="webmention" href="{WM}">'


def page(
    html: str,
    headers: tuple[str, ...] = (),
    head: str | None = None,
    *,
    link_headers: tuple[str, ...] = (),
    content_type: str | None = None,
    **kwargs: object,
) -> Page:
    """A fetched page whose GET answered the X-Pingback `headers`, Link headers and a Content-Type."""
    fields = [("X-Pingback", value) for value in headers] + [("Link", value) for value in link_headers]
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    values: dict[str, object] = {"url": POST, "status": 200, "html": html, "headers": tuple(fields)}
    values.update(kwargs)
    return Page(head_pingback=head, **values)  # type: ignore[arg-type]


# Page -> the FAIL findings' distinguishing words (empty: the setup is right)
ANALYZE = [
    pytest.param(page(f'<head><link rel="pingback" href="{GOOD}">{WM_LINK}'), [], id="link-only"),
    pytest.param(page(f"<head>{WM_LINK}", (GOOD,), GOOD), [], id="header-only"),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}">', (GOOD,), GOOD, link_headers=(f"<{WM}>; rel=webmention",)),
        [],
        id="both",
    ),
    pytest.param(
        page(f'<link rel="pingback" href="https://pf.example/?v=1&amp;forward={quote(WM, safe="")}">{WM_LINK}'),
        [],
        id="amp-accepted",
    ),
    pytest.param(page(f"<head>{WM_LINK}"), ["no pingback endpoint"], id="none"),
    pytest.param(
        page(f"<head>{WM_LINK}", (GOOD,), None),
        ["WordPress finds no pingback endpoint (it looks for X-Pingback in a HEAD"],
        id="header-get-only",
    ),
    pytest.param(
        page(f'<link href="{GOOD}" rel="pingback"><link rel="stylesheet" href="/s.css">{WM_LINK}'),
        ["not in the exact form", "WordPress reads '/s.css' instead"],
        id="href-before-rel",
    ),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}">{WM_LINK}', (OTHER,), OTHER),
        ["the header and the <link> differ"],
        id="disagree",
    ),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}">{WM_LINK}', (OTHER,)),
        ["the header and the <link> differ", "WordPress reads the <link>"],
        id="disagree-header-get-only",
    ),
    pytest.param(page(WM_LINK, (GOOD, GOOD), GOOD), ["2 X-Pingback headers"], id="two-headers"),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}"><link rel="pingback" href="{GOOD}">{WM_LINK}'),
        ["2 <link"],
        id="two-links",
    ),
    pytest.param(
        page(WM_LINK, ("https://webmention.io/example.com/xmlrpc",), "https://webmention.io/example.com/xmlrpc"),
        ["no forward parameter"],
        id="not-pingforward",
    ),
    pytest.param(
        page(WM_LINK, (PF + "ftp%3A%2F%2Fx%2F",), PF + "ftp%3A%2F%2Fx%2F"),
        ["Invalid 'forward' parameter: scheme 'ftp': only http and https"],
        id="bad-forward",
    ),
    pytest.param(page(WM_LINK, (GOOD + "#x",), GOOD + "#x"), ["#fragment"], id="fragment"),
    pytest.param(
        page(WM_LINK, (PF + quote("https://pf.example/wm", safe=""),), PF + quote("https://pf.example/wm", safe="")),
        ["the forward URL https://pf.example/wm points at the pingforward proxy itself"],
        id="forward-to-the-proxy",
    ),
    pytest.param(
        page(
            WM_LINK, (PF + quote("https://PF.example:443/", safe=""),), PF + quote("https://PF.example:443/", safe="")
        ),
        ["points at the pingforward proxy itself"],
        id="forward-to-the-proxy-spelt-otherwise",
    ),
    pytest.param(page(WM_LINK, ("/xmlrpc",), "/xmlrpc"), ["not an absolute http(s) URL"], id="relative"),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}&region=eu">{WM_LINK}', content_type="text/html"),
        [],
        id="region-is-no-entity",  # html.parser read "&region" as "®ion" (HTML §13.2.5.73)
    ),
    pytest.param(page(f'<link rel="pingback" href="{GOOD}">{WM_LINK}', status=404), ["HTTP 404"], id="404"),
]


@pytest.mark.parametrize(("subject", "fails"), ANALYZE)
def test_analyze(subject: Page, fails: list[str]) -> None:
    analysis = analyze(subject)
    failed = [f.text for f in analysis.findings if f.verdict is Verdict.FAIL]
    assert len(failed) == len(fails), failed
    for text, words in zip(failed, fails, strict=True):
        assert words in text
    assert analysis.ok is (not fails)


# Pages whose pingbacks arrive, with something worth a look: the warnings' distinguishing words.
WARNINGS = [
    pytest.param(page(f'<link rel="pingback" href="{GOOD}">'), ["no Webmention endpoint"], id="no-webmention"),
    pytest.param(
        page(f'<link rel="pingback" href="{GOOD}">{WM_LINK}', content_type="text/plain"),
        ["no Webmention endpoint"],
        id="webmention-link-outside-html",  # senders read <link> only in HTML (Webmention §3.1.2)
    ),
    pytest.param(
        page(f'<link rel="pingback" href="{OTHER}">{WM_LINK}'),
        ["forward differs from the page's Webmention endpoint https://wm.example/webmention: pingbacks go to"],
        id="forward-differs",
    ),
    pytest.param(page(f'<link rel="pingback" href="{GOOD}">{WM_LINK}'), [], id="none"),
]


@pytest.mark.parametrize(("subject", "warns"), WARNINGS)
def test_analyze_warnings_leave_the_setup_ok(subject: Page, warns: list[str]) -> None:
    analysis = analyze(subject)
    warned = [f.text for f in analysis.findings if f.verdict is Verdict.WARN]
    assert len(warned) == len(warns), warned
    for text, words in zip(warned, warns, strict=True):
        assert words in text
    assert analysis.ok, analysis.findings


def test_analyze_good_page_says_why() -> None:
    analysis = analyze(page(f"<head>{WM_LINK}", (GOOD,), GOOD))
    assert [(f.verdict, f.text) for f in analysis.findings] == [
        (Verdict.OK, f"fetched {POST} (HTTP 200)"),
        (Verdict.OK, f"X-Pingback header: {GOOD}"),
        (Verdict.INFO, 'no <link rel="pingback"> element'),
        (Verdict.OK, f"WordPress reads {GOOD}"),
        (Verdict.OK, f"forwards to {WM}"),
        (
            Verdict.INFO,
            "the proxy forwards a ping only after reading its source: a source that does not exist, does not link "
            "to this page, or copies most of this page's text is refused, not forwarded (its spam checks)",
        ),
        (Verdict.OK, f"forward matches the page's Webmention endpoint {WM}"),
    ]
    assert analysis.endpoint == GOOD


FRAGMENTS = st.sampled_from(
    ["<link ", "<a ", 'rel="pingback"', "rel='pingback'", 'rel="webmention"', "href=", '"', "'", ">", " ", "/>",
     "<!--", "-->", PF, GOOD, "&amp;", "forward=", "%3A", "#", "?"]
)  # fmt: skip


@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=40), st.one_of(st.none(), st.text(max_size=30)))
def test_analyze_takes_any_page(parts: list[str], header: str | None) -> None:
    analysis = analyze(page("".join(parts), () if header is None else (header,), header))
    assert analysis.findings[0] == Finding(Verdict.OK, f"fetched {POST} (HTTP 200)")
    assert analysis.endpoint is None or is_http_url(analysis.endpoint)


@pytest.mark.parametrize(
    ("endpoint", "forward", "note"),
    [
        # Pasted unencoded, with a query of its own: all of it is the forward URL's, nothing is ignored.
        (PF + "https://wm.example/webmention?token=a+b&x=1", "https://wm.example/webmention?token=a+b&x=1", "written"),
        (PF + quote(WM, safe="") + "&x=1", WM, "other parameters next to forward (x) are ignored"),
        (GOOD, WM, None),
    ],
    ids=["unencoded-with-query", "encoded-and-another-parameter", "encoded"],
)
def test_what_check_says_of_other_parameters(endpoint: str, forward: str, note: str | None) -> None:
    findings = analyze(page(WM_LINK, (endpoint,), endpoint)).findings
    assert Finding(Verdict.OK, f"forwards to {forward}") in findings
    notes = [f.text for f in findings if f.verdict is Verdict.INFO and ("parameters" in f.text or "encoding" in f.text)]
    ignored = [text for text in notes if "ignored" in text]
    if note is None:
        assert notes == []
    elif note == "written":
        assert ignored == [] and len(notes) == 1 and "without percent-encoding" in notes[0]
    else:
        assert notes == [note + "; if they belong to your Webmention endpoint, percent-encode the whole forward URL"]


def test_home_page_note() -> None:
    findings = analyze(page(WM_LINK, (GOOD,), GOOD, url="https://site.example/")).findings
    assert any(f.verdict is Verdict.INFO and "home page" in f.text for f in findings)


def answer(fault: int | None = None, text: str = "") -> bytes:
    if fault is None:
        return xmlrpc.client.dumps((text,), methodresponse=True).encode()
    return xmlrpc.client.dumps(xmlrpc.client.Fault(fault, text), methodresponse=True).encode()


JUDGE = [
    pytest.param(200, answer(None, "Pingback from a to b was successful!"), Verdict.OK, id="success"),
    pytest.param(200, answer(17, "no_link_found"), Verdict.OK, id="receiver-17"),
    pytest.param(200, answer(48, "already_registered"), Verdict.OK, id="receiver-48"),
    pytest.param(200, answer(0, "HTTP 400 invalid_request"), Verdict.OK, id="receiver-0"),
    pytest.param(200, answer(0, "Missing 'forward' parameter"), Verdict.FAIL, id="missing-forward"),
    pytest.param(200, answer(49, "refused"), Verdict.FAIL, id="access-denied"),
    pytest.param(200, answer(50, "upstream: could not connect"), Verdict.FAIL, id="upstream"),
    pytest.param(200, answer(-32601, "no such method"), Verdict.FAIL, id="xmlrpc"),
    pytest.param(200, b"<html>hello</html>", Verdict.FAIL, id="not-xmlrpc"),
    pytest.param(405, b"", Verdict.FAIL, id="http-405"),
    # The proxy's own junk checks: the proxy works, and says why it did not forward this test ping.
    pytest.param(200, answer(17, "no link (PINGFORWARD_VERIFY_SOURCE)."), Verdict.WARN, id="checks-no-link"),
    pytest.param(200, answer(429, "too many (PINGFORWARD_FLOOD_CLIENT)"), Verdict.WARN, id="checks-flood"),
    pytest.param(200, answer(48, "forwarded once (PINGFORWARD_REPEAT_WINDOW)"), Verdict.OK, id="checks-repeat"),
]


@pytest.mark.parametrize(("status", "body", "verdict"), JUDGE)
def test_judge_ping(status: int, body: bytes, verdict: Verdict) -> None:
    assert judge_ping(status, body).verdict is verdict


def html_page(pingback: str, webmention: str) -> bytes:
    return (
        f'<!doctype html><html><head><link rel="pingback" href="{pingback}">'
        f'<link rel="webmention" href="{webmention}"></head><body><p>A post.</p></body></html>'
    ).encode()


@pytest.mark.anyio
async def test_check_follows_redirects_and_resolves_against_the_final_url(local_settings: Settings) -> None:
    with serve_site() as site:
        endpoint = site.url("/blog/wm")
        site.routes[("GET", "/old")] = (301, [("Location", "/blog/post")], b"")
        site.routes[("GET", "/blog/post")] = (
            200,
            [("Content-Type", "text/html")],
            html_page(PF + quote(endpoint, safe=""), "wm"),
        )
        async with make_client(local_settings) as client:
            analysis = await check(client, site.url("/old"))
    assert analysis.ok, analysis.findings
    assert analysis.findings[0].text == f"fetched {site.url('/blog/post')} (HTTP 200)"
    assert analysis.findings[-1].verdict is Verdict.INFO  # no test ping without --ping
    assert [request.method for request in site.log] == ["HEAD", "HEAD", "GET", "GET"]


@pytest.mark.anyio
async def test_check_redirects_by_the_one_rule(local_settings: Settings) -> None:
    # 303 and 308 followed with the same GET and HEAD; a redirect to what is no http(s) URL is the answer.
    with serve_site() as site:
        site.routes[("GET", "/a")] = (303, [("Location", "/b")], b"")
        site.routes[("GET", "/b")] = (308, [("Location", site.url("/post"))], b"")
        site.routes[("GET", "/post")] = (200, [("Content-Type", "text/html")], html_page(PF + "x", "wm"))
        site.routes[("GET", "/ftp")] = (302, [("Location", "ftp://site.example/post")], b"")
        site.routes[("GET", "/loop")] = (302, [("Location", "/loop")], b"")
        async with make_client(local_settings) as client:
            followed = await check(client, site.url("/a"))
            ftp = await check(client, site.url("/ftp"))
            loop = await check(client, site.url("/loop"))
        assert [(request.method, request.path) for request in site.log[:6]] == [
            ("HEAD", "/a"),
            ("HEAD", "/b"),
            ("HEAD", "/post"),
            ("GET", "/a"),
            ("GET", "/b"),
            ("GET", "/post"),
        ]
        assert len(site.received("GET", "/loop")) == 21  # the first request and 20 redirects, as httpx allowed
    assert followed.findings[0].text == f"fetched {site.url('/post')} (HTTP 200)"
    assert ftp.findings[0].text == f"fetched {site.url('/ftp')}: HTTP 302, not a 2xx"
    assert loop.findings[0].text == f"fetched {site.url('/loop')}: HTTP 302, not a 2xx"


@pytest.mark.anyio
async def test_check_a_host_that_is_not_idna(local_settings: Settings) -> None:
    async with make_client(local_settings) as client:
        for host in ("xn--zz.example", "xn--ls8h.la", "💩.la"):
            analysis = await check(client, f"http://{host}/post")
            assert not analysis.ok
            assert analysis.findings[0].text.startswith(f"could not fetch http://{host}/post"), analysis.findings


@pytest.mark.anyio
async def test_check_unreachable(local_settings: Settings) -> None:
    port = free_port()
    async with make_client(local_settings) as client:
        analysis = await check(client, f"http://127.0.0.1:{port}/post")
    assert not analysis.ok
    text = analysis.findings[0].text
    assert text == f"could not fetch http://127.0.0.1:{port}/post: 127.0.0.1 refused the connection: " + (
        "nothing listens on that port"
    )


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        pytest.param(OutboundTimeout("no answer from x"), "site.example did not answer in time", id="timeout"),
        pytest.param(OutboundTimeout("no slot", Failure.BUSY), "site.example did not answer in time", id="busy"),
        pytest.param(ResolveError("cannot resolve x"), "there is no host site.example", id="dns"),
        pytest.param(ConnectFailed("x", Failure.REFUSED), "refused the connection", id="refused"),
        pytest.param(ConnectFailed("x", Failure.RESET), "site.example broke off the connection", id="reset"),
        pytest.param(ConnectFailed("x", Failure.UNREACHABLE), "no route to site.example", id="unreachable"),
        pytest.param(ConnectFailed("x", Failure.TLS), "TLS handshake with site.example failed", id="tls"),
        pytest.param(BrokenAnswer("x"), "site.example broke off the exchange", id="protocol"),
        pytest.param(OutboundError("x", Failure.URL), "not a URL that can be fetched", id="url"),
        pytest.param(httpx.InvalidURL("x"), "not a URL that can be fetched", id="invalid"),
        pytest.param(
            Refused("port 22 is not allowed (PINGFORWARD_ALLOWED_PORTS)"), "PINGFORWARD_ALLOWED_PORTS", id="policy"
        ),
    ],
)
def test_errors_in_a_site_owners_words(exc: OutboundError | httpx.InvalidURL, words: str) -> None:
    text = explain(exc, "https://site.example/post")
    assert words in text
    assert type(exc).__name__ not in text and "Errno" not in text


@pytest.mark.anyio
async def test_a_name_that_does_not_exist_is_named_so(local_settings: Settings) -> None:
    # Through the real resolver (c-ares), asking a DNS server that answers NXDOMAIN for the name.
    with dns_server(Zone({})) as (host, port):
        resolver = Resolver(nameservers=[f"{host}:{port}"], timeout=2.0)

        async def resolve(name: str, port: int) -> tuple[str, ...]:
            return await resolver.resolve(name)

        transport = PolicyTransport(local_settings.policy, LIMITS, resolver=resolve)
        async with make_client(local_settings, transport) as client:
            analysis = await check(client, "http://no-such-host.invalid/a-post")
        await resolver.aclose()
    assert [finding.text for finding in analysis.findings] == [
        "could not fetch http://no-such-host.invalid/a-post: there is no host no-such-host.invalid "
        "(check the spelling, or the DNS)"
    ]


def test_pingback_only_page_passes_once_a_ping_is_delivered(
    capsys: pytest.CaptureFixture[str], local_env: dict[str, str], local_settings: Settings
) -> None:
    # No rel="webmention" on the page: a warning, and exit status 0, when the ping got through. The test
    # ping's source is a real page elsewhere that links to the post, as the proxy's checks require.
    with serve_site() as site, linking_page() as source, serve_app(create_app(local_settings)) as proxy:
        endpoint = site.url("/wm")
        href = f"{proxy}/?forward={quote(endpoint, safe='')}"
        site.routes[("GET", "/post")] = (200, [], f'<head><link rel="pingback" href="{href}"></head>'.encode())
        site.routes[("POST", "/wm")] = (202, [], b'{"result": "thanks"}')
        source.routes[("GET", "/reply")] = (200, [], f'<p>See <a href="{site.url("/post")}">this</a>.</p>'.encode())
        source.routes[("GET", "/other")] = source.routes[("GET", "/reply")]
        assert main(["check", "--ping", "--source", source.url("/reply"), site.url("/post")]) == 0
        out = capsys.readouterr().out
        # Another source: the same test ping again would be a repeat, which the proxy does not forward.
        assert main(["check", "--json", "--ping", "--source", source.url("/other"), site.url("/post")]) == 0
        lines = capsys.readouterr().out.splitlines()
    # The proxy runs in this process, and its ping line may come before or after check's own lines.
    printed = [line for line in out.splitlines() if not line.startswith("INFO pingforward")]
    assert printed[-1] == "no problems found, 1 warning"
    assert "warn  the page advertises no Webmention endpoint" in out
    findings = [json.loads(line) for line in lines if not line.startswith("INFO ")]  # the proxy's ping line
    assert {finding["page"] for finding in findings} == {site.url("/post")}
    # no X-Pingback; the spam checks; no Webmention
    assert [f["verdict"] for f in findings if f["verdict"] != "ok"] == ["info", "info", "warn"]
    assert findings[-1] == {"page": site.url("/post"), "verdict": "ok", "message": "test ping delivered: thanks"}


def test_a_test_ping_from_the_page_itself_is_refused_and_check_says_why(
    capsys: pytest.CaptureFixture[str], local_env: dict[str, str], local_settings: Settings
) -> None:
    with serve_site() as site, serve_app(create_app(local_settings)) as proxy:
        endpoint = site.url("/wm")
        site.routes[("GET", "/post")] = (200, [], html_page(f"{proxy}/?forward={quote(endpoint, safe='')}", endpoint))
        assert main(["check", "--ping", site.url("/post")]) == 0  # the setup is right: a warning
        out = capsys.readouterr().out
    assert "warn  test ping: refused by the proxy's spam checks: fault 0 The source URI and the target URI" in out
    assert "--source" in out and site.received("POST", "/wm") == []


def test_json_failures_set_the_exit_status(capsys: pytest.CaptureFixture[str], local_env: dict[str, str]) -> None:
    assert main(["check", "--json", f"http://127.0.0.1:{free_port()}/post"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["verdict"] == "fail"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "verdict", "words"),
    [
        pytest.param((202, [], b'{"result": "thanks"}'), Verdict.OK, "test ping delivered: thanks", id="accepted"),
        pytest.param((400, [], b'{"error": "no_link_found"}'), Verdict.OK, "fault 17 no_link_found", id="refused"),
        pytest.param((503, [], b""), Verdict.FAIL, "fault 50 upstream: HTTP 503", id="unavailable"),
    ],
)
async def test_check_with_ping(local_settings: Settings, reply: Answer, verdict: Verdict, words: str) -> None:
    with serve_site() as site, linking_page() as source, serve_app(create_app(local_settings)) as proxy:
        endpoint = site.url("/wm")
        site.routes[("GET", "/post")] = (200, [], html_page(f"{proxy}/?forward={quote(endpoint, safe='')}", endpoint))
        site.routes[("POST", "/wm")] = reply
        source.routes[("GET", "/linking")] = (200, [], f'<a href="{site.url("/post")}">a post</a>'.encode())
        async with make_client(local_settings) as client:
            analysis = await check(client, site.url("/post"), ping=True, source=source.url("/linking"))
    last = analysis.findings[-1]
    assert (last.verdict, analysis.ok) == (verdict, verdict is Verdict.OK), analysis.findings
    assert words in last.text
    (sent,) = [request for request in site.log if request.method == "POST"]
    assert sent.form == {"source": [source.url("/linking")], "target": [site.url("/post")]}


def linking_page() -> contextlib.AbstractContextManager[Site]:
    """Another site, on another address, for a test ping's source."""
    return serve_site("127.0.0.2")


def test_cli_exit_status(capsys: pytest.CaptureFixture[str], local_env: dict[str, str]) -> None:
    with serve_site() as site:
        endpoint = site.url("/wm")
        site.routes[("GET", "/good")] = (200, [], html_page(PF + quote(endpoint, safe=""), endpoint))
        site.routes[("GET", "/odd")] = (200, [], html_page(PF + quote(endpoint, safe=""), endpoint + "?b=\x1b[2J"))
        site.routes[("GET", "/bad")] = (200, [], b"<p>no pingback here")
        assert main(["check", site.url("/good")]) == 0
        good = capsys.readouterr().out
        assert main(["check", site.url("/odd")]) == 0  # a warning leaves the exit status alone
        odd = capsys.readouterr().out
        assert main(["check", site.url("/bad")]) == 1
        bad = capsys.readouterr().out
    assert good.splitlines()[-1] == "no problems found"
    assert f"ok    forwards to {endpoint}" in good.splitlines()
    assert odd.splitlines()[-1] == "no problems found, 1 warning"
    assert "warn  forward differs" in odd and "\x1b" not in odd and "\\x1b[2J" in odd
    assert bad.splitlines()[-1] == "1 problem found"
    assert "FAIL  the page advertises no pingback endpoint" in bad


def test_check_reads_the_page_in_its_declared_charset(
    capsys: pytest.CaptureFixture[str], local_env: dict[str, str]
) -> None:
    # No charset in Content-Type, a <meta charset>: decoded as the sender decodes (HTML §13.2.3.2 prescan).
    with serve_site() as site:
        endpoint = site.url("/wé")
        body = f'<meta charset="iso-8859-1">{html_page(PF + quote(endpoint, safe=""), "/wé").decode()}'
        site.routes[("GET", "/post")] = (200, [("Content-Type", "text/html")], body.encode("latin-1"))
        assert main(["check", site.url("/post")]) == 0, capsys.readouterr().out
    assert f"ok    forward matches the page's Webmention endpoint {endpoint}" in capsys.readouterr().out.splitlines()


@pytest.mark.anyio
async def test_fetch_page_never_inflates_a_gzip_bomb() -> None:
    # A real server on 127.0.0.1: respx itself would read and inflate the mocked body.
    import asyncio
    import gzip
    import tracemalloc

    from pingforward.check import fetch_page

    bomb = gzip.compress(b"<p>" + b"\0" * (50 * 1024 * 1024))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                writer.write(head % len(bomb) + (b"" if request.startswith(b"HEAD") else bomb))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/post"
    tracemalloc.start()
    try:
        async with server, make_client(Settings(allow_private_networks=True, allowed_ports=None)) as client:
            page = await fetch_page(client, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert page.html.startswith("<p>")
    assert peak < 20 * 1024 * 1024, peak  # the bomb inflates to 50 MiB
