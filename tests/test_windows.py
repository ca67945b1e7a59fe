"""The windows (repeats, floods, verification fetches) over this worker's memory, and over a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import tracemalloc
import xmlrpc.client
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import quote

import httpx
import pytest
import redis
import respx

from pingforward.config import Settings
from pingforward.pingback import FaultCode
from pingforward.windows import BoundedMemory, Windows, host_key
from tests.servers import RedisServer, redis_available, redis_server

pytestmark = pytest.mark.anyio

SOURCE = "https://blog.example/post"
TARGET = "https://site.example/notes/42"
FORWARD = "https://webmention.example/endpoint"
DEFAULTS = Settings()


@pytest.fixture
async def windows() -> AsyncIterator[Windows]:
    made = Windows(DEFAULTS)
    yield made
    await made.close()


def _counters(windows: Windows) -> int:
    storage = windows.memory.storage
    assert isinstance(storage, BoundedMemory)
    return len(storage.storage)


# Repeats


async def test_a_delivered_ping_is_forwarded_once_and_its_repeats_get_fault_48(windows: Windows) -> None:
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    await windows.settle(SOURCE, TARGET, FORWARD, delivered=True)
    for _ in range(4):
        repeat = await windows.claim(SOURCE, TARGET, FORWARD)
        assert repeat is not None
        assert repeat.fault == FaultCode.ALREADY_REGISTERED
        assert repeat.refusal == "repeat"
        assert "PINGFORWARD_REPEAT_WINDOW" in repeat.text


async def test_a_ping_not_delivered_does_not_block_its_retry(windows: Windows) -> None:
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    await windows.settle(SOURCE, TARGET, FORWARD, delivered=False)
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None


async def test_a_repeat_while_the_first_is_in_flight_is_a_transient_fault(windows: Windows) -> None:
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    repeat = await windows.claim(SOURCE, TARGET, FORWARD)
    assert repeat is not None and repeat.fault == FaultCode.UPSTREAM_ERROR and repeat.refusal == "repeat"


async def test_concurrent_identical_pings_claim_once(windows: Windows) -> None:
    answers = await asyncio.gather(*(windows.claim(SOURCE, TARGET, FORWARD) for _ in range(20)))
    assert answers.count(None) == 1


@pytest.mark.parametrize(
    "other",
    [
        ("https://blog.example/other", TARGET, FORWARD),
        (SOURCE, "https://site.example/notes/43", FORWARD),
        (SOURCE, TARGET, "https://webmention.example/other"),
    ],
)
async def test_each_part_of_the_triple_counts(windows: Windows, other: tuple[str, str, str]) -> None:
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    await windows.settle(SOURCE, TARGET, FORWARD, delivered=True)
    assert await windows.claim(*other) is None


async def test_the_repeat_window_ends() -> None:
    windows = Windows(replace(DEFAULTS, repeat_window=1))
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    await windows.settle(SOURCE, TARGET, FORWARD, delivered=True)
    assert await windows.claim(SOURCE, TARGET, FORWARD) is not None
    await asyncio.sleep(1.05)
    assert await windows.claim(SOURCE, TARGET, FORWARD) is None


# Floods


async def test_a_blogs_burst_of_40_passes_on_the_defaults(windows: Windows) -> None:
    answers = await asyncio.gather(*(windows.flood("192.0.2.1", "blog.example") for _ in range(40)))
    assert answers == [None] * 40


async def test_a_client_past_its_share_gets_fault_429_saying_when_to_retry(windows: Windows) -> None:
    answers = [await windows.flood("192.0.2.1", f"spam{n}.example") for n in range(400)]
    assert answers[:60] == [None] * 60  # the default: 60 a minute
    refused = answers[60:]
    assert all(a is not None and a.fault == FaultCode.TOO_MANY and a.refusal == "flood" for a in refused)
    text = refused[0].text if refused[0] else ""
    assert "PINGFORWARD_FLOOD_CLIENT" in text and "192.0.2.1" in text
    seconds = int(text.split("retry in ")[1].split(" s")[0])
    assert 1 <= seconds <= 60
    assert await windows.flood("192.0.2.2", "spam0.example") is None  # another client has its own share


async def test_an_ipv6_client_is_counted_by_its_64(windows: Windows) -> None:
    answers = [await windows.flood(f"2001:db8:1:2::{n:x}", f"s{n}.example") for n in range(61)]
    assert answers[:60] == [None] * 60
    refused = answers[60]
    assert refused is not None and "from 2001:db8:1:2::/64" in refused.text
    assert await windows.flood("2001:db8:1:3::1", "s.example") is None


async def test_a_source_host_past_its_share_gets_fault_429(windows: Windows) -> None:
    answers = []
    for n in range(100):  # each from another client; each source passes the checks and is counted
        answers.append(answer := await windows.flood(f"192.0.2.{n % 200}", "Spam.Example"))
        if answer is None:
            await windows.count_source("spam.example.")
    assert answers.count(None) == 60
    refused = answers[-1]
    assert refused is not None and refused.fault == FaultCode.TOO_MANY
    assert "PINGFORWARD_FLOOD_SOURCE" in refused.text and "spam.example" in refused.text


async def test_pings_whose_source_did_not_pass_leave_its_hosts_share_alone(windows: Windows) -> None:
    # Any client may name an honest blog's made-up pages as sources: those pings are refused by the checks
    # and never counted against the blog, so its own ping still passes.
    assert [await windows.flood(f"192.0.2.{n}", "blog.example") for n in range(100)] == [None] * 100
    assert await windows.flood("198.51.100.7", "blog.example") is None


async def test_the_hourly_window_holds_after_the_minute() -> None:
    windows = Windows(replace(DEFAULTS, flood_client="100/minute;3/hour", flood_source="off"))
    assert [await windows.flood("192.0.2.1", "blog.example") is None for _ in range(4)] == [True] * 3 + [False]
    refused = await windows.flood("192.0.2.1", "blog.example")
    assert refused is not None and "3 per 1 hour" in refused.text


# Verification fetches


async def test_fetches_to_one_host_are_bounded(windows: Windows) -> None:
    allowed = [await windows.fetch_allowed("Victim.Example") for _ in range(100)]
    assert allowed == [True] * 60 + [False] * 40
    assert await windows.fetch_allowed("other.example")


# Settings


SPELLINGS = ["127.0.0.5", "127.0.0.5.", "127.000.000.005", "2130706437", "0x7f000005", "127.5", "[::ffff:127.0.0.5]"]


async def test_a_host_spelled_many_ways_has_one_fetch_bound(windows: Windows) -> None:
    # Each spelling reaches the same address: a bound per spelling would let 60 GETs a minute through per spelling.
    allowed = [await windows.fetch_allowed(SPELLINGS[n % len(SPELLINGS)]) for n in range(100)]
    assert allowed.count(True) == 60


async def test_a_source_host_spelled_many_ways_has_one_share(windows: Windows) -> None:
    answers = []
    for n in range(61):
        host = SPELLINGS[n % len(SPELLINGS)]
        answers.append(answer := await windows.flood(f"192.0.2.{n % 50}", host))
        if answer is None:
            await windows.count_source(host)
    assert [answer is None for answer in answers].count(True) == 60


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("Victim.Example.", "victim.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[2001:DB8::1]", "2001:db8::1"),
    ],
)
def test_host_key(host: str, key: str) -> None:
    assert host_key(host) == key


async def test_the_master_switch_turns_every_window_off() -> None:
    windows = Windows(replace(DEFAULTS, spam_checks=False))
    for _ in range(200):
        assert await windows.flood("192.0.2.1", "blog.example") is None
        assert await windows.claim(SOURCE, TARGET, FORWARD) is None
        await windows.settle(SOURCE, TARGET, FORWARD, delivered=True)
        assert await windows.fetch_allowed("victim.example")
    assert not _counters(windows)


async def test_each_window_turns_off_alone() -> None:
    windows = Windows(replace(DEFAULTS, repeat_window=0, flood_client="off", flood_source="off", fetch_bound="off"))
    for _ in range(200):
        assert await windows.flood("192.0.2.1", "blog.example") is None
        assert await windows.claim(SOURCE, TARGET, FORWARD) is None
        await windows.settle(SOURCE, TARGET, FORWARD, delivered=True)
        assert await windows.fetch_allowed("victim.example")


# The bound on memory


async def test_random_keys_do_not_grow_memory_past_its_bound() -> None:
    windows = Windows(replace(DEFAULTS, flood_client="1000000/hour", flood_source="1000000/hour"), max_keys=1000)
    storage = windows.memory.storage
    assert isinstance(storage, BoundedMemory)

    async def junk(count: int) -> None:
        for _ in range(count):
            token = random.getrandbits(64)
            await windows.flood(f"10.{token % 256}.{token >> 8 & 255}.{token >> 16 & 255}", f"{token:x}.example")
            await windows.claim(f"https://{token:x}.example/", TARGET, FORWARD)
            await windows.fetch_allowed(f"{token:x}.example")

    tracemalloc.start()
    try:
        await junk(2_000)
        first, _ = tracemalloc.get_traced_memory()
        await junk(8_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(len(storage.storage), len(storage.expirations), len(storage.order)) <= 1000 and not storage.locks
    assert after < first * 1.2


async def test_a_busy_client_keeps_its_count_while_strangers_churn_the_memory() -> None:
    windows = Windows(replace(DEFAULTS, flood_client="50/hour", flood_source="off"), max_keys=200)
    answers = []
    for n in range(51):
        answers.append(await windows.flood("192.0.2.1", "blog.example"))
        for m in range(150):  # new keys between two of its pings; 7,500 in all, the memory holds 200
            await windows.flood(f"10.0.{n}.{m}", "x.example")
    assert answers[:50] == [None] * 50 and answers[50] is not None


async def test_expired_counters_are_dropped_as_others_are_counted() -> None:
    storage = BoundedMemory(max_keys=1000)
    for n in range(100):
        await storage.incr(f"old{n}", 0.01)
    await asyncio.sleep(0.02)
    for n in range(100):
        await storage.incr(f"new{n}", 60)
    assert not any(key.startswith("old") for key in storage.storage)


# Redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[RedisServer]:
    reason = redis_available()
    if reason:
        pytest.skip(reason)
    with redis_server() as server:
        yield server


@pytest.fixture
async def pair(redis_url: RedisServer) -> AsyncIterator[tuple[Windows, Windows]]:
    """Two workers' windows sharing one Redis."""
    redis.Redis.from_url(redis_url.url).flushall()
    settings = replace(DEFAULTS, state_url=redis_url.url)
    one, two = Windows(settings), Windows(settings)
    yield one, two
    await one.close()
    await two.close()


