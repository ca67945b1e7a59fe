"""The proxy on its defaults (the Procfile's command, no setting changed unless a test is about it) against
receivers on public-looking addresses and names served by a DNS server the test runs (issue 11).

Runs only inside the private network namespace that tests/test_netns.py makes; see conftest.py here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pingforward.net.resolver import LOOKUP_TIMEOUT
from tests.dns import Name, Zone
from tests.netns.conftest import BUSY, HANGING, RECEIVER, RawServer, answer, raw_server, read_request
from tests.servers import Receiver, ping, proxy, receiver

ACCEPTED = "Webmention accepted"  # what tests/servers.py's receiver answers on /ok
# These tests are about the network path of forwards alone, and send the same ping again and again, or
# hundreds at once from one client, from made-up sources: the junk checks (repeats, floods, the source's
# verification) are off, as for an operator who forwards only for trusted senders. tests/test_windows_e2e.py
# and tests/test_spam.py test them on their defaults.
FORWARDING_ONLY = {"PINGFORWARD_SPAM_CHECKS": "off"}


@pytest.fixture(scope="module")
def wm(zone: Zone) -> Iterator[Receiver]:
    with receiver(RECEIVER, 80) as server:
        yield server


@pytest.fixture(scope="module")
def base(zone: Zone) -> Iterator[str]:
    """The proxy with every setting at its default, but for the junk checks."""
    with proxy(FORWARDING_ONLY) as url:
        yield url


def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    for _ in range(int(seconds * 20)):  # bounded
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {seconds} s")


def fault(result: str | tuple[int, str]) -> tuple[int, str]:
    assert isinstance(result, tuple), f"delivered, not a fault: {result}"
    return result


def held_then_ok(conn: socket.socket, server: RawServer) -> None:
    while request := read_request(conn):
        del request
        server.hold()
        conn.sendall(answer("202 Accepted"))


def test_names_from_dns_and_from_etc_hosts_are_forwarded(base: str, wm: Receiver, zone: Zone) -> None:
    zone.names["receiver.test"] = Name([[RECEIVER]])
    assert ping(base, "http://receiver.test/ok") == ACCEPTED
    assert wm.received[-1].headers["host"] == "receiver.test"
    assert ping(base, "http://hosts-file.test/ok") == ACCEPTED
    assert wm.received[-1].headers["host"] == "hosts-file.test"
    assert zone.lookups("hosts-file.test") == 0  # /etc/hosts answered it


def test_silent_names_cost_only_their_own_pings(base: str, wm: Receiver, zone: Zone) -> None:
    # An attacker's names whose DNS server never answers, then honest pings to hosts not yet looked up:
    # with lookups in a small thread pool, the silent ones held every thread and the honest ones failed.
    silent = [f"silent-{n}.test" for n in range(12)]
    honest = [f"honest-{n}.test" for n in range(20)]
    zone.names.update({name: Name(silent=True) for name in silent})
    zone.names.update({name: Name([[RECEIVER]]) for name in honest})
    with ThreadPoolExecutor(len(silent) + len(honest)) as pool:
        attacks = [pool.submit(ping, base, f"http://{name}/ok") for name in silent]
        until(lambda: all(zone.lookups(name) for name in silent))
        assert list(pool.map(lambda name: ping(base, f"http://{name}/ok"), honest)) == [ACCEPTED] * len(honest)
        for attack in attacks:
            code, text = fault(attack.result())
            assert code == 50 and "silent-" in text and "DNS" in text


def test_a_slow_name_is_waited_for_and_one_slower_than_the_bound_fails(base: str, wm: Receiver, zone: Zone) -> None:
    zone.names["slow.test"] = Name([[RECEIVER]], delay=1.0)
    zone.names["slower.test"] = Name([[RECEIVER]], delay=LOOKUP_TIMEOUT + 2)
    assert ping(base, "http://slow.test/ok") == ACCEPTED
    code, text = fault(ping(base, "http://slower.test/ok"))
    assert code == 50 and "slower.test" in text


def test_names_with_a_non_public_answer_are_refused_and_never_dialled(base: str, wm: Receiver, zone: Zone) -> None:
    def trap(conn: socket.socket, server: RawServer) -> None:
        with server.lock:
            server.requests += 1

    zone.names["loopback.test"] = Name([["127.0.0.1"]])
    zone.names["mixed.test"] = Name([[RECEIVER, "127.0.0.1"]])
    # DNS rebinding: public when checked, loopback when asked again. No second lookup is ever made
    # for a connection, so each ping goes to the checked address or is refused.
    zone.names["rebind.test"] = Name([[RECEIVER], ["127.0.0.1"]], ttl=0)
    with raw_server("127.0.0.1", 80, trap) as loopback:
        for name in ("loopback.test", "mixed.test"):
            code, text = fault(ping(base, f"http://{name}/ok"))
            assert code == 49 and "loopback address 127.0.0.1" in text
        for _ in range(5):
            result = ping(base, "http://rebind.test/ok")
            assert result == ACCEPTED or result[0] == 49
        assert loopback.requests == 0


def test_the_limit_per_destination_counts_addresses_not_spellings(wm: Receiver, zone: Zone) -> None:
    zone.names["hang.test"] = Name([[HANGING]])
    spellings = [
        HANGING,
        "0xb.22.33.45",
        "185999661",
        "11.22.8493",
        "0xb.0x16.0x21.0x2d",
        "[::ffff:11.22.33.45]",
        "[::ffff:b16:212d]",
        "hang.test",
        "HANG.TEST.",
        "hang-hosts.test",
    ]
    # A small limit, so that the test needs a few pings rather than a thousand: the case is about its key.
    with (
        raw_server(HANGING, 80, held_then_ok) as hanging,
        proxy({**FORWARDING_ONLY, "PINGFORWARD_MAX_PER_HOST": "4"}) as url,
    ):
        with ThreadPoolExecutor(2 * len(spellings)) as pool:
            held = [pool.submit(ping, url, f"http://{spelling}/wm") for spelling in spellings * 2]
            until(lambda: hanging.held == 4)
            # Another receiver is served at once, while 18 pings wait for the hanging one.
            assert ping(url, wm.url + "/ok") == ACCEPTED
            time.sleep(0.2)  # a fifth connection, were the limit keyed by spelling, would have arrived by now
            assert (hanging.held, hanging.most) == (4, 4)
            hanging.release.set()
            assert [future.result() for future in held] == ["ok"] * len(held)  # waited their turn: none refused


def test_a_burst_to_one_slow_receiver_is_all_delivered_on_the_defaults(base: str) -> None:
    def slow(conn: socket.socket, server: RawServer) -> None:
        while read_request(conn):
            with server.lock:
                server.requests += 1
            time.sleep(1)
            conn.sendall(answer("202 Accepted"))

    pings = 200
    with raw_server(RECEIVER, 8080, slow) as receiver_, ThreadPoolExecutor(pings) as pool:
        results = list(pool.map(lambda _: ping(base, f"http://{RECEIVER}:8080/wm"), range(pings)))
    assert results == ["ok"] * pings
    assert receiver_.requests == pings


def test_a_kept_alive_connection_closed_at_reuse_does_not_lose_the_ping(base: str) -> None:
    def once_per_connection(conn: socket.socket, server: RawServer) -> None:
        # Answers one request and keeps the connection open, then closes it as the next one arrives.
        if read_request(conn):
            conn.sendall(answer("202 Accepted"))
            read_request(conn)

    with raw_server(RECEIVER, 8443, once_per_connection):
        assert [ping(base, f"http://{RECEIVER}:8443/wm") for _ in range(6)] == ["ok"] * 6


def keep_alive(conn: socket.socket, server: RawServer) -> None:
    while read_request(conn):
        with server.lock:
            server.requests += 1
        conn.sendall(answer("202 Accepted"))


def test_a_slot_counts_against_the_address_dialled_not_the_first_answered(zone: Zone) -> None:
    # Names answering [an address that refuses at once, the victim], each its own refusing address: each
    # connection falls through to the victim, and must count against it, not against the refusing one.
    names = {f"fallthrough-{n}.test": f"11.0.100.{n}" for n in range(10)}
    zone.names.update({name: Name([[refusing, HANGING]]) for name, refusing in names.items()})
    # A small limit, so that the test needs a few pings rather than a thousand: the case is about its key.
    with (
        raw_server(HANGING, 80, held_then_ok) as victim,
        proxy({**FORWARDING_ONLY, "PINGFORWARD_MAX_PER_HOST": "4"}) as url,
    ):
        with ThreadPoolExecutor(len(names)) as pool:
            held = [pool.submit(ping, url, f"http://{name}/wm") for name in names]
            until(lambda: victim.held == 4)
            time.sleep(0.2)  # a fifth connection, were the slots counted against the first address, would be here
            assert (victim.held, victim.most) == (4, 4)
            victim.release.set()
            assert [future.result() for future in held] == ["ok"] * len(held)


def test_a_name_with_thousands_of_addresses_costs_a_handful_of_attempts(base: str, zone: Zone) -> None:
    # About 4,090 A records (over TCP): the first ones refuse at once (REFUSING_NET), the receiver is the
    # fifth and the last. Only a handful of addresses is tried, so neither is dialled.
    unreachable = [f"11.0.{n >> 8}.{n & 255}" for n in range(1, 4089)]
    zone.names["many.test"] = Name([[*unreachable[:4], RECEIVER, *unreachable[4:], RECEIVER]])
    zone.names["few.test"] = Name([[*unreachable[:3], RECEIVER]])
    with raw_server(RECEIVER, 8080, keep_alive) as receiving:
        code, text = fault(ping(base, "http://many.test:8080/wm"))
        assert code == 50 and "refused" in text
        assert zone.tcp["many.test"] >= 1 and receiving.connections == 0
        assert ping(base, "http://few.test:8080/wm") == "ok"  # the fourth address is tried
        assert receiving.connections == 1


def test_a_busy_receiver_keeps_its_connection_while_many_origins_are_idle(base: str, zone: Zone) -> None:
    # More origins with an idle connection than the pool keeps: the one idle longest is closed, never
    # the busy receiver's connection just handed back.
    others = [f"idle-{n}.test" for n in range(110)]
    zone.names.update({name: Name([[RECEIVER]]) for name in others})
    zone.names["busy.test"] = Name([[BUSY]])
    with raw_server(RECEIVER, 8443, keep_alive) as idle, raw_server(BUSY, 8443, keep_alive) as busy:
        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(lambda name: ping(base, f"http://{name}:8443/wm"), others)) == ["ok"] * len(others)
        assert idle.connections >= len(others)
        assert [ping(base, "http://busy.test:8443/wm") for _ in range(50)] == ["ok"] * 50
        assert (busy.requests, busy.connections) == (50, 1)


@pytest.fixture(scope="module")
def checked(zone: Zone) -> Iterator[str]:
    """The proxy with every setting at its default, the spam checks included."""
    with proxy({}) as url:
        yield url


def test_sources_whose_names_do_not_exist_are_gone_and_silent_ones_unreachable(
    checked: str, wm: Receiver, zone: Zone
) -> None:
    # The source is read through the same c-ares resolver and address policy as forwards, on the defaults.
    zone.names["receiver.test"] = Name([[RECEIVER]])
    zone.names["silent-source.test"] = Name(silent=True)
    zone.names["inside.test"] = Name([["127.0.0.1"]])
    before = len(wm.received)
    code, words = fault(ping(checked, "http://receiver.test/ok", "http://no-such-source.test/post"))
    assert code == 16 and "cannot resolve no-such-source.test" in words
    code, words = fault(ping(checked, "http://receiver.test/ok", "http://silent-source.test/post"))
    assert code == 50 and "try again later" in words
    code, words = fault(ping(checked, "http://receiver.test/ok", "http://inside.test/post"))
    assert code == 16 and "loopback address 127.0.0.1 (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)" in words
    assert len(wm.received) == before  # none of them forwarded
