"""`pingforward send --state FILE` end to end on 127.0.0.1: a real blog with an Atom feed, real Webmention and
Pingback receivers, and the CLI run after run as CI would run it, the file carried between runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pingforward.cli import main
from tests import servers
from tests.servers import Answer, Site


def html(body: str, *headers: tuple[str, str], status: int = 200) -> Answer:
    return status, [("Content-Type", "text/html; charset=utf-8"), *headers], body.encode()


def page(*hrefs: str) -> Answer:
    links = " ".join(f'<a href="{href}">link</a>' for href in hrefs)
    return html(f'<html><body><article class="h-entry"><div class="e-content">{links}</div></article></body></html>')


class Blog:
    """A blog on 127.0.0.1 whose posts, links and feed each test edits between runs."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.listed: list[str] = []
        self.days: dict[str, int] = {}
        # Targets: /t/wm-N advertise the Webmention endpoint /wm, /t/pb the pingback server /xmlrpc.
        for name in ("a", "b", "c", "d"):
            site.routes[("GET", f"/t/wm-{name}")] = html("<p>wm</p>", ("Link", "</wm>; rel=webmention"))
        site.routes[("POST", "/wm")] = (202, [], b"")
        site.routes[("GET", "/t/pb")] = html("<p>pb</p>", ("X-Pingback", site.url("/xmlrpc")))
        ok = xmlrpc.client.dumps(("Pingback registered.",), methodresponse=True).encode()
        site.routes[("POST", "/xmlrpc")] = (200, [("Content-Type", "text/xml")], ok)

    def post(self, name: str, *targets: str, day: int = 1) -> None:
        self.site.routes[("GET", f"/posts/{name}")] = page(*(self.site.url(target) for target in targets))
        if name not in self.listed:
            self.listed.append(name)
        self.days[name] = day
        self.publish()

    def unlist(self, name: str) -> None:
        self.listed.remove(name)
        self.publish()

    def publish(self) -> None:
        entries = "".join(
            f'<entry><id>urn:{name}</id><title>{name}</title><link href="/posts/{name}"/>'
            f"<updated>2026-01-{self.days[name]:02d}T10:00:00Z</updated></entry>"
            for name in self.listed
        )
        atom = f'<feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title>{entries}</feed>'
        self.site.routes[("GET", "/atom.xml")] = (200, [("Content-Type", "application/atom+xml")], atom.encode())

    def mentions(self) -> list[tuple[str, str]]:
        """(source, target) of every Webmention received, as paths, in order."""
        prefix = self.site.url("")
        return [
            (m.form["source"][0].removeprefix(prefix), m.form["target"][0].removeprefix(prefix))
            for m in self.site.received("POST", "/wm")
        ]

    def pings(self) -> list[tuple[str, ...]]:
        prefix = self.site.url("")
        return [
            tuple(str(arg).removeprefix(prefix) for arg in xmlrpc.client.loads(p.body)[0])
            for p in self.site.received("POST", "/xmlrpc")
        ]

    def posted(self) -> list[str]:
        return [item.path for item in self.site.log if item.method == "POST"]


@pytest.fixture
def blog() -> Iterator[Blog]:
    with servers.serve_site() as site:
        yield Blog(site)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "pingforward-state.json"


