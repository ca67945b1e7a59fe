"""Every client of the server bounded, under the Procfile's command: heads too long, too many fields or too
slow, pipelined heads, bodies no route reads, clients that do not read; refusals counted and logged.

Raw sockets against the proxy under uvicorn; every wait is bounded, and no test depends on speed. Tests
about time run the Procfile's command with `--http tests.server_quick:HttpToolsProtocol`, the same class
with short bounds, and wait far longer than those bounds.
"""

from __future__ import annotations

import re
import select
import socket
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from pingforward import server
from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.server import HEAD_SECONDS, MAX_FIELDS, MAX_HEAD, MAX_LINE, MAX_PIPELINE, SWEEP_SECONDS
from tests import server_quick
from tests.servers import (
    LOCAL_ENV,
    LOCALHOST,
    Process,
    Receiver,
    free_port,
    procfile_command,
    receiver,
    running,
    serve_app,
)

Quick = server_quick.HttpToolsProtocol
WAIT = 15.0  # generous bound for what the short bounds should end well within: a busy machine must not fail a test


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with proxy() as process:
        yield process.base


@pytest.fixture(scope="module")
def quick() -> Iterator[Process]:
    with proxy("tests.server_quick:HttpToolsProtocol") as process:
        yield process


@pytest.fixture(scope="module")
def wm() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


@contextmanager
def proxy(protocol: str | None = None) -> Iterator[Process]:
    """The Procfile's command on its defaults (but for the spam checks), with another `--http` class if given."""
    port = free_port()
    command = procfile_command(port)
    if protocol:
        command[command.index("--http") + 1] = protocol
    # About request heads and forwarding alone: the spam checks, which would refuse the made-up sources
    # of these pings, are off (test_spam.py tests them).
    env = {**LOCAL_ENV, "PINGFORWARD_SPAM_CHECKS": "off"}
    with tempfile.TemporaryDirectory() as tmp, running(command, port, env, Path(tmp) / "proxy.log") as p:
        yield p


@contextmanager
def in_process(protocol: type[server.HttpToolsProtocol]) -> Iterator[str]:
    """The app under uvicorn with `protocol` on uvloop, in a thread of this process: its counters are readable."""
    with serve_app(create_app(Settings.from_environ(LOCAL_ENV)), loop="uvloop", http=protocol) as base:
        yield base


def connect(base: str, timeout: float = WAIT) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def answer_then_close(sock: socket.socket, timeout: float | None = None) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    data = b""
    if timeout is not None:
        sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if len(data) > 1_000_000:
                break
    except (ConnectionResetError, TimeoutError):
        pass
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


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server ends the connection within `seconds`, reading (and dropping) what it sends."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    return True
            except OSError:
                return True
    return False


def wait_for(predicate: Any, seconds: float = WAIT) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def head(path: str = "/healthz", fields: int = 0, field: bytes = b"X-F: v") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), (field + b"\r\n") * fields)


# The bounds on a head's size and shape, on the defaults.


def test_a_request_line_too_long_is_414(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"POST /?" + b"a" * (MAX_LINE + 100))
        assert status(answer_then_close(sock)) == 414


