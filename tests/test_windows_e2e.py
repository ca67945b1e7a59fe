"""End to end: repeats, floods and shared windows through the proxy under the Procfile's command.

Real source pages that link their targets, real receivers and a real redis-server, all on 127.0.0.1;
the pings go out through Python's xmlrpc.client. The proxy runs on its defaults but for the address
policy that lets it reach 127.0.0.1 (`LOCAL_ENV`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from pingforward.pingback import FaultCode
from tests.servers import (
    LOCAL_ENV,
    Process,
    Receiver,
    Site,
    free_port,
    ping,
    procfile_command,
    receiver,
    redis_available,
    redis_server,
    running,
    serve_site,
)

TARGETS = 400


@contextmanager
def proxy_process(env: Mapping[str, str]) -> Iterator[Process]:
    """The proxy under the Procfile's command, with its log."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, running(procfile_command(port), port, env, Path(tmp) / "log") as p:
        yield p


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """A blog whose post links 400 pages of the site it pings, and those pages."""
    with serve_site() as web:
        links = "".join(f'<li><a href="{web.url(f"/notes/{n}")}">note {n}</a></li>' for n in range(TARGETS))
        post = f"<!doctype html><html><head><title>A post</title></head><body><article><ul>{links}</ul></article>"
        web.routes[("GET", "/post")] = (200, [("Content-Type", "text/html; charset=utf-8")], post.encode())
        for n in range(TARGETS):
            note = f"<!doctype html><title>Note {n}</title><p>The text of note number {n}, written here.</p>"
            web.routes[("GET", f"/notes/{n}")] = (200, [("Content-Type", "text/html")], note.encode())
        yield web


@pytest.fixture
def wm() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


def test_the_same_ping_five_times_is_one_webmention(site: Site, wm: Receiver) -> None:
    with proxy_process(LOCAL_ENV) as proxy:
        answers = [ping(proxy.base, wm.url + "/ok", site.url("/post"), site.url("/notes/1")) for _ in range(5)]
        for _ in range(50):  # the last ping's line is written after its answer: bounded, about 5 s
            if (log := proxy.output()).count("PINGFORWARD_REPEAT_WINDOW") >= 4:
                break
            time.sleep(0.1)
    assert answers[0] == "Webmention accepted"
    assert all(isinstance(a, tuple) and a[0] == FaultCode.ALREADY_REGISTERED for a in answers[1:]), answers
    assert len(wm.received) == 1
    assert log.count("PINGFORWARD_REPEAT_WINDOW") == 4  # each repeat's log line names the setting


def test_a_ping_that_was_not_delivered_is_forwarded_again(site: Site, wm: Receiver) -> None:
    with proxy_process(LOCAL_ENV) as proxy:
        answers = [ping(proxy.base, wm.url + "/status/503", site.url("/post"), site.url("/notes/2")) for _ in range(3)]
    assert [a[0] if isinstance(a, tuple) else a for a in answers] == [FaultCode.UPSTREAM_ERROR] * 3
    assert len(wm.received) == 3


def test_a_post_linking_40_pages_of_one_site_is_all_forwarded(site: Site, wm: Receiver) -> None:
    with proxy_process(LOCAL_ENV) as proxy, ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda n: ping(proxy.base, wm.url + "/ok", site.url("/post"), site.url(f"/notes/{n}")), range(40))
        )
    assert answers == ["Webmention accepted"] * 40
    assert len(wm.received) == 40


def test_a_flood_from_one_client_is_cut_at_its_share(site: Site, wm: Receiver) -> None:
    with proxy_process(LOCAL_ENV) as proxy, ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(
                lambda n: ping(proxy.base, wm.url + "/ok", site.url("/post"), site.url(f"/notes/{n}")), range(TARGETS)
            )
        )
        log = proxy.output()
    delivered = [a for a in answers if a == "Webmention accepted"]
    refused = [a for a in answers if isinstance(a, tuple) and a[0] == FaultCode.TOO_MANY]
    # Nothing answered with success but what a receiver took; the rest told to retry later.
    assert len(delivered) == len(wm.received) == 60  # the default share: 60 a minute
    assert len(refused) == TARGETS - 60
    assert all("PINGFORWARD_FLOOD_CLIENT" in a[1] and "retry in" in a[1] for a in refused)
    assert log.count("too many pings from 127.0.0.1") == TARGETS - 60


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    reason = redis_available()
    if reason:
        pytest.skip(reason)
    with redis_server() as server:
        yield server.url


@pytest.mark.slow
def test_two_proxies_sharing_redis_forward_a_repeat_once(site: Site, wm: Receiver, redis_url: str) -> None:
    env = {**LOCAL_ENV, "PINGFORWARD_STATE_URL": redis_url}
    with proxy_process(env) as one, proxy_process(env) as two:
        first = ping(one.base, wm.url + "/ok", site.url("/post"), site.url("/notes/3"))
        again = [ping(p.base, wm.url + "/ok", site.url("/post"), site.url("/notes/3")) for p in (two, one, two)]
        # Their flood windows are shared too: the share is the pair's, not each one's.
        with ThreadPoolExecutor(16) as pool:
            spread = list(
                pool.map(
                    lambda n: ping((one, two)[n % 2].base, wm.url + "/ok", site.url("/post"), site.url(f"/notes/{n}")),
                    range(100, 200),
                )
            )
    assert first == "Webmention accepted"
    assert all(isinstance(a, tuple) and a[0] == FaultCode.ALREADY_REGISTERED for a in again), again
    # The first ping and its three repeats counted in the same minute.
    assert spread.count("Webmention accepted") == 60 - 4
    assert len(wm.received) == 1 + 56


def test_a_proxy_whose_redis_is_down_counts_in_its_own_memory(site: Site, wm: Receiver) -> None:
    env = {**LOCAL_ENV, "PINGFORWARD_STATE_URL": f"redis://:secret@127.0.0.1:{free_port()}/0"}  # nothing listens
    with proxy_process(env) as proxy:
        answers = [ping(proxy.base, wm.url + "/ok", site.url("/post"), site.url(f"/notes/{n % 3}")) for n in range(6)]
        log = proxy.output()
    assert answers[:3] == ["Webmention accepted"] * 3
    assert all(isinstance(a, tuple) and a[0] == FaultCode.ALREADY_REGISTERED for a in answers[3:]), answers
    assert len(wm.received) == 3
    assert log.count("unreachable") == 1 and "secret" not in log