def run(capsys: pytest.CaptureFixture[str], blog: Blog, state: Path, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    argv = argv or ("--feed", blog.site.url("/atom.xml"))
    code = main(["send", "--json", "--state", str(state), *argv], environ=servers.LOCAL_ENV)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_first_run_unchanged_edit_and_deletion(blog: Blog, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state.parent.mkdir()
    blog.post("one", "/t/wm-a", "/t/wm-b", "/t/pb", day=1)
    blog.post("two", "/t/wm-c", day=2)

    # First run: no file yet, every link of every post.
    code, lines = run(capsys, blog, state)
    assert code == 0
    assert sorted(blog.mentions()) == [
        ("/posts/one", "/t/wm-a"),
        ("/posts/one", "/t/wm-b"),
        ("/posts/two", "/t/wm-c"),
    ]
    assert blog.pings() == [("/posts/one", "/t/pb")]
    saved = json.loads(state.read_text())
    assert (saved["format"], saved["version"]) == ("pingforward-send-state", 1)
    assert state.stat().st_mode & 0o777 == 0o644
    state.chmod(0o600)  # a mode the owner chose is kept across runs
    assert saved["posts"][blog.site.url("/posts/one")]["targets"][blog.site.url("/t/wm-a")]["status"] == "sent"
    assert lines[-1]["summary"]["sent"] == 4

    # Unchanged: no request reaches any endpoint, and the summary says so.
    before = len(blog.site.log)
    code, lines = run(capsys, blog, state)
    assert code == 0
    assert state.stat().st_mode & 0o777 == 0o600
    assert [item.path for item in blog.site.log[before:] if item.method == "POST"] == []
    assert {item.path for item in blog.site.log[before:]} == {"/atom.xml", "/posts/one", "/posts/two"}
    assert lines == [{"summary": lines[-1]["summary"]}] and lines[0]["summary"]["targets"] == 0
    assert main(["send", "--state", str(state), "--feed", blog.site.url("/atom.xml")], environ=servers.LOCAL_ENV) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 of 2 entries, 0 targets: nothing new to send"

    # An edit adds /t/wm-d and removes /t/wm-b: old and new Webmention targets are told, the
    # removed one included (Webmention §3.1.4); the pingback target is not pinged again.
    blog.post("one", "/t/wm-a", "/t/pb", "/t/wm-d", day=1)
    del blog.site.log[:]
    code, lines = run(capsys, blog, state)
    assert code == 0
    assert sorted(blog.mentions()) == [
        ("/posts/one", "/t/wm-a"),
        ("/posts/one", "/t/wm-b"),
        ("/posts/one", "/t/wm-d"),
    ]
    assert blog.pings() == []
    assert {line["reason"] for line in lines[:-1]} == {"edited"}
    targets = json.loads(state.read_text())["posts"][blog.site.url("/posts/one")]["targets"]
    assert sorted(targets) == [blog.site.url(path) for path in ("/t/pb", "/t/wm-a", "/t/wm-d")]

    # A post that left the feed and answers 404 is not deleted; one that answers 410 is, once.
    blog.unlist("two")
    blog.site.routes[("GET", "/posts/two")] = html("<p>not here</p>", status=404)
    del blog.site.log[:]
    assert run(capsys, blog, state)[0] == 0
    assert blog.posted() == []
    assert blog.site.url("/posts/two") in json.loads(state.read_text())["posts"]

    blog.site.routes[("GET", "/posts/two")] = html("<p>gone</p>", status=410)
    code, lines = run(capsys, blog, state)
    assert code == 0
    assert blog.mentions() == [("/posts/two", "/t/wm-c")]
    assert lines[-1]["summary"]["deleted"] == 1
    assert blog.site.url("/posts/two") not in json.loads(state.read_text())["posts"]
    del blog.site.log[:]
    assert run(capsys, blog, state)[0] == 0
    assert blog.posted() == []  # told once, then forgotten


def test_one_page_with_a_state(blog: Blog, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state.parent.mkdir()
    blog.post("solo", "/t/wm-a")
    url = blog.site.url("/posts/solo")
    assert run(capsys, blog, state, url)[0] == 0
    assert run(capsys, blog, state, url) == (0, [])
    assert main(["send", "--state", str(state), url], environ=servers.LOCAL_ENV) == 0
    assert capsys.readouterr().out.splitlines() == ["nothing new: the post has not changed since the last run"]
    assert blog.mentions() == [("/posts/solo", "/t/wm-a")]
    # A page that answers 410 is a deletion: told once more, then forgotten.
    blog.site.routes[("GET", "/posts/solo")] = html("<p>gone</p>", status=410)
    code, lines = run(capsys, blog, state, url)
    assert (code, [(line["target"], line["reason"]) for line in lines]) == (
        0,
        [(blog.site.url("/t/wm-a"), "deleted")],
    )
    assert blog.mentions() == [("/posts/solo", "/t/wm-a")] * 2
    assert json.loads(state.read_text())["posts"] == {}


def test_retry_later_is_retried_on_the_next_run_after_its_retry_after(
    blog: Blog, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state.parent.mkdir()
    blog.post("one", "/t/wm-a", "/t/wm-b")
    busy: Answer = (503, [("Retry-After", "3600")], b"")
    blog.site.routes[("POST", "/wm")] = busy
    code, lines = run(capsys, blog, state)
    assert code == 1
    assert [(line["status"], line["retry_after"]) for line in lines[:-1]] == [("error", 3600)] * 2
    assert lines[-1]["summary"]["retry_later"] == 2
    assert main(["send", "--state", str(state), "--feed", blog.site.url("/atom.xml")], environ=servers.LOCAL_ENV) == 0
    # Still within the Retry-After: nothing sent, both counted as waiting.
    assert capsys.readouterr().out.splitlines()[-1] == "1 of 1 entries, 0 targets: 2 to retry later"
    assert len(blog.site.received("POST", "/wm")) == 2

    # The Retry-After has passed (the file says when): both are sent, and only they.
    saved = json.loads(state.read_text())
    for record in saved["posts"][blog.site.url("/posts/one")]["targets"].values():
        record["retry_at"] = "2026-01-01T00:00:00Z"
    state.write_text(json.dumps(saved))
    blog.site.routes[("POST", "/wm")] = (202, [], b"")
    code, lines = run(capsys, blog, state)
    assert code == 0
    assert [line["status"] for line in lines[:-1]] == ["sent", "sent"]
    assert len(blog.site.received("POST", "/wm")) == 4
    assert run(capsys, blog, state)[0] == 0
    assert len(blog.site.received("POST", "/wm")) == 4


def test_refused_targets_wait_for_an_edit(blog: Blog, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state.parent.mkdir()
    blog.post("one", "/t/wm-a")
    blog.site.routes[("POST", "/wm")] = (400, [("Content-Type", "application/json")], b'{"error": "no_link_found"}')
    assert run(capsys, blog, state)[0] == 1
    code, lines = run(capsys, blog, state)
    assert (code, lines[-1]["summary"]["targets"]) == (0, 0)
    assert len(blog.site.received("POST", "/wm")) == 1
    blog.post("one", "/t/wm-a", "/t/wm-b")  # the post changes: the refused target is tried again
    assert run(capsys, blog, state)[0] == 1
    assert sorted(blog.mentions()) == [("/posts/one", "/t/wm-a"), ("/posts/one", "/t/wm-a"), ("/posts/one", "/t/wm-b")]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"format": "pingforward-send-state", "version": 1, "posts": {"https://x', id="cut-short"),
        pytest.param("\x00\x01binary", id="not-json"),
        pytest.param('{"format": "pingforward-send-state", "version": 9, "posts": {}}', id="newer"),
    ],
)
def test_a_corrupt_state_file_stops_the_run(
    blog: Blog, state: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    state.parent.mkdir()
    state.write_text(content)
    blog.post("one", "/t/wm-a")
    assert main(["send", "--state", str(state), "--feed", blog.site.url("/atom.xml")], environ=servers.LOCAL_ENV) == 2
    err = capsys.readouterr().err
    assert f"cannot use the state file {state}" in err and "Nothing was sent" in err
    assert blog.site.log == []  # not a single request
    assert state.read_text() == content  # never reset


def test_a_run_killed_mid_way_resumes(blog: Blog, state: Path) -> None:
    """The CLI in a subprocess is killed while it waits on the second post's endpoint; the next run sends
    what the first did not record, and the file is whole."""
    state.parent.mkdir()
    release = threading.Event()

    def hanging() -> Answer:
        release.wait(20)  # bounded; the test kills the sender long before
        return 202, [], b""

    blog.site.routes[("GET", "/t/slow")] = html("<p>slow</p>", ("Link", "</slow-wm>; rel=webmention"))
    blog.site.routes[("POST", "/slow-wm")] = hanging
    blog.post("first", "/t/wm-a", day=2)  # newest: sent first
    blog.post("second", "/t/slow", "/t/wm-b", day=1)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PINGFORWARD_")}
    command = [sys.executable, "-m", "pingforward", "send", "--state", str(state), "--feed", blog.site.url("/atom.xml")]
    proc = subprocess.Popen(command, env={**environ, **servers.LOCAL_ENV}, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):  # bounded: 20 s
            if blog.site.received("POST", "/slow-wm"):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the sender never reached the second post")
        proc.kill()
        proc.wait(timeout=10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    saved = json.loads(state.read_text())  # whole: the first post, recorded before the second began
    assert list(saved["posts"]) == [blog.site.url("/posts/first")]
    assert [p.name for p in state.parent.iterdir()] == [state.name]  # no temporary file left behind

    blog.site.routes[("POST", "/slow-wm")] = (202, [], b"")
    before = blog.mentions()
    result = subprocess.run(command, env={**environ, **servers.LOCAL_ENV}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The first post is not sent again; the second is sent whole (its results were not recorded).
    assert blog.mentions()[len(before) :] == [("/posts/second", "/t/wm-b")]
    assert len(blog.site.received("POST", "/slow-wm")) == 2
    assert sorted(json.loads(state.read_text())["posts"]) == [
        blog.site.url("/posts/first"),
        blog.site.url("/posts/second"),
    ]


def test_a_state_file_in_no_directory_stops_the_run_before_any_request(
    blog: Blog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blog.post("one", "/t/wm-a")
    state = tmp_path / "missing" / "state.json"
    assert main(["send", "--state", str(state), "--feed", blog.site.url("/atom.xml")], environ=servers.LOCAL_ENV) == 2
    assert f"there is no directory {state.parent}" in capsys.readouterr().err
    assert blog.site.log == []