async def test_workers_sharing_redis_forward_a_repeat_once(pair: tuple[Windows, Windows]) -> None:
    one, two = pair
    assert await one.claim(SOURCE, TARGET, FORWARD) is None
    in_flight = await two.claim(SOURCE, TARGET, FORWARD)
    assert in_flight is not None and in_flight.fault == FaultCode.UPSTREAM_ERROR
    await one.settle(SOURCE, TARGET, FORWARD, delivered=True)
    repeat = await two.claim(SOURCE, TARGET, FORWARD)
    assert repeat is not None and repeat.fault == FaultCode.ALREADY_REGISTERED
    assert not _counters(one)  # counted in Redis, not in the worker's memory


async def test_workers_sharing_redis_retry_what_was_not_delivered(pair: tuple[Windows, Windows]) -> None:
    one, two = pair
    assert await one.claim(SOURCE, TARGET, FORWARD) is None
    await one.settle(SOURCE, TARGET, FORWARD, delivered=False)
    assert await two.claim(SOURCE, TARGET, FORWARD) is None


async def test_concurrent_claims_in_two_workers_go_out_once(pair: tuple[Windows, Windows]) -> None:
    one, two = pair
    answers = await asyncio.gather(*(w.claim(SOURCE, TARGET, FORWARD) for _ in range(10) for w in (one, two)))
    assert answers.count(None) == 1


