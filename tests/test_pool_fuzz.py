"""Property test of pingforward.net.pool: answers that hypothesis writes, cut anywhere, on one kept-alive connection.

A real asyncio server on 127.0.0.1 answers 2-4 requests with generated answers (RFC 9112: Content-Length,
chunked with extensions and trailers, or close-delimited bodies; 204/304 without content; 1xx interim answers;
`Connection: close`), writing each in random pieces with small pauses. The client must read each answer's own
status, reason, header fields and body, and must open a new connection after every answer that ends its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pingforward.net.pool import Pool
from tests.test_pool import client, loopback

INTERIM = [  # RFC 9110 §15.2: any number of these may precede the final answer
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
]
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)
PAUSE = st.sampled_from([0.0, 0.0, 0.0, 0.001])  # 0 is one loop turn: pieces then arrive in separate reads


@dataclass(frozen=True)
class Answer:
    status: int
    reason: bytes
    body: bytes  # what the client must read as the content
    trailers: tuple[bytes, ...]  # trailer field names, which must not become header fields (RFC 9110 §6.5.1)
    ends_connection: bool  # Connection: close, or a close-delimited body (RFC 9112 §9.6, §6.3)
    server_closes: bool  # False: the server keeps reading after `Connection: close`, so reuse would show
    pieces: tuple[tuple[bytes, float], ...]  # the wire bytes in write order, each with a pause after it


def casing(name: str) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name.title(), name.lower(), name.upper()]).map(str.encode)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """RFC 9112 §7.1: the body as chunks with optional extensions, then the last chunk and trailer fields."""
    cuts = sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=4))) if len(body) > 1 else []
    wire = b""
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        if start < end:
            wire += b"%x%s\r\n%s\r\n" % (end - start, draw(extension()), body[start:end])
    names = tuple(b"X-Trailer-%d" % i for i in range(draw(st.integers(0, 2))))
    wire += b"0%s\r\n" % draw(extension()) + b"".join(b"%s: %s\r\n" % (n, draw(TOKEN).encode()) for n in names)
    return wire + b"\r\n", names


def extension() -> st.SearchStrategy[bytes]:
    value = st.one_of(TOKEN, TOKEN.map(lambda v: f'"{v} {v}"'))
    pair = st.tuples(TOKEN, st.one_of(st.none(), value)).map(lambda p: f";{p[0]}" + (f"={p[1]}" if p[1] else ""))
    return st.lists(pair, max_size=2).map(lambda pairs: "".join(pairs).encode())


@st.composite
def answers(draw: st.DrawFn, number: int) -> Answer:
    status = draw(st.one_of(st.sampled_from([200, 202, 204, 304, 400, 404, 500]), st.integers(200, 599)))
    reason = " ".join(draw(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh", min_size=1), max_size=3)))
    close = draw(st.booleans())
    head = [b"HTTP/1.1 %d %s" % (status, reason.encode()), b"X-Answer: %d" % number]
    head += [b"X-Pad-%d: %s" % (i, draw(TOKEN).encode()) for i in range(draw(st.integers(0, 3)))]
    body, payload = b"", b""
    trailers: tuple[bytes, ...] = ()
    if status in (204, 304):  # RFC 9110 §15.3.5, §15.4.5: no content, whatever the fields say
        if status == 304 and draw(st.booleans()):
            head.append(draw(casing("content-length")) + b": %d" % draw(st.integers(1, 5000)))
        framing = "none"
    else:
        body = draw(st.binary(max_size=300))
        framing = draw(st.sampled_from(["length", "chunked", "eof"]))
    if framing == "length":
        head.append(draw(casing("content-length")) + b": %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(draw(casing("transfer-encoding")) + b": chunked")
        payload, trailers = draw(chunked(body))
    elif framing == "eof":
        payload = body  # RFC 9112 §6.3 ¶8: the body runs to the close, Connection: close or not
    if close:
        head.append(draw(casing("connection")) + b": close")
    interim = draw(st.lists(st.sampled_from(INTERIM), max_size=2))
    wire = b"".join(interim) + b"\r\n".join(head) + b"\r\n\r\n" + payload
    cuts = sorted(draw(st.sets(st.integers(1, len(wire) - 1), max_size=6)))
    spans = zip([0, *cuts], [*cuts, len(wire)], strict=True)
    pieces = tuple((wire[start:end], draw(PAUSE)) for start, end in spans)
    ends = close or framing == "eof"
    server_closes = framing == "eof" or (close and draw(st.booleans()))
    return Answer(status, reason.encode(), body, trailers, ends, server_closes, pieces)


@dataclass
class Server:
    """Answers the n-th request with answers[n], and notes on which connection each request came."""

    answers: list[Answer]
    requested_on: list[int] = field(default_factory=list)  # connection number of each request
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        connection = self.connections
        self.connections += 1
        try:
            while len(self.requested_on) < len(self.answers):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line[15:]) for line in head.lower().split(b"\r\n") if line[:15] == b"content-length:"), 0
                )
                await reader.readexactly(length)
                answer = self.answers[len(self.requested_on)]
                self.requested_on.append(connection)
                for piece, pause in answer.pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(pause)
                if answer.server_closes:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()


async def exchange(sequence: list[Answer]) -> None:
    server = Server(sequence)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with asyncio.timeout(10):  # a hang guard; each request has its own 1 s timeouts
        async with listener, client(Pool(loopback), timeout=1.0) as http:
            for number, answer in enumerate(sequence):
                response = await http.post(f"http://127.0.0.1:{port}/wm", content=b"source=a&target=b")
                assert response.status_code == answer.status
                assert response.extensions["reason_phrase"] == answer.reason
                assert response.headers.get_list("x-answer") == [str(number)]
                assert response.content == answer.body
                assert "link" not in response.headers  # an interim answer's fields
                assert not any(name.decode() in response.headers for name in answer.trailers)
        await asyncio.gather(*server.tasks)  # the client closed every connection, so every handler ends
    # A new connection after, and only after, each answer that ended its own.
    expected = [sum(a.ends_connection for a in sequence[:i]) for i in range(len(sequence))]
    assert server.requested_on == expected
    assert server.connections == expected[-1] + 1


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4).flatmap(lambda n: st.tuples(*(answers(i) for i in range(n)))))
def test_each_request_reads_exactly_its_own_answer(loop: str, sequence: tuple[Answer, ...]) -> None:
    # A sync test that runs its own loop: hypothesis calls it once per example.
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(exchange(list(sequence)))
