"""The spam checks end to end: the proxy under uvicorn (the Procfile's command) on its defaults, real
sources, scraper copies, target pages and a receiver on 127.0.0.x, and Python's xmlrpc.client.

Three sites, on three addresses: the site owner's (127.0.0.1: the target posts and the receiver), a blog
that pings it (127.0.0.2) and a copy-blog (127.0.0.3). Nothing on the verification path is mocked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.pingback import FaultCode
from tests import pages
from tests.servers import (
    LOCAL_ENV,
    Process,
    Receiver,
    Site,
    free_port,
    ping,
    procfile_command,
    receiver,
    running,
    serve_app,
    serve_site,
)

HTML = [("Content-Type", "text/html; charset=UTF-8")]
POST = "/2024/03/weather-station/"
BURST = 40


@pytest.fixture(scope="module")
def owner() -> Iterator[Site]:
    """The site owner's site: the post that gets pinged, and the 40 pages of one burst."""
    with serve_site("127.0.0.1") as site:
        site.routes[("GET", POST)] = (200, HTML, pages.wordpress_post())
        for n in range(BURST):
            site.routes[("GET", f"/notes/{n}/")] = (200, HTML, pages.wordpress_post(f"Note {n}", comments=0))
        yield site


@pytest.fixture(scope="module")
def blog(owner: Site) -> Iterator[Site]:
    """A blog that links to the owner's post, in pages of many shapes."""
    target = owner.url(POST)
    with serve_site("127.0.0.2") as site:
        site.routes[("GET", "/reply/")] = (200, HTML, pages.block_theme_reply(target))
        site.routes[("GET", "/quote/")] = (200, HTML, pages.block_theme_reply(target))
        site.routes[("GET", "/no-link/")] = (200, HTML, pages.block_theme_reply(target, link=False))
        # Latin-1, declared only by the page's <meta>.
        site.routes[("GET", "/latin1/")] = (200, [("Content-Type", "text/html")], pages.latin1_reply(target))
        site.routes[("GET", "/long/")] = (200, HTML, pages.long_page(target))
        site.routes[("GET", "/?p=7")] = (301, [("Location", "/2024/03/squirrels/")], b"")  # a shortlink
        site.routes[("GET", "/2024/03/squirrels/")] = (200, HTML, pages.block_theme_reply(target))
        site.routes[("GET", "/notes.txt")] = (200, [("Content-Type", "text/plain")], f"See {target}".encode())
        site.routes[("GET", "/gone/")] = (410, HTML, b"<p>Gone</p>")
        site.routes[("GET", "/broken/")] = (500, HTML, b"<p>Database error</p>")
        links = "".join(f'<li><a href="{owner.url(f"/notes/{n}/")}">note {n}</a></li>' for n in range(BURST))
        site.routes[("GET", "/forty/")] = (200, HTML, f"<article><ul>{links}</ul></article>".encode())
        yield site


@pytest.fixture(scope="module")
def scraper(owner: Site) -> Iterator[Site]:
    with serve_site("127.0.0.3") as site:
        site.routes[("GET", "/copied/")] = (200, HTML, pages.scraper_copy(owner.url(POST)))
        yield site


@pytest.fixture(scope="module")
def wm() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The proxy on its defaults, but for reaching 127.0.0.x at random ports (LOCAL_ENV)."""
    port = free_port()
    log = tmp_path_factory.mktemp("spam") / "proxy.log"
    with running(procfile_command(port), port, LOCAL_ENV, log) as process:
        yield process


def log_line(process: Process, source: str) -> str:
    """The proxy's log line for the ping from `source` (lines are written at the end of a loop turn)."""
    for _ in range(50):  # bounded: 5 s
        lines = process.output().splitlines()
        # A value with "=" in it is JSON-quoted in the line.
        found = [line for line in lines if f"source={source} " in line or f"source={json.dumps(source)} " in line]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no log line for {source}: {process.output()}")


def forwarded(wm: Receiver, source: str) -> int:
    """How many Webmentions from `source` the receiver got."""
    return sum(1 for got in wm.received if parse_qs(got.body.decode()).get("source") == [source])


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/reply/", id="wordpress-block-theme"),
        pytest.param("/latin1/", id="latin1"),
        pytest.param("/long/", id="long-page-link-deep"),
        pytest.param("/?p=7", id="redirecting-shortlink"),
        pytest.param("/notes.txt", id="plain-text"),
    ],
)
def test_honest_pings_are_forwarded(proxy: Process, owner: Site, blog: Site, wm: Receiver, path: str) -> None:
    source = blog.url(path)
    assert ping(proxy.base, wm.url + "/ok", source, owner.url(POST)) == "Webmention accepted"
    assert forwarded(wm, source) == 1
    assert "outcome=ok" in log_line(proxy, source)


REFUSALS = [
    pytest.param("/no-link/", FaultCode.NO_LINK, "no_link", "does not contain a link", id="no-link"),
    pytest.param("/missing/", FaultCode.SOURCE_NOT_FOUND, "source_gone", "HTTP 404", id="404"),
    pytest.param("/gone/", FaultCode.SOURCE_NOT_FOUND, "source_gone", "HTTP 410", id="410"),
    pytest.param("/broken/", FaultCode.UPSTREAM_ERROR, "source_unreachable", "HTTP 500", id="500"),
    pytest.param("refused-port", FaultCode.UPSTREAM_ERROR, "source_unreachable", "try again later", id="refused"),
    pytest.param("copy", FaultCode.ACCESS_DENIED, "copy", "copies the target", id="scraper-copy"),
    pytest.param("self", FaultCode.GENERIC, "self_ping", "same resource", id="self-ping"),
]


