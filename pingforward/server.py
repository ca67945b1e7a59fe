"""uvicorn's httptools protocol with every client bounded: head size, field count, time, unread bodies,
unread answers, pipelined depth; and every request refused here counted and logged.

httptools buffers a request line or header section until it ends, without a bound, and rebuilds a
header value on every chunk; uvicorn has no setting for it with httptools
(https://github.com/Kludex/uvicorn/issues/1234). The Procfile names this class with
`--http pingforward.server:HttpToolsProtocol`.

RFC 9110 §15.5.15 (414) and RFC 6585 §5 (431): a request line or header section over the bound is
answered and the connection closed; RFC 9112 §9.5: a server may close a connection whose request
does not arrive in time. One timer per worker walks the open connections once a second, so a
deadline costs no timer of its own. A refusal is answered after any answers still owed on the
connection (RFC 9112 §9.3.2: responses go out in the order of the requests), and the connection is
closed the lingering way (https://httpd.apache.org/docs/2.4/misc/perf-tuning.html#lingering), so
that the client's unread bytes do not make the kernel reset the connection before it reads the answer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import struct
from typing import Any, ClassVar, Final

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

logger = logging.getLogger(__name__)

MAX_LINE: Final = 8 * 1024  # the request line, and each header field line (RFC 9112 §3 asks for at least 8,000)
MAX_HEAD: Final = 64 * 1024  # the request line and every header field line together
MAX_FIELDS: Final = 100  # header fields in one head: Apache's LimitRequestFields
MAX_PIPELINE: Final = 32  # requests waiting behind the one being answered on a connection
MAX_LINGER: Final = 1024 * 1024  # bytes read and dropped while a closing connection lingers
HEAD_SECONDS: Final = 5.0  # from the connection or the request's first byte to the end of its head
SWEEP_SECONDS: Final = 1.0  # how often the open connections are looked at; a deadline may get this much longer
UNREAD_SECONDS: Final = 10.0  # how long answers may sit unread before the connection is dropped
LINGER_SECONDS: Final = 2.0  # how long a closing connection is read (and dropped) after its answer
LOG_SECONDS: Final = 60.0  # one refusal of a kind is logged at once; later ones in this window are summed

refusals: collections.Counter[str] = collections.Counter()
"""Requests refused before the app saw them, by reason ("414", "431-fields", "408", "400-malformed", ...)."""


def _answer(status: bytes) -> bytes:
    body = status.split(b" ", 1)[1]
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (
            status,
            len(body),
            body,
        )
    )


BAD_REQUEST: Final = _answer(b"400 Bad Request")
URI_TOO_LONG: Final = _answer(b"414 URI Too Long")
HEADERS_TOO_LARGE: Final = _answer(b"431 Request Header Fields Too Large")
REQUEST_TIMEOUT: Final = _answer(b"408 Request Timeout")


class _Stop(Exception):
    """Raised in a parser callback after a refusal: httptools stops parsing the chunk at once."""


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads that are too large or too slow and clients that
    do not read. The time bounds are class attributes, so that a subclass can shorten them."""

    head_seconds: ClassVar[float] = HEAD_SECONDS
    sweep_seconds: ClassVar[float] = SWEEP_SECONDS
    unread_seconds: ClassVar[float] = UNREAD_SECONDS
    linger_seconds: ClassVar[float] = LINGER_SECONDS
    log_seconds: ClassVar[float] = LOG_SECONDS

    _sweepers: ClassVar[dict[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the bytes arriving belong to a request line or header section
        self._head_size = 0
        self._line_ended = False  # the request line has ended
        self._head_since: float | None = None  # when the head began; None while none is under way
        self._completed = False  # a request ended in the chunk being parsed
        self._begun = False  # a request has begun and not ended
        self._counted = False  # every byte of the head under way is counted in _head_size
        self._stopped = False  # refused: nothing more is parsed on this connection
        self._deferred: bytes | None = None  # a refusal's answer, sent once the answers owed are out
        self._linger_until: float | None = None  # closing: read and drop until then
        self._lingered = 0
        self._drain_until: float | None = None  # answered before its body ended: the body is dropped till then
        self._drained = 0
        self._unread_since: float | None = None  # when the transport's write buffer went over its high mark

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()  # a connection that sends nothing is a head that never ends
        if self.loop not in self._sweepers:
            self._sweepers[self.loop] = self.loop.call_later(
                self.sweep_seconds, self._sweep, self.loop, self.connections
            )

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with its 400 counted and closed the lingering way; the head bounds.
        if self._stopped:
            self._drop(data)
            return
        self._unset_keepalive_if_required()
        if self._drain_until is not None:
            self._drained += len(data)
            if self._drained > MAX_LINGER:
                self._count("unread-body", f"over {MAX_LINGER} bytes of a body no route reads")
                self._close(b"")
                return
        if self._in_head:
            if self._head_since is None:  # the first byte of the next request on a kept-alive connection
                self._head_since = self.loop.time()
            self._head_size += len(data)
            self._line_ended = self._line_ended or b"\n" in data
        self._completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if not self._stopped:  # else a callback refused, and raised to stop the parser
                self._refuse(BAD_REQUEST, "400-malformed", str(exc) or type(exc).__name__)
            return
        if not self._in_head or self._stopped:
            return
        if self._completed and self._begun:
            # The next head began inside this chunk, after a request ended: its bytes here are not
            # counted, and whether its line ended is not known. Both bounds stay bounded by a chunk.
            self._line_ended = True
        if not self._line_ended and self._head_size > MAX_LINE:
            self._refuse(URI_TOO_LONG, "414", f"request line over {MAX_LINE} bytes")
        elif self._head_size > MAX_HEAD:
            self._refuse(HEADERS_TOO_LARGE, "431-head", f"head over {MAX_HEAD} bytes")

    # Parser callbacks. After a refusal they raise `_Stop`, and httptools parses no further.

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINE:
            # The client keeps sending requests without reading the answers: answer those queued, then close.
            self._refuse(b"", "pipeline", f"over {MAX_PIPELINE} requests pipelined")
            raise _Stop
        super().on_message_begin()
        # A head that begins with a chunk has all its bytes counted in `_head_size`; one that begins inside
        # the chunk that ended the last request has none of that chunk's counted.
        self._in_head, self._begun, self._counted = True, True, self._head_size > 0
        if self._head_since is None:  # a pipelined head that began in the chunk that ended the last request
            self._head_since = self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header, inlined (one call less per field), with the field count bounded.
        headers = self.headers
        if len(headers) >= MAX_FIELDS:
            self._refuse(HEADERS_TOO_LARGE, "431-fields", f"over {MAX_FIELDS} header fields")
            raise _Stop
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head, self._head_since = False, None
        if not (self._counted and self._head_size <= MAX_LINE):  # else no part of the head can be over a bound
            self._check_sizes()
        super().on_headers_complete()

    def _check_sizes(self) -> None:
        """The whole head arrived in the chunk that ended it: its exact sizes decide. The request line is
        the method, the target and the version, each with its separator (RFC 9112 §3)."""
        method, version = self.parser.get_method(), self.parser.get_http_version()
        line = len(method) + len(self.url) + len(version) + 9  # " ", " HTTP/" and CRLF
        if line > MAX_LINE:
            # llhttp takes only known methods and versions: the target is what is long.
            self._refuse(URI_TOO_LONG, "414", f"request line of {line} bytes")
            raise _Stop
        size = line
        for name, value in self.headers:
            field = len(name) + len(value) + 4  # ": " and CRLF
            size += field
            if field > MAX_LINE or size > MAX_HEAD:
                self._refuse(HEADERS_TOO_LARGE, "431-line" if field > MAX_LINE else "431-head", "header too large")
                raise _Stop

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_size, self._line_ended, self._completed = True, 0, False, True
        self._begun, self._drain_until = False, None

    # The answers: flow control, and what happens once every answer owed is out.

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, or arms the keep-alive timer
        if self.transport.is_closing():
            return
        if self.flow.write_paused:  # uvicorn resumed reading; the client is not reading its answers
            self.flow.pause_reading()
        if self._owed():
            return
        if self._deferred is not None:
            answer, self._deferred = self._deferred, None
            self._close(answer)
        elif not self._in_head and not self._stopped:
            # Answered before its body ended (no route reads it, or it had not arrived yet): read on and
            # drop it, keeping the connection (https://www.rfc-editor.org/rfc/rfc9110#section-10.1.1),
            # within a bound of time and bytes, or it would hold the connection while the client drips it.
            self._drain_until, self._drained = self.loop.time() + self.head_seconds, 0

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._unread_since is None:
            self._unread_since = self.loop.time()
        self.flow.pause_reading()  # no new requests while the client does not read the answers

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unread_since = None
        body = 0 if self.cycle is None else len(self.cycle.body)
        # What else keeps reading paused in uvicorn: requests queued, or a body the app has not read.
        if not self.pipeline and not self._stopped and body <= HIGH_WATER_LIMIT:
            self.flow.resume_reading()

    # Refusals and closing.

    def _owed(self) -> bool:
        """Whether an answer is still owed on this connection (the newest request's, or a queued one's)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self, answer: bytes, reason: str, detail: str) -> None:
        """Count and log the refusal; answer now, or after the answers owed (reading stops till then)."""
        self._stopped, self._in_head, self._head_since = True, False, None
        self._count(reason, detail)
        if self._owed():
            self._deferred = answer
            self.flow.pause_reading()
        else:
            self._close(answer)

    def _close(self, answer: bytes) -> None:
        """Send `answer`, end our side, and read and drop what the client still sends for a while: a
        plain close with its bytes unread would make the kernel reset the connection, and the reset
        can destroy the answer before the client reads it."""
        self._unset_keepalive_if_required()
        self._stopped = True
        if answer:
            self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_until = self.loop.time() + self.linger_seconds
        self.flow.resume_reading()

    def _drop(self, data: bytes) -> None:
        self._lingered += len(data)
        if self._lingered > MAX_LINGER:
            self._reset()

    def _reset(self) -> None:
        """End the connection at once, answers unsent included. A plain close would leave the kernel holding
        them for a client that does not read, retrying for minutes; a zero linger time resets instead."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _count(self, reason: str, detail: str) -> None:
        refusals[reason] += 1
        _log.refused(self.loop.time(), self.log_seconds, reason, self._client(), detail)

    def _client(self) -> str:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        for name, value in self.headers or ():
            if name == b"x-forwarded-for":  # the router's hop; which entry to trust is the app's concern
                return f"{client} x-forwarded-for={json.dumps(value[-200:].decode('latin-1'))}"
        return client

    def _expire(self, now: float) -> None:
        """The deadlines of this connection: a head too slow, answers unread, a linger over."""
        if self.transport.is_closing():
            return
        if self._linger_until is not None:
            if now >= self._linger_until:
                self._reset()
        elif self._drain_until is not None and now > self._drain_until:
            self._count("unread-body", f"a body no route reads not ended {self.head_seconds:g} s after the answer")
            self._close(b"")
        elif self._head_since is not None and now - self._head_since > self.head_seconds:
            if self._head_size or self._begun:
                self._refuse(REQUEST_TIMEOUT, "408", f"head not complete after {self.head_seconds:g} s")
            else:  # nothing arrived: there is no request to answer, only a connection to end
                self._stopped, self._head_since = True, None
                self.transport.close()
        elif self._unread_since is not None and now - self._unread_since > self.unread_seconds:
            self._count("unread-output", f"answers unread for {self.unread_seconds:g} s")
            self._reset()  # its buffered answers would never be read: drop them with it

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Apply every connection's deadlines; one timer per loop, rescheduled whatever happens here."""
        try:
            now = loop.time()
            _log.flush(now, cls.log_seconds)
            for protocol in list(connections):
                if isinstance(protocol, HttpToolsProtocol):
                    protocol._expire(now)
        finally:
            if connections or _log.open():  # a window still open gets its sum written
                cls._sweepers[loop] = loop.call_later(cls.sweep_seconds, cls._sweep, loop, connections)
            else:
                del cls._sweepers[loop]


class _RefusalLog:
    """The first refusal of each reason is logged at once; the rest within a window become one line."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # reason -> (window start, refusals since the first)

    def refused(self, now: float, seconds: float, reason: str, client: str, detail: str) -> None:
        window = self._windows.get(reason)
        if window is not None and now - window[0] < seconds:
            self._windows[reason] = (window[0], window[1] + 1)
            return
        self._summarize(reason, now)
        self._windows[reason] = (now, 0)
        logger.warning("refused reason=%s client=%s detail=%s", reason, client, json.dumps(detail))

    def flush(self, now: float, seconds: float) -> None:
        """Write the sums of the windows that have ended."""
        for reason, (start, _) in list(self._windows.items()):
            if now - start >= seconds:
                self._summarize(reason, now)

    def open(self) -> bool:
        return bool(self._windows)

    def _summarize(self, reason: str, now: float) -> None:
        start, more = self._windows.pop(reason, (now, 0))
        if more:
            logger.warning("refused reason=%s count=%d seconds=%.0f", reason, more, now - start)


_log = _RefusalLog()
