"""PINGFORWARD_ALLOWED_HOSTS limits where pings are forwarded, not what the sender or `check` may reach."""

from __future__ import annotations

import json
import xmlrpc.client
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from pingforward.app import create_app
from pingforward.cli import main
from pingforward.config import Settings
from tests.servers import LOCAL_ENV, Site, serve_app, serve_site

TOKEN = "allowed-hosts-token-0123456789"
PRIVATE = {**LOCAL_ENV, "PINGFORWARD_ALLOWED_HOSTS": "webmention.example", "PINGFORWARD_SEND_TOKEN": TOKEN}


@pytest.fixture
def site() -> Iterator[Site]:
    """A post on 127.0.0.1 linking to a page whose Webmention endpoint is on 127.0.0.1 too."""
    with serve_site() as web:
        html = [("Content-Type", "text/html")]
        web.routes[("GET", "/post")] = (200, html, b'<article><a href="/target">a link</a></article>')
        web.routes[("GET", "/target")] = (200, [*html, ("Link", "</wm>; rel=webmention")], b"<p>target</p>")
        web.routes[("POST", "/wm")] = (202, [], b"")
        yield web


def test_cli_sender_ignores_the_forward_allowlist(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--json", site.url("/post")], environ=PRIVATE) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["status"] == "sent"
    assert len(site.received("POST", "/wm")) == 1


def test_post_send_ignores_it_and_forwards_still_obey_it(site: Site) -> None:
    with serve_app(create_app(Settings.from_environ(PRIVATE))) as proxy:
        answer = httpx.post(
            f"{proxy}/send",
            data={"source": site.url("/post")},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        assert [result["status"] for result in answer.json()["results"]] == ["sent"]
        # The same instance still forwards pings only to the hosts it names.
        with xmlrpc.client.ServerProxy(f"{proxy}/?forward={quote(site.url('/wm'), safe='')}") as server:
            with pytest.raises(xmlrpc.client.Fault) as refused:
                server.pingback.ping("https://blog.example/post", site.url("/target"))
    assert refused.value.faultCode == 49
    assert "PINGFORWARD_ALLOWED_HOSTS" in refused.value.faultString
    assert len(site.received("POST", "/wm")) == 1  # the sender's Webmention, and no forwarded ping


def test_check_ignores_it(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    main(["check", site.url("/target")], environ=PRIVATE)
    assert capsys.readouterr().out.startswith(f"ok    fetched {site.url('/target')} (HTTP 200)")
