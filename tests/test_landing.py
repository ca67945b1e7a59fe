from __future__ import annotations

import base64
import hashlib
import html
import re
import xmlrpc.client
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.provisional import urls

from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.errors import EndpointError
from pingforward.forward import parse_forward
from pingforward.landing import EXAMPLE_ENDPOINT, INSTALL, render, tags_for
from pingforward.net.policy import Policy
from pingforward.pingback import FaultCode
from tests.servers import run_cli_server

PAGE = "https://pf.example/"
OPEN = Policy()
SITES = Settings(allowed_hosts=frozenset({"webmention.io", "*.site.example"}))

# (typed endpoint, the link element the page must show)
TAGS = [
    pytest.param(
        "https://webmention.io/example.com/webmention",
        '<link rel="pingback" href="https://pf.example/?forward=https%3A%2F%2Fwebmention.io%2Fexample.com%2Fwebmention">',
        id="webmention.io",
    ),
    pytest.param(
        "  https://example.com/wm?a=1&b=2#x  ",
        '<link rel="pingback" href="https://pf.example/?forward=https%3A%2F%2Fexample.com%2Fwm%3Fa%3D1%26b%3D2%23x">',
        id="query-fragment-whitespace",
    ),
    pytest.param(
        "http://example.com:8080/a+b/é",
        '<link rel="pingback" href="https://pf.example/?forward=http%3A%2F%2Fexample.com%3A8080%2Fa%2Bb%2F%C3%A9">',
        id="plus-port-unicode",
    ),
]

# (typed endpoint, words the explanation must contain)
REFUSED = [
    pytest.param("", "Enter the URL", id="empty"),
    pytest.param("   ", "Enter the URL", id="blank"),
    pytest.param("example.com/webmention", "full URL", id="no-scheme"),
    pytest.param("ftp://example.com/wm", "full URL", id="ftp"),
    pytest.param("javascript:alert(1)", "full URL", id="javascript"),
    pytest.param("https:///path", "full URL", id="no-host"),
    pytest.param("https://%zz/", "not valid", id="bad-host"),
    pytest.param("https://[::1/", "not valid", id="bad-ipv6"),
    pytest.param("https://exa mple.com/", "spaces", id="space"),
    pytest.param("https://example.com:99999/", "invalid port", id="port"),
    pytest.param("https://user:pw@example.com/", "password", id="userinfo"),
    pytest.param("https://example.com/" + "a" * 2100, "longer than 2048", id="long"),
    # The proxy refuses a forward URL that names itself (app.destination): so does the form.
    pytest.param("https://pf.example/webmention", "this pingforward instance itself", id="itself"),
    pytest.param("https://PF.example:443/?forward=x", "this pingforward instance itself", id="itself-port"),
]


@pytest.mark.parametrize(("endpoint", "link"), TAGS)
def test_tags(endpoint: str, link: str) -> None:
    tags = tags_for(PAGE, endpoint, OPEN)
    assert tags.link == link
    assert tags.header == "X-Pingback: " + link.split('href="')[1].rstrip('">')
    assert parse_forward(urlsplit(tags.href).query) == endpoint.strip()


@pytest.mark.parametrize(("endpoint", "words"), REFUSED)
def test_refused(endpoint: str, words: str) -> None:
    with pytest.raises(EndpointError, match=words):
        tags_for(PAGE, endpoint, OPEN)


@given(urls())
def test_any_url_round_trips(url: str) -> None:
    try:
        tags = tags_for(PAGE, url, OPEN)
    except EndpointError:
        return  # hypothesis's URLs include ports and such that the proxy refuses too
    # Read back the way WordPress does: the raw href, the query kept verbatim.
    href = re.fullmatch(r'<link rel="pingback" href="([^"]+)">', tags.link)
    assert href is not None
    assert parse_forward(urlsplit(href[1]).query) == url.strip()


@given(st.text(max_size=300))
def test_any_input_gets_an_answer(endpoint: str) -> None:
    status, page = render(PAGE, endpoint, Settings())
    assert status in (200, 400)
    assert ('id="link-tag"' in page) is (status == 200)
    assert page.count("<script") == 1  # the page's own