def test_a_request_line_too_long_in_one_chunk_is_414(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"GET /?" + b"a" * (MAX_LINE + 100) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(answer_then_close(sock)) == 414


@pytest.mark.parametrize("method", [b"GET", b"OPTIONS"])
def test_the_request_line_is_bounded_as_a_whole_not_only_its_target(base: str, method: bytes) -> None:
    # A target a few bytes under the bound, whose line (method, target, version) is over it.
    target = b"/?" + b"a" * (MAX_LINE - len(method) - 2 - 2)
    line = method + b" " + target + b" HTTP/1.1\r\n"
    assert len(target) < MAX_LINE < len(line)
    with connect(base) as sock:
        send_quietly(sock, line + b"Host: x\r\n\r\n")
        assert status(answer_then_close(sock)) == 414
    # A line just within the bound is served.
    with connect(base) as sock:
        short = method + b" " + target[: MAX_LINE - len(line)] + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(short)
        assert status(answer_then_close(sock)) not in (414, 431, 400)


def test_the_next_request_line_on_a_kept_alive_connection_is_bounded_too(base: str) -> None:
    with connect(base) as sock:
        sock.sendall(head())
        assert read_response(sock).endswith(b"ok")
        send_quietly(sock, b"GET /?" + b"a" * (MAX_LINE + 100))
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
            if select.select([sock], [], [], 0.01)[0]:  # answered: stop
                break
        assert status(answer_then_close(sock)) == 431


@pytest.mark.parametrize("field", [b"X-F: v", b"a:"], ids=["fields", "empty-fields"])
def test_more_header_fields_than_the_bound_is_431(base: str, field: bytes) -> None:
    with connect(base) as sock:  # Host and MAX_FIELDS - 1 more: served
        sock.sendall(head(fields=MAX_FIELDS - 1, field=field))
        assert read_response(sock).endswith(b"ok")
    with connect(base) as sock:
        send_quietly(sock, head(fields=MAX_FIELDS, field=field))
        assert status(answer_then_close(sock)) == 431


def test_thirteen_thousand_empty_fields_are_refused_at_the_bound(base: str) -> None:
    # 52 KB: under the head's byte bound, so only the field count refuses it; httptools stops at field 101.
    request = head(fields=13_000, field=b"a:")
    assert len(request) < MAX_HEAD
    for _ in range(3):
        with connect(base) as sock:
            send_quietly(sock, request)
            assert status(answer_then_close(sock)) == 431
    assert httpx.get(base + "/healthz", timeout=10, trust_env=False).text == "ok"


def test_a_malformed_head_is_400(base: str) -> None:
    with connect(base) as sock:
        send_quietly(sock, b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
        assert status(answer_then_close(sock)) == 400


def test_a_refusal_is_read_by_a_client_that_keeps_sending(base: str) -> None:
    # The server answers 431 while the client's bytes keep arriving: it shuts down writing and reads on
    # for a while instead of closing, so the kernel sends no reset, which could destroy the answer.
    with connect(base) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop = threading.Event()

        def flood() -> None:
            send_quietly(sock, head(fields=MAX_FIELDS + 10))
            for _ in range(2000):  # bounded: 2 MB
                if stop.is_set():
                    break
                send_quietly(sock, b"X-More: " + b"m" * 1000 + b"\r\n")

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        time.sleep(0.5)  # the answer is written and the server has closed or lingers, while we send
        try:
            data = answer_then_close(sock)
        finally:
            stop.set()
            sender.join(timeout=10)
        assert status(data) == 431


def test_a_head_in_many_small_chunks_under_the_bounds_is_served(base: str, wm: Receiver) -> None:
    body = xmlrpc.client.dumps(("https://blog.example/post", "https://site.example/"), "pingback.ping").encode()
    request = (
        f"POST /?forward={quote(wm.url + '/ok', safe='')} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        + "".join(f"X-Field-{n}: {'v' * 1000}\r\n" for n in range(40))
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(base) as sock:
        for start in range(0, len(request), 997):
            sock.sendall(request[start : start + 997])
        sock.sendall(body)
        data = read_response(sock)
        assert status(data) == 200 and b"Webmention accepted" in data
        # The same connection, kept alive, takes the next request: the bounds start again. (Another
        # target: the same ping again would be a repeat, answered without a forward.)
        other = body.replace(b"https://site.example/", b"https://site.example/2")
        sock.sendall(request.replace(b"%d\r\n\r\n" % len(body), b"%d\r\n\r\n" % len(other)) + other)
        assert b"Webmention accepted" in read_response(sock)


def test_pipelined_requests_are_answered_in_order_and_kept_alive(base: str) -> None:
    with connect(base) as sock:
        sock.sendall(head() * 5 + head("/nowhere"))
        data = b""
        while len(statuses(data)) < 6 or not data.endswith(b"ok"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
            if statuses(data)[-1:] == [404] and data.count(b"HTTP/1.1") == 6:
                break
        assert statuses(data) == [200] * 5 + [404]
        sock.sendall(head())
        assert read_response(sock).endswith(b"ok")


# Time: heads, pipelined heads, bodies no route reads, clients that do not read (short bounds).


def test_the_procfile_class_keeps_the_production_bounds() -> None:
    assert "--http pingforward.server:HttpToolsProtocol" in Path("Procfile").read_text()
    protocol = server.HttpToolsProtocol
    assert (protocol.head_seconds, protocol.sweep_seconds) == (HEAD_SECONDS, SWEEP_SECONDS) == (5.0, 1.0)
    assert (protocol.unread_seconds, protocol.linger_seconds, protocol.log_seconds) == (10.0, 2.0, 60.0)


@pytest.mark.parametrize("first", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_head_that_does_not_arrive_in_time_is_closed(quick: Process, first: bytes) -> None:
    # A connection that sends nothing, and one that starts a head and then drips.
    with connect(quick.base) as sock:
        stop = threading.Event()

        def drip() -> None:
            send_quietly(sock, first)
            while first and not stop.wait(Quick.head_seconds / 5):
                send_quietly(sock, b"X-Drip: 1\r\n")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        data = answer_then_close(sock)
        stop.set()
        dripper.join(timeout=5)
    if first:
        assert status(data) == 408
    else:
        assert data == b""  # nothing asked, nothing answered: the connection is only closed


def test_a_pipelined_head_is_timed_from_its_first_byte(quick: Process) -> None:
    # The next head starts in the chunk that ends the first request, and never ends.
    with connect(quick.base) as sock:
        sock.sendall(head() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        data = answer_then_close(sock)
    assert statuses(data) == [200, 408]


def test_a_kept_alive_connection_that_sends_one_byte_of_its_next_head_gets_408(quick: Process) -> None:
    with connect(quick.base) as sock:
        sock.sendall(head())
        assert read_response(sock).endswith(b"ok")
        sock.sendall(b"G")
        assert status(answer_then_close(sock)) == 408


@contextmanager
def slow_receiver(seconds: float) -> Iterator[str]:
    """A webmention receiver that accepts every POST after `seconds`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(seconds)
            body = b'{"result": "Webmention accepted"}'
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((LOCALHOST, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{LOCALHOST}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def ping_request(forward: str) -> bytes:
    body = xmlrpc.client.dumps(("https://blog.example/post", "https://site.example/"), "pingback.ping").encode()
    return (
        f"POST /?forward={quote(forward, safe='')} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_pipelined_head_dripped_after_a_slow_ping_does_not_replace_its_answer(quick: Process) -> None:
    # The ping takes 4 head timeouts; the next head drips and times out meanwhile: the ping's answer
    # goes out first, then the 408, then the connection closes.
    with slow_receiver(4 * Quick.head_seconds) as slow, connect(quick.base) as sock:
        sock.sendall(ping_request(slow + "/webmention") + b"GET /healthz HTTP/1.1\r\n")
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(Quick.head_seconds / 5):
                send_quietly(sock, b"X-Drip: 1\r\n")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            data = answer_then_close(sock)
        finally:
            stop.set()
            dripper.join(timeout=5)
    assert statuses(data) == [200, 408]
    assert b"Webmention accepted" in data


UNREAD_BODIES = [
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", b"x", 200, id="healthz"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n", 200, id="chunked"),
    pytest.param(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", b"x", 404, id="send"),
]


@pytest.mark.parametrize(("request_head", "drop", "answer"), UNREAD_BODIES)
def test_a_body_no_route_reads_does_not_hold_the_connection(
    quick: Process, request_head: bytes, drop: bytes, answer: int
) -> None:
    socks = [connect(quick.base) for _ in range(10)]
    stop = threading.Event()

    def drip() -> None:
        for sock in socks:
            send_quietly(sock, request_head)
        while not stop.wait(0.05):
            for sock in socks:
                send_quietly(sock, drop)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        for sock in socks:
            assert status(answer_then_close(sock)) == answer  # answered, then closed while the body still drips
    finally:
        stop.set()
        dripper.join(timeout=5)
        for sock in socks:
            sock.close()


def test_a_body_that_arrives_after_the_answer_is_dropped_and_the_connection_kept(quick: Process) -> None:
    # A client whose body is still on its way when a route that does not read it has answered (as httpx
    # posting a form to /send without the token): the next request on the connection is served.
    with connect(quick.base) as sock:
        for _ in range(3):
            sock.sendall(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            assert status(read_response(sock)) == 404
            sock.sendall(b"hello")
        sock.sendall(head())
        assert read_response(sock).endswith(b"ok")


def test_a_body_that_arrives_with_its_head_keeps_the_connection_alive(quick: Process) -> None:
    with connect(quick.base) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            assert read_response(sock).endswith(b"ok")


def test_clients_pipelining_without_reading_are_closed_and_their_memory_bounded() -> None:
    # 20 clients pipeline 256 KB of `GET /` each and never read: the server queues a bounded number of their
    # requests, answers those, lingers briefly and drops them; its memory stays small while they stay.
    requests = head("/") * (256 * 1024 // len(head("/")))
    with proxy("tests.server_quick:HttpToolsProtocol") as quick:
        port, pid = int(quick.base.rsplit(":", 1)[1]), quick.proc.pid
        before = _rss_kib(pid)
        socks = [unreading(quick.base) for _ in range(20)]
        senders = [threading.Thread(target=send_quietly, args=(sock, requests), daemon=True) for sock in socks]
        try:
            for sender in senders:
                sender.start()
            assert wait_for(lambda: server_connections(port) == 0)
            assert _rss_kib(pid) - before < 20 * 1024  # unbounded, each held its whole pipelined queue
            answered = statuses(answer_then_close(socks[0], 1.0))  # what reached it before the drop: answers only
            assert set(answered) <= {200} and len(answered) <= MAX_PIPELINE + 1
        finally:
            for sock in socks:
                sock.close()
            for sender in senders:
                sender.join(timeout=10)


def test_a_client_that_never_reads_its_answers_is_closed() -> None:
    # Requests a few at a time (under the pipelining bound), never reading: once the kernel's buffers and the
    # transport's are full, reading stops, and after `unread_seconds` the connection is dropped.
    with proxy("tests.server_quick:HttpToolsProtocol") as quick:
        port = int(quick.base.rsplit(":", 1)[1])
        for _ in range(3):  # on a busy machine the pipelining bound may close it first: tried again
            with unreading(quick.base) as sock:
                trickle(sock)
                assert wait_for(lambda: server_connections(port) == 0)
            if wait_for(lambda: "refused reason=unread-output" in quick.output(), 5.0):
                break
        assert "refused reason=unread-output" in quick.output()


def trickle(sock: socket.socket) -> None:
    """Requests one at a time, never reading the answers, until the server drops the connection or `WAIT`."""
    sock.settimeout(0.5)
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        try:
            sock.sendall(head("/"))
        except TimeoutError:  # the server stopped reading
            continue
        except OSError:  # reset
            return
        time.sleep(0.005)


def unreading(base: str) -> socket.socket:
    """A connection with a small receive buffer, for a client that does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = base.removeprefix("http://").split(":")
    sock.settimeout(WAIT)
    sock.connect((host, int(port)))
    return sock


def server_connections(port: int) -> int:
    """The server's open TCP connections on `port`, from the kernel's table (the client may never see a reset
    that comes while its receive window is shut)."""
    held = {"01", "04", "05", "08"}  # established, FIN-WAIT-1/2 (lingering), CLOSE-WAIT
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in held:
                count += 1
    return count


# Refusals counted (for metrics) and logged: the first of a kind at once, the rest summed.


REFUSALS = [
    pytest.param(b"GET /?" + b"a" * (MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n", 414, "414", id="414"),
    pytest.param(head(fields=MAX_FIELDS + 1), 431, "431-fields", id="431-fields"),
    pytest.param(b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_LINE + 10) + b"\r\n\r\n", 431, "431-line", id="431-line"),
    pytest.param(head(fields=70, field=b"X: " + b"v" * 1000), 431, "431-head", id="431-head"),
    pytest.param(b"GET / HTTP/1.1\r\n", 408, "408", id="408"),
    pytest.param(b"BREW / HTTP/1.1\r\n\r\n", 400, "400-malformed", id="400-malformed"),
]


@pytest.fixture(scope="module")
def counted() -> Iterator[str]:
    with in_process(Quick) as base:
        yield base


@pytest.mark.parametrize(("request_bytes", "answer", "reason"), REFUSALS)
def test_a_refusal_is_counted_by_reason(counted: str, request_bytes: bytes, answer: int, reason: str) -> None:
    before = server.refusals.copy()
    with connect(counted) as sock:
        send_quietly(sock, request_bytes)
        assert status(answer_then_close(sock)) == answer
    assert server.refusals - before == {reason: 1}


def test_unread_bodies_and_unread_answers_are_counted(counted: str) -> None:
    before = server.refusals.copy()
    with connect(counted) as sock:
        send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nx")
        assert status(answer_then_close(sock)) == 200
    # On a busy machine the server may read a backlog of more pipelined heads than MAX_PIPELINE at once and
    # close for that first ("pipeline"): the client is tried again, at most three times.
    for _ in range(3):
        with unreading(counted) as sock:
            trickle(sock)
        if wait_for(lambda: "unread-output" in server.refusals - before, 5.0):
            break
    assert wait_for(lambda: (server.refusals - before).keys() >= {"unread-body", "unread-output"})


def test_the_first_refusal_is_logged_at_once_and_the_rest_summed(quick: Process) -> None:
    request = head(fields=MAX_FIELDS + 1)
    for _ in range(3):
        with connect(quick.base) as sock:
            port = sock.getsockname()[1]
            send_quietly(sock, request)
            assert status(answer_then_close(sock)) == 431
        if _ == 0:
            first = port
            assert wait_for(lambda: "refused reason=431-fields" in quick.output())
    log = quick.output()
    assert re.search(rf"refused reason=431-fields client=127\.0\.0\.1:{first} detail=\"over 100 header fields\"", log)
    assert log.count("refused reason=431-fields client=") == 1
    # The other two within the window: one line with their sum once the window ends.
    assert wait_for(lambda: "refused reason=431-fields count=2 " in quick.output())
    # After the window, the next is logged at once again.
    with connect(quick.base) as sock:
        send_quietly(sock, request)
        answer_then_close(sock)
    assert wait_for(lambda: quick.output().count("refused reason=431-fields client=") == 2)


def test_the_logged_client_names_the_forwarded_address_when_the_head_had_one(quick: Process) -> None:
    with connect(quick.base) as sock:
        send_quietly(sock, b"GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\nHost: x\r\n" + b"X-Slow: 1\r\n")
        assert status(answer_then_close(sock)) == 408
    assert wait_for(lambda: "refused reason=408 client=127.0.0.1:" in quick.output())
    assert re.search(r'refused reason=408 client=127\.0\.0\.1:\d+ x-forwarded-for="203\.0\.113\.9"', quick.output())


# The sweep survives an exception in itself.


class _Failing(Quick):
    failures = 0

    def _expire(self, now: float) -> None:
        if _Failing.failures < 3:
            _Failing.failures += 1
            raise RuntimeError("a bug in the sweep")
        super()._expire(now)


def test_the_sweep_keeps_running_after_an_exception_in_itself(caplog: pytest.LogCaptureFixture) -> None:
    _Failing.failures = 0
    with in_process(_Failing) as base, connect(base) as sock:
        send_quietly(sock, b"GET / HTTP/1.1\r\n")
        assert status(answer_then_close(sock)) == 408
    assert _Failing.failures == 3
    assert "a bug in the sweep" in caplog.text  # the loop's exception handler logged each one


# Memory under endless heads.


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
