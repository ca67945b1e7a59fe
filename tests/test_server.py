"""Request heads under the Procfile's command: too long, too large or too slow is answered and closed (issue 11).

Raw sockets against the proxy under uvicorn; every wait is bounded, and no test depends on speed:
a slow head is closed within HEAD_SECONDS and a sweep, and the tests wait far longer than that.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from pingforward.server import HEAD_SECONDS, MAX_HEAD, MAX_LINE, SWEEP_SECONDS
from tests.servers import LOCAL_ENV, Receiver, proxy, receiver

CLOSE_WITHIN = HEAD_SECONDS + 2 * SWEEP_SECONDS + 10  # generous: a busy machine must not fail the test


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with proxy(LOCAL_ENV) as url:
        yield url


@pytest.fixture(scope="module")
def wm() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=CLOSE_WITHIN)
    return sock


def answer_then_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if len(data) > 1_000_000:
            break
    return data


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", data, re.IGNORECASE)
    return int(match[1]) if match else 0


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server closed as it should, while we were still sending
        pass


def status(data: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return int(match[1]) if match else 0


def test_a_request_line_too_long_is_414(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"POST /?" + b"a" * (MAX_LINE + 100))
        assert status(answer_then_close(sock)) == 414


def test_a_request_line_too_long_in_one_chunk_is_414(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"GET /?" + b"a" * (MAX_LINE + 100) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(answer_then_close(sock)) == 414


def test_a_header_line_too_long_is_431(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (MAX_LINE + 100) + b"\r\n\r\n")
        assert status(answer_then_close(sock)) == 431


def test_a_header_section_too_large_is_431_before_it_ends(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Many: " + b"v" * 1000 + b"\r\n"
        for _ in range(MAX_HEAD // len(line) + 10):  # bounded; never ends the head
            send_quietly(sock, line)
            if select.select([sock], [], [], 0.01)[0]:  # answered: stop, or our bytes would reset it
                break
        assert status(answer_then_close(sock)) == 431


def test_a_head_in_many_small_chunks_under_the_bounds_is_served(base: str, wm: Receiver) -> None:
    body = xmlrpc.client.dumps(("https://blog.example/post", "https://site.example/"), "pingback.ping").encode()
    head = (
        f"POST /?forward={quote(wm.url + '/ok', safe='')} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        + "".join(f"X-Field-{n}: {'v' * 1000}\r\n" for n in range(40))
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(base) as sock:
        for start in range(0, len(head), 997):
            sock.sendall(head[start : start + 997])
        sock.sendall(body)
        data = read_response(sock)
        assert status(data) == 200 and b"Webmention accepted" in data
        # The same connection, kept alive, takes the next request: the bounds start again. (Another
        # target: the same ping again would be a repeat, answered without a forward.)
        other = body.replace(b"https://site.example/", b"https://site.example/2")
        sock.sendall(head.replace(b"%d\r\n\r\n" % len(body), b"%d\r\n\r\n" % len(other)) + other)
        assert b"Webmention accepted" in read_response(sock)


@pytest.mark.parametrize("first", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_head_that_does_not_arrive_in_time_is_closed(base: str, first: bytes) -> None:
    # A connection that sends nothing, and one that starts a head and then drips.
    started = time.monotonic()
    with connect(base) as sock:
        stop = threading.Event()

        def drip() -> None:
            sock.sendall(first)
            while first and not stop.wait(0.5) and time.monotonic() - started < CLOSE_WITHIN:
                send_quietly(sock, b"X-Drip: 1\r\n")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        data = answer_then_close(sock)
        stop.set()
        dripper.join(timeout=5)
    assert time.monotonic() - started < CLOSE_WITHIN
    if first:
        assert status(data) == 408
    else:
        assert data == b""  # nothing asked, nothing answered: the connection is only closed


def test_memory_stays_flat_and_health_answers_under_endless_heads(base: str) -> None:
    pid = _server_pid(base)
    before = _rss_kib(pid)
    socks = [connect(base) for _ in range(4)]
    try:
        line = b"X-Flood: " + b"f" * 8000 + b"\r\n"
        for sock in socks:
            send_quietly(sock, b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(2000):  # up to 16 MB per connection; bounded
            for sock in socks:
                send_quietly(sock, line)
            if all(_closed(sock) for sock in socks):
                break
        assert httpx.get(base + "/healthz", timeout=10, trust_env=False).text == "ok"
        assert _rss_kib(pid) - before < 20 * 1024  # under 20 MiB more, where unbounded heads took GBs
    finally:
        for sock in socks:
            sock.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b"" or True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _server_pid(base: str) -> int:
    port = base.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pingforward.app:create_app" in cmdline and port.encode() in cmdline:
                return int(proc.name)
    raise AssertionError("the proxy's process was not found")


def _rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match is not None
    return int(match[1])