# (settings, typed endpoint, words the explanation must contain; None: tags are shown)
POLICED = [
    pytest.param(Settings(), "http://127.0.0.1/wm", "loopback address 127.0.0.1", id="loopback"),
    pytest.param(Settings(), "http://[::ffff:10.0.0.1]/wm", "private (wrapped in IPv6) address", id="mapped-private"),
    pytest.param(Settings(), "https://example.com:9000/wm", "port 9000 is not allowed", id="port"),
    pytest.param(Settings(allowed_ports=None), "https://example.com:9000/wm", None, id="any-port"),
    pytest.param(Settings(allow_private_networks=True), "http://127.0.0.1/wm", None, id="private-allowed"),
    pytest.param(SITES, "https://WEBMENTION.io/x/webmention", None, id="allowed-host"),
    pytest.param(SITES, "https://blog.site.example/wm", None, id="allowed-pattern"),
    pytest.param(SITES, "https://example.com/webmention", "host example.com is not allowed", id="other-host"),
]


@pytest.mark.parametrize(("settings", "endpoint", "words"), POLICED)
def test_policy_applies_to_the_form(settings: Settings, endpoint: str, words: str | None) -> None:
    status, page = render(PAGE, endpoint, settings)
    link, _, error = page_parts(page)
    if words is None:
        assert (status, error) == (200, None) and link is not None
    else:
        assert status == 400 and link is None and error is not None and words in error


def test_policy_rendered() -> None:
    settings = Settings(
        allowed_hosts=frozenset({"webmention.io", "<b>x</b>"}),
        allowed_ports=frozenset({443}),
        timeout=2.5,
        max_body=4096,
    )
    status, page = render(PAGE, None, settings)
    assert status == 200
    assert "<li>Forwards to: &lt;b&gt;x&lt;/b&gt;, webmention.io</li>" in page
    assert "<li>Ports: 443</li>" in page
    assert "<li>Addresses in private networks: refused</li>" in page
    assert "2.5 seconds" in page and "4096 bytes" in page
    _, page = render(PAGE, None, Settings())
    assert "<li>Forwards to: any public host</li>" in page and "<li>Ports: 80, 443, 8080, 8443</li>" in page
    _, page = render(PAGE, None, Settings(allowed_ports=None, allow_private_networks=True))
    assert "<li>Forwards to: any host</li>" in page and "<li>Ports: any</li>" in page
    assert "<li>Addresses in private networks: allowed</li>" in page


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (Settings(), "a source that does not exist (fault 16) or does not link to your page (fault 17) is refused, "
         "and so is a copy of your post, carrying 50% or more of its text (fault 49); one that cannot be read"),
        (Settings(copy_share=0.8, verify_timeout=2.0), "within 2 s): a source that does not exist"),
        (Settings(copy_share=None), "(fault 17) is refused; one that cannot be read"),
        (Settings(verify_source=False), "on, without reading sources"),
        (Settings(spam_checks=False), "off: every well-formed ping is forwarded."),
    ],
)  # fmt: skip
def test_the_spam_checks_are_explained_as_this_instance_runs_them(settings: Settings, words: str) -> None:
    _, page = render(PAGE, None, settings)
    (item,) = [line for line in page.splitlines() if line.startswith("<li>Spam checks: ")]
    assert words in item


def test_fault_table_lists_what_site_owners_act_on() -> None:
    _, page = render(PAGE, None, Settings())
    rows = re.findall(r'<tr><th scope="row">(-?\d+)</th><td>([^<]*)</td><td class="names"[^>]*>([^<]*)</td>', page)
    # The Pingback codes, folded away; the XML-RPC ones (the sender's own errors) in one sentence.
    assert [int(code) for code, _, _ in rows] == [int(code) for code in FaultCode if code >= 0]
    assert page.index("<details>") < page.index('<th scope="row">17</th>') < page.index("</details>")
    assert "Negative codes (−32700 to −32601) are XML-RPC errors" in page
    assert ("17", FaultCode.NO_LINK.message, "no_link_found") in rows
    assert re.search(r'<th scope="row">48</th>.*?marks the link pinged', page)


