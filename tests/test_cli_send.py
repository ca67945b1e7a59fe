"""`pingforward send`: exit status, the table, --json, --dry-run, --all-links, progress on a terminal."""

from __future__ import annotations

import io
import json
import socket

import httpx
import pytest
import respx

from pingforward.cli import _Progress, main
from pingforward.send import Result, Status

SRC = "https://me.example/post"
POST = """<html><body><nav><a href="https://nav.example/">nav</a></nav>
<div class="h-entry"><div class="e-content"><a href="https://wm.example/">wm</a>
<a href="https://none.example/">none</a></div></div></body></html>"""


@pytest.fixture
def site(respx_mock: respx.MockRouter) -> respx.MockRouter:
    respx_mock.get(SRC).mock(return_value=httpx.Response(200, html=POST))
    respx_mock.get("https://wm.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</webmention>; rel=webmention"}, html="<p>wm</p>")
    )
    respx_mock.get("https://none.example/").mock(return_value=httpx.Response(200, html="<p>none</p>"))
    return respx_mock


def test_table_and_exit_status(site: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = site.post("https://wm.example/webmention").mock(return_value=httpx.Response(202))
    assert main(["send", SRC], environ={}) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["STATUS", "VIA", "TARGET", "DETAIL"]
    assert out[1].split()[:3] == ["sent", "webmention", "https://wm.example/"]
    assert out[2].split()[:3] == ["skipped", "-", "https://none.example/"]
    assert out[3] == "1 sent, 1 skipped"
    assert endpoint.call_count == 1

    endpoint.mock(return_value=httpx.Response(503))
    assert main(["send", SRC], environ={}) == 1
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["error", "webmention", "https://wm.example/"]

    endpoint.mock(return_value=httpx.Response(400))
    assert main(["send", SRC], environ={}) == 1
    assert capsys.readouterr().out.splitlines()[1].split()[:1] == ["failed"]


def test_json_lines(site: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    site.post("https://wm.example/webmention").mock(
        return_value=httpx.Response(201, headers={"Location": "https://wm.example/status/1"})
    )
    assert main(["send", "--json", SRC], environ={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {
            "source": SRC,
            "published": None,
            "reason": "new",
            "target": "https://wm.example/",
            "status": "sent",
            "detail": "created, status at https://wm.example/status/1",
            "protocol": "webmention",
            "endpoint": "https://wm.example/webmention",
            "http_status": 201,
            "location": "https://wm.example/status/1",
            "retry_after": None,
            "fault_code": None,
            "fault_string": None,
            "failure": None,
        },
        {
            "source": SRC,
            "published": None,
            "reason": "new",
            "target": "https://none.example/",
            "status": "skipped",
            "detail": "the target advertises no Webmention or Pingback endpoint",
            "protocol": None,
            "endpoint": None,
            "http_status": None,
            "location": None,
            "retry_after": None,
            "fault_code": None,
            "fault_string": None,
            "failure": None,
        },
    ]


def test_dry_run_and_all_links(site: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    site.get("https://nav.example/").mock(return_value=httpx.Response(200, html="<p>nav</p>"))
    assert main(["send", "--dry-run", "--all-links", "--json", SRC], environ={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["target"], line["status"]) for line in lines] == [
        ("https://nav.example/", "skipped"),
        ("https://wm.example/", "discovered"),
        ("https://none.example/", "skipped"),
    ]
    assert all(call.request.method == "GET" for call in site.calls)


def test_unusable_source(respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    respx_mock.get(SRC).mock(return_value=httpx.Response(404))
    assert main(["send", "--json", SRC], environ={}) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "source": SRC,
        "target": None,
        "status": "failed",
        "detail": "the source answered 404",
        "failure": None,
    }
    assert "the source answered 404" in captured.err


def test_bad_setting_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", SRC], environ={"PINGFORWARD_TIMEOUT": "soon"}) == 2
    assert "PINGFORWARD_TIMEOUT" in capsys.readouterr().err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal() -> None:
    result = Result("https://a.example/", Status.SENT, "accepted")
    terminal, pipe = FakeTerminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = _Progress(stream)
        progress.total = 2
        progress.step(result)
        progress.clear()
    assert terminal.getvalue() == "\r\x1b[K[1/2] sent https://a.example/\r\x1b[K"
    assert pipe.getvalue() == ""


def test_a_post_without_links(respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    respx_mock.get(SRC).mock(return_value=httpx.Response(200, html=f'<article><a href="{SRC}#top">top</a></article>'))
    assert main(["send", SRC], environ={}) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "the post links to no other page"


def test_what_pages_say_cannot_drive_the_terminal(
    respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.get(SRC).mock(
        return_value=httpx.Response(200, html='<article><a href="https://wm.example/">x</a></article>')
    )
    respx_mock.get("https://wm.example/").mock(
        return_value=httpx.Response(200, headers={"Link": "</webmention>; rel=webmention"})
    )
    respx_mock.post("https://wm.example/webmention").mock(
        return_value=httpx.Response(400, json={"error": "bad\x1b]0;pwned\x07 request"})
    )
    assert main(["send", SRC], environ={}) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "bad\\x1b]0;pwned\\x07 request" in out


@pytest.mark.parametrize(
    "argv", [["send", "me.example/post"], ["send", "--feed", "me.example/feed"], ["send", "//me.example/post"]]
)
def test_a_url_without_a_scheme_is_a_bad_argument(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv, environ={})
    assert stopped.value.code == 2
    assert "is not an absolute http(s) URL (say https://me.example/" in capsys.readouterr().err


def test_a_page_without_a_feed_is_named_once(respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    respx_mock.get(SRC).mock(return_value=httpx.Response(200, html="<p>no feed here</p>"))
    assert main(["send", "--feed", SRC], environ={}) == 1
    err = capsys.readouterr().err
    assert err.count(SRC) == 1, err
    assert "names no feed" in err


def test_network_failures_say_their_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real network layer: nothing listens on the port."""
    environ = {"PINGFORWARD_ALLOW_PRIVATE_NETWORKS": "true", "PINGFORWARD_ALLOWED_PORTS": "*"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert main(["send", "--json", f"http://127.0.0.1:{port}/post"], environ=environ) == 1
    refused = json.loads(capsys.readouterr().out)
    assert (refused["status"], refused["failure"]) == ("error", "refused")
    assert refused["detail"] == f"connection to 127.0.0.1 port {port} refused"
