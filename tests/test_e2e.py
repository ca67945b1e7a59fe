"""End to end: the proxy under uvicorn (the Procfile's command), a real receiver, Python's xmlrpc.client.

Every connection stays on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import xmlrpc.client
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest

from pingforward.pingback import FaultCode
from tests.conftest import load
from tests.servers import LOCAL_ENV, Receiver, free_port, ping, proxy, receiver

SOURCE = "https://blog.example/post"
TARGET = "https://site.example/notes/42"

# These tests are about forwarding alone (the receiver's answers, redirects, addresses): the spam checks,
# which would refuse these made-up sources, are off here and tested end to end in test_spam.py.
NO_CHECKS = {"PINGFORWARD_SPAM_CHECKS": "off"}
OPEN = {**LOCAL_ENV, **NO_CHECKS, "PINGFORWARD_TIMEOUT": "1"}


@pytest.fixture(scope="module")
def wm() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[str]:
    with proxy(OPEN) as base:
        yield base


def test_success_reaches_the_receiver(open_proxy: str, wm: Receiver) -> None:
    before = len(wm.received)
    assert ping(open_proxy, wm.url + "/ok?key=1") == "Webmention accepted"
    got = wm.received[before]
    assert got.path == "/ok?key=1"
    # As in the Webmention spec's own example (§3.1.2): ":" and "/" need no escape in a form body.
    assert got.body == b"source=https://blog.example/post&target=https://site.example/notes/42"
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    assert got.headers["accept"] == "application/json"
    assert got.headers["original-remote-addr"] == "127.0.0.1"
    assert got.headers["user-agent"].startswith("pingforward/")


def test_created_reports_the_status_url(open_proxy: str, wm: Receiver) -> None:
    assert ping(open_proxy, wm.url + "/created") == f"Queued Status: {wm.url}/status-page/1"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/error/source_not_found", FaultCode.SOURCE_NOT_FOUND),
        ("/error/invalid_source", FaultCode.SOURCE_NOT_FOUND),
        ("/error/no_link_found", FaultCode.NO_LINK),
        ("/error/target_not_found", FaultCode.TARGET_NOT_FOUND),
        ("/error/target_not_supported", FaultCode.TARGET_NOT_PINGABLE),
        ("/error/invalid_target", FaultCode.TARGET_NOT_PINGABLE),
        ("/error/target_not_valid", FaultCode.TARGET_NOT_PINGABLE),
        ("/error/already_registered", FaultCode.ALREADY_REGISTERED),
        ("/error/access_denied", FaultCode.ACCESS_DENIED),
        ("/error/forbidden", FaultCode.ACCESS_DENIED),
        ("/status/401", FaultCode.ACCESS_DENIED),
        ("/status/403", FaultCode.ACCESS_DENIED),
        ("/status/429", FaultCode.UPSTREAM_ERROR),
        ("/status/500", FaultCode.UPSTREAM_ERROR),
        ("/status/503", FaultCode.UPSTREAM_ERROR),
        ("/error/invalid_request", FaultCode.GENERIC),
        ("/status/404", FaultCode.GENERIC),
        ("/redirect/300/ok", FaultCode.UPSTREAM_ERROR),
    ],
)
def test_every_mapped_fault_reaches_xmlrpc_client(open_proxy: str, wm: Receiver, path: str, code: FaultCode) -> None:
    answer = ping(open_proxy, wm.url + path)
    assert isinstance(answer, tuple) and answer[0] == code, answer
    if "/error/" in path:
        assert path.rsplit("/", 1)[1] in answer[1]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_followed_with_post(open_proxy: str, wm: Receiver, status: int) -> None:
    before = len(wm.received)
    assert ping(open_proxy, f"{wm.url}/redirect/{status}/ok") == "Webmention accepted"
    first, second = wm.received[before:]
    assert second.path == "/ok" and second.body == first.body


def test_see_other_means_accepted(open_proxy: str, wm: Receiver) -> None:
    answer = ping(open_proxy, f"{wm.url}/redirect/303/status-page")
    assert answer == f"Pingback from {SOURCE} to {TARGET} was accepted."


def test_redirect_loop_is_fault_50(open_proxy: str, wm: Receiver) -> None:
    before = len(wm.received)
    answer = ping(open_proxy, f"{wm.url}/redirect/307/redirect/307/redirect/307/redirect/307/ok")
    assert answer == (FaultCode.UPSTREAM_ERROR, "upstream: more than 3 redirects")
    assert len(wm.received) - before == 4


def test_hang_times_out_with_fault_50(open_proxy: str, wm: Receiver) -> None:
    assert ping(open_proxy, wm.url + "/hang") == (
        FaultCode.UPSTREAM_ERROR,
        f"upstream: no answer from 127.0.0.1 port {urlsplit(wm.url).port} within 1 s",
    )


def test_refused_port_is_fault_50(open_proxy: str) -> None:
    port = free_port()
    answer = ping(open_proxy, f"http://127.0.0.1:{port}/webmention")
    assert answer == (FaultCode.UPSTREAM_ERROR, f"upstream: connection to 127.0.0.1 port {port} refused")


def test_wordpress_shaped_raw_request(open_proxy: str, wm: Receiver) -> None:
    # WordPress's IXR client: HTTP/1.0, text/xml without charset, its own User-Agent, &amp; in the query.
    before = len(wm.received)
    url = urlsplit(open_proxy)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    connection._http_vsn_str = "HTTP/1.0"  # type: ignore[attr-defined]
    body = load("pingback/wordpress.xml")
    path = f"/?utm=x&amp;forward={quote(wm.url + '/ok', safe='')}"
    connection.request(
        "POST",
        path,
        body,
        {"Content-Type": "text/xml", "User-Agent": "The Incutio XML-RPC PHP Library -- WordPress/6.9"},
    )
    response = connection.getresponse()
    content = response.read()
    connection.close()
    assert response.status == 200 and response.getheader("Content-Type") == "text/xml; charset=utf-8"
    assert xmlrpc.client.loads(content)[0] == ("Webmention accepted",)
    assert b"lang%3Den%27s" in wm.received[before].body


# Loopback in disguise: each reaches 127.0.0.1 if the policy lets it through.
DISGUISED = [
    "http://127.0.0.1:{port}/ok",
    "http://localhost:{port}/ok",
    "http://127.1:{port}/ok",
    "http://2130706433:{port}/ok",
    "http://0x7f000001:{port}/ok",
    "http://127.0.0.1.:{port}/ok",
    "http://0.0.0.0:{port}/ok",
    "http://0:{port}/ok",
    "http://[::ffff:127.0.0.1]:{port}/ok",
    "http://[::1]:{port}/ok",
    "http://LOCALHOST:{port}/ok",
]


def test_loopback_in_disguise_is_refused_by_default() -> None:
    # Only the port rule is opened, so every refusal below comes from the address rule.
    with receiver() as wm, proxy({**NO_CHECKS, "PINGFORWARD_ALLOWED_PORTS": "*", "PINGFORWARD_TIMEOUT": "2"}) as base:
        port = urlsplit(wm.url).port
        for template in DISGUISED:
            answer = ping(base, template.format(port=port))
            assert isinstance(answer, tuple) and answer[0] == FaultCode.ACCESS_DENIED, (template, answer)
            assert "loopback" in answer[1] or "unspecified" in answer[1], (template, answer)
            assert "PINGFORWARD_ALLOW_PRIVATE_NETWORKS" in answer[1]
        # Dotted octal is no address an HTTP client writes (httpx refuses it): unusable, fault 0.
        assert ping(base, f"http://0177.0.0.1:{port}/ok") == (
            FaultCode.GENERIC,
            "Invalid 'forward' parameter: host '0177.0.0.1' is no name or address a connection can be made to",
        )
        assert wm.received == []


def test_default_ports_refuse_a_loopback_port_before_resolving() -> None:
    with receiver() as wm, proxy(NO_CHECKS) as base:
        answer = ping(base, wm.url + "/ok")
        assert isinstance(answer, tuple) and answer[0] == FaultCode.ACCESS_DENIED and "port" in answer[1]
        assert wm.received == []


def test_allow_private_networks_opens_loopback(open_proxy: str, wm: Receiver) -> None:
    port = urlsplit(wm.url).port
    assert ping(open_proxy, f"http://localhost:{port}/ok") == "Webmention accepted"


def test_the_client_address_is_the_one_the_router_appended(open_proxy: str, wm: Receiver) -> None:
    # Under the Procfile one router appends the address it saw; whatever came before, the sender wrote.
    before = len(wm.received)
    url = urlsplit(open_proxy)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    body = xmlrpc.client.dumps((SOURCE, TARGET), "pingback.ping").encode()
    headers = {"Content-Type": "text/xml", "X-Forwarded-For": "6.6.6.6, 10.1.2.3", "X-Forwarded-Proto": "https"}
    connection.request("POST", f"/?forward={quote(wm.url + '/ok', safe='')}", body, headers)
    assert connection.getresponse().status == 200
    connection.close()
    assert wm.received[before].headers["original-remote-addr"] == "10.1.2.3"