def test_example_tag_before_anything_is_entered() -> None:
    status, page = render(PAGE, None, Settings())
    assert status == 200 and 'id="link-tag"' not in page
    example = re.search(r'<code id="example-tag">(.*?)</code>', page)
    assert example is not None
    href = html.unescape(example[1]).removeprefix('<link rel="pingback" href="').removesuffix('">')
    assert parse_forward(urlsplit(href).query) == EXAMPLE_ENDPOINT
    assert f'<code id="check-commands">{INSTALL}\npingforward check' in page  # no clone needed


def test_injection_is_escaped() -> None:
    hostile = '"><script>alert(1)</script><input value="'
    status, page = render(PAGE, hostile, Settings())
    assert status == 400
    assert "<script>alert" not in page and 'value="&quot;&gt;&lt;script&gt;' in page
    status, page = render(PAGE, "https://e.example/" + hostile.replace(" ", ""), Settings())
    assert status == 200 and "<script>alert" not in page
    assert "%3Cscript%3E" in page  # percent-encoded inside the tag


def page_parts(html: str) -> tuple[str | None, str | None, str | None]:
    def first(pattern: str) -> str | None:
        match = re.search(pattern, html, re.S)
        return match[1] if match else None

    return (
        first(r'<code id="link-tag">(.*?)</code>'),
        first(r'<code id="header-line">(.*?)</code>'),
        first(r'<p class="error" id="endpoint-error" role="alert">(.*?)</p>'),
    )


@asynccontextmanager
async def page_client(base: str = "https://pf.example") -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(create_app(Settings())) as manager:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url=base) as client:
            yield client


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/webmention"])
async def test_page_served(path: str) -> None:
    async with page_client() as client:
        response = await client.get(path, params={"endpoint": "https://example.com/wm"})
        head = await client.head(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    # One script, allowed by its hash: the one in the page.
    (script,) = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = [rule.strip() for rule in response.headers["content-security-policy"].split(";")]
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    link, header, error = page_parts(response.text)
    expected = f"https://pf.example{path}?forward=https%3A%2F%2Fexample.com%2Fwm"
    assert link == f"&lt;link rel=&quot;pingback&quot; href=&quot;{expected}&quot;&gt;"
    assert header == f"X-Pingback: {expected}"
    assert error is None
    assert f'action="{path}"' in response.text
    assert head.status_code == 200 and head.content == b""


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ["", "nope", "https://exa mple.com", "\x00", "https://%zz", "https://[::1"])
async def test_bad_endpoint_is_explained(endpoint: str) -> None:
    async with page_client() as client:
        response = await client.get("/", params={"endpoint": endpoint})
    assert response.status_code == 400
    link, header, error = page_parts(response.text)
    assert link is None and header is None and error is not None and "Not usable" in error
    assert 'aria-invalid="true"' in response.text


@pytest.mark.anyio
async def test_post_stays_xmlrpc_and_nothing_redirects() -> None:
    async with page_client() as client:
        for path in ("/", "/webmention"):
            response = await client.post(path, content=xmlrpc.client.dumps((), "system.listMethods"))
            assert response.headers["content-type"].startswith("text/xml")
            assert xmlrpc.client.loads(response.content)[0][0] == ["pingback.ping", "system.listMethods"]
        for path in ("/webmention/", "//", "/?forward=https://example.com/", "/webmention?endpoint=//x"):
            response = await client.get(path)
            assert not response.is_redirect and "location" not in response.headers
        response = await client.put("/webmention")
        assert response.status_code == 405
        assert sorted(response.headers["allow"].split(", ")) == ["GET", "HEAD", "POST"]


@pytest.mark.anyio
async def test_base_url_follows_scheme_and_host() -> None:
    async with page_client("http://localhost:8123") as client:
        response = await client.get("/", params={"endpoint": "https://example.com/wm"})
    assert page_parts(response.text)[1] == "X-Pingback: http://localhost:8123/?forward=https%3A%2F%2Fexample.com%2Fwm"


def test_behind_a_proxy(tmp_path: Path) -> None:
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 by default, as from a platform's router.
    with run_cli_server(tmp_path) as server:
        response = httpx.get(
            server.base + "/webmention",
            params={"endpoint": "https://example.com/wm"},
            headers={"X-Forwarded-Proto": "https", "Host": "pf.example"},
            trust_env=False,
        )
    assert (
        page_parts(response.text)[1]
        == "X-Pingback: https://pf.example/webmention?forward=https%3A%2F%2Fexample.com%2Fwm"
    )