@pytest.mark.parametrize(("path", "code", "refusal", "words"), REFUSALS)
def test_refusals(
    proxy: Process,
    owner: Site,
    blog: Site,
    scraper: Site,
    wm: Receiver,
    path: str,
    code: FaultCode,
    refusal: str,
    words: str,
) -> None:
    target = owner.url(POST)
    source = {
        "refused-port": f"http://127.0.0.2:{free_port()}/post/",
        "copy": scraper.url("/copied/"),
        "self": target,
    }.get(path) or blog.url(path)
    answer = ping(proxy.base, wm.url + "/ok", source, target)
    assert isinstance(answer, tuple) and answer[0] == code and words in answer[1], answer
    assert "PINGFORWARD_" in answer[1]  # the setting that tunes or turns off the check
    assert forwarded(wm, source) == 0
    line = log_line(proxy, source)
    assert f"outcome={int(code)} " in line and f" refusal={refusal} " in line


def test_a_source_that_is_no_http_url_is_still_fault_16(proxy: Process, owner: Site, wm: Receiver) -> None:
    answer = ping(proxy.base, wm.url + "/ok", "ftp://blog.example/post", owner.url(POST))
    assert answer == (FaultCode.SOURCE_NOT_FOUND, "The source URI is not an absolute http(s) URL.")


def test_a_quoted_paragraph_is_no_copy(proxy: Process, owner: Site, blog: Site, wm: Receiver) -> None:
    # /quote/ quotes one of the post's six paragraphs in a <blockquote>; the copy-blog carries all six.
    assert ping(proxy.base, wm.url + "/ok", blog.url("/quote/"), owner.url(POST)) == "Webmention accepted"


def test_forty_links_of_one_post_are_forty_pings_and_one_fetch(
    owner: Site, blog: Site, wm: Receiver, tmp_path: Path
) -> None:
    # A proxy of its own, whose windows and page cache have seen nothing else.
    source = blog.url("/forty/")
    port = free_port()
    with (
        running(procfile_command(port), port, LOCAL_ENV, tmp_path / "proxy.log") as proxy,
        ThreadPoolExecutor(BURST) as pool,
    ):
        answers = list(
            pool.map(lambda n: ping(proxy.base, wm.url + "/ok", source, owner.url(f"/notes/{n}/")), range(BURST))
        )
    assert answers == ["Webmention accepted"] * BURST
    assert forwarded(wm, source) == BURST
    assert len(blog.received("GET", "/forty/")) == 1  # counted at the source's own server


def test_refusals_are_counted_by_reason_in_the_summary(owner: Site, blog: Site, wm: Receiver, tmp_path: Path) -> None:
    port = free_port()
    with running(procfile_command(port), port, LOCAL_ENV, tmp_path / "proxy.log") as process:
        for path in ("/no-link/", "/no-link/", "/gone/"):
            ping(process.base, wm.url + "/ok", blog.url(path), owner.url(POST))
    # The summary is written once a minute, and when the worker stops.
    (summary,) = [line for line in process.output().splitlines() if ": refused " in line]
    assert summary.endswith("refused count=3 no_link=2 source_gone=1 (spam checks; not forwarded)")


@pytest.mark.parametrize(
    ("environ", "path"),
    [
        pytest.param({"PINGFORWARD_SPAM_CHECKS": "off"}, "/no-link/", id="master-switch"),
        pytest.param({"PINGFORWARD_VERIFY_SOURCE": "off"}, "/no-link/", id="verify-source-off"),
        pytest.param({"PINGFORWARD_SPAM_CHECKS": "off"}, "copy", id="master-switch-copy"),
        pytest.param({"PINGFORWARD_COPY_SHARE": "off"}, "copy", id="copy-share-off"),
        pytest.param({"PINGFORWARD_COPY_SHARE": "1"}, "/reply/", id="copy-share-tuned"),
    ],
)
def test_each_check_can_be_turned_off(
    owner: Site, blog: Site, scraper: Site, wm: Receiver, environ: dict[str, str], path: str
) -> None:
    source = scraper.url("/copied/") if path == "copy" else blog.url(path)
    settings = Settings.from_environ({**LOCAL_ENV, **environ})
    with serve_app(create_app(settings)) as base:
        assert ping(base, wm.url + "/ok", source, owner.url(POST)) == "Webmention accepted"


def test_a_hanging_source_is_fault_50_within_the_checks_bound(owner: Site, wm: Receiver) -> None:
    stop = False

    def hang() -> tuple[int, list[tuple[str, str]], bytes]:
        for _ in range(100):  # bounded: 5 s, far past the bound
            if stop:
                break
            time.sleep(0.05)
        return 200, HTML, b""

    settings = Settings.from_environ({**LOCAL_ENV, "PINGFORWARD_VERIFY_TIMEOUT": "0.3"})
    with serve_site("127.0.0.2") as slow, serve_app(create_app(settings)) as base:
        slow.routes[("GET", "/hang/")] = hang
        try:
            answer = ping(base, wm.url + "/ok", slow.url("/hang/"), owner.url(POST))
        finally:
            stop = True
    assert isinstance(answer, tuple) and answer[0] == FaultCode.UPSTREAM_ERROR and "0.3 s" in answer[1], answer
    assert forwarded(wm, slow.url("/hang/")) == 0