async def test_workers_sharing_redis_share_the_flood_windows(pair: tuple[Windows, Windows]) -> None:
    one, two = pair
    answers = [await (one, two)[n % 2].flood("192.0.2.1", f"s{n}.example") for n in range(100)]
    assert answers.count(None) == 60
    assert [await (one, two)[n % 2].fetch_allowed("victim.example") for n in range(61)].count(True) == 60


async def test_every_key_in_redis_expires(pair: tuple[Windows, Windows], redis_url: RedisServer) -> None:
    one, _ = pair
    for n in range(20):
        await one.flood(f"192.0.2.{n}", f"s{n}.example")
        await one.claim(f"{SOURCE}/{n}", TARGET, FORWARD)
        await one.settle(f"{SOURCE}/{n}", TARGET, FORWARD, delivered=n % 2 == 0)
        await one.fetch_allowed(f"s{n}.example")
    client = redis.Redis.from_url(redis_url.url, decode_responses=True)
    keys = client.keys("*")
    assert keys and all(str(key).startswith("pingforward:") for key in keys)
    assert all(0 < client.pttl(key) <= 2 * 3600 * 1000 for key in keys)


async def test_unreachable_redis_falls_back_to_memory_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        url = f"redis://:secret@127.0.0.1:{sock.getsockname()[1]}/0"
    windows = Windows(replace(DEFAULTS, state_url=url))
    with caplog.at_level(logging.WARNING, "pingforward.windows"):
        answers = [await windows.flood("192.0.2.1", f"s{n}.example") for n in range(61)]
        assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    assert answers.count(None) == 60  # the worker's own share still holds
    assert len(caplog.records) == 1
    assert "unreachable" in caplog.text and "secret" not in caplog.text
    await windows.close()


async def test_a_silent_redis_costs_a_bounded_wait(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        windows = Windows(replace(DEFAULTS, state_url=url), store_timeout=0.05, store_retry=60)
        with caplog.at_level(logging.WARNING, "pingforward.windows"):
            assert await windows.flood("192.0.2.1", "blog.example") is None
            assert await windows.claim(SOURCE, TARGET, FORWARD) is None
    assert "no answer within 0.05 s" in caplog.text
    assert _counters(windows)
    await windows.close()


async def test_windows_move_back_to_redis_when_it_returns(
    redis_url: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    windows = Windows(replace(DEFAULTS, state_url=redis_url.url), store_retry=0.2)
    with caplog.at_level(logging.WARNING, "pingforward.windows"):
        assert await windows.fetch_allowed("a.example")
        redis_url.stop()
        try:
            assert await windows.fetch_allowed("b.example")
        finally:
            redis_url.start()
        deadline = time.monotonic() + 10
        while "reachable again" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            await windows.fetch_allowed("c.example")
    assert "unreachable" in caplog.text and "reachable again" in caplog.text
    await windows.close()


# Through the app (ASGI; the receiver is respx)

ENDPOINT = "https://site.example/webmention"


def _ping_body(target: str = TARGET) -> bytes:
    return xmlrpc.client.dumps((SOURCE, target), "pingback.ping").encode()


def _answer(response: httpx.Response) -> str | tuple[int, str]:
    try:
        (value,), _ = xmlrpc.client.loads(response.content)
    except xmlrpc.client.Fault as fault:
        return fault.faultCode, fault.faultString
    return str(value)


async def test_a_forward_that_failed_inside_leaves_no_claim(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(ENDPOINT).mock(side_effect=[RuntimeError("a bug"), httpx.Response(202)])
    url = "/?forward=" + quote(ENDPOINT, safe="")
    first = _answer(await client.post(url, content=_ping_body()))
    assert isinstance(first, tuple) and first[0] == FaultCode.INTERNAL_ERROR
    assert (
        _answer(await client.post(url, content=_ping_body())) == f"Pingback from {SOURCE} to {TARGET} was successful!"
    )
    assert route.call_count == 2


async def test_the_client_counted_is_the_one_the_app_sees(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(ENDPOINT).respond(202)
    url = "/?forward=" + quote(ENDPOINT, safe="")
    answers = [_answer(await client.post(url, content=_ping_body(f"{TARGET}/{n}"))) for n in range(61)]
    refused = answers[-1]
    assert isinstance(refused, tuple) and refused[0] == FaultCode.TOO_MANY
    assert "from 203.0.113.7" in refused[1]  # the conftest client's address
