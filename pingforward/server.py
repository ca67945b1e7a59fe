"""uvicorn's httptools protocol with bounds on request heads: size, line length and time.

httptools buffers a request line or header section until it ends, without a bound, and rebuilds a
header value on every chunk: a few connections sending endless header lines took a worker to 1.2 GB,
and one 80 MB value cost 5.6 s of CPU (issue 11). uvicorn has no setting for it with httptools
(Kludex/uvicorn#1234). The Procfile names this class with `--http pingforward.server:HttpToolsProtocol`.

RFC 9110 §15.5.15 (414) and RFC 6585 §5 (431): a request line or header section over the bound is
answered and the connection closed; RFC 9112 §9.5: a server may close a connection whose request
does not arrive in time. One timer per worker walks the open connections once a second, so a head's
deadline costs no timer of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

MAX_LINE: Final = 8 * 1024  # the request line, and each header field line
MAX_HEAD: Final = 64 * 1024  # the request line and every header field line together
HEAD_SECONDS: Final = 5.0  # from the connection or the request's first byte to the end of its head
SWEEP_SECONDS: Final = 1.0  # how often the open connections are looked at; a head may get this much longer


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


URI_TOO_LONG: Final = _answer(b"414 URI Too Long")
HEADERS_TOO_LARGE: Final = _answer(b"431 Request Header Fields Too Large")
REQUEST_TIMEOUT: Final = _answer(b"408 Request Timeout")


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads that are too large or too slow."""

    _sweepers: ClassVar[dict[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the bytes arriving belong to a request line or header section
        self._head_size = 0
        self._line_ended = False  # the request line has ended
        self._head_since: float | None = None  # when the head began; None while none is under way
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()  # a connection that sends nothing is a head that never ends
        if self.loop not in self._sweepers:
            self._sweepers[self.loop] = self.loop.call_later(SWEEP_SECONDS, self._sweep, self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_since is None:  # the first byte of the next request on a kept-alive connection
            self._head_since = self.loop.time()
        self._head_size += len(data)
        self._line_ended = self._line_ended or b"\n" in data
        super().data_received(data)
        # What is still in the head after this chunk is what httptools holds: bound it as it grows.
        if self._in_head and not self.transport.is_closing():
            if not self._line_ended and self._head_size > MAX_LINE:
                self._refuse(URI_TOO_LONG)
            elif self._head_size > MAX_HEAD:
                self._refuse(HEADERS_TOO_LARGE)

    # After a refusal httptools still calls back for the rest of the chunk it was fed: ignored.

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()
            self._in_head = True

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._head_since = False, None
        # The whole head arrived in the chunk that ended it: its exact sizes decide.
        if len(self.url) > MAX_LINE:
            self._refuse(URI_TOO_LONG)
            return
        size = len(self.url)
        for name, value in self.headers:
            line = len(name) + len(value) + 4  # ": " and CRLF
            size += line
            if line > MAX_LINE or size > MAX_HEAD:
                self._refuse(HEADERS_TOO_LARGE)
                return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head, self._head_size, self._line_ended = True, 0, False

    def _refuse(self, answer: bytes) -> None:
        self._in_head, self._head_since, self._refused = False, None, True
        self.transport.write(answer)
        self.transport.close()
        self.parser = _Stopped()  # type: ignore[assignment]  # nothing more is parsed on this connection

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Close the connections whose head has taken longer than HEAD_SECONDS; one timer per loop."""
        now = loop.time()
        for protocol in list(connections):
            since = getattr(protocol, "_head_since", None)
            if since is not None and now - since > HEAD_SECONDS and not protocol.transport.is_closing():
                # Nothing of it arrived: there is no request to answer, only a connection to end.
                answer = REQUEST_TIMEOUT if protocol._head_size else b""
                protocol._refuse(answer)
        if connections:
            cls._sweepers[loop] = loop.call_later(SWEEP_SECONDS, cls._sweep, loop, connections)
        else:
            del cls._sweepers[loop]


class _Stopped:
    """A parser for a refused connection: whatever else arrives is dropped."""

    def feed_data(self, data: bytes) -> None:
        pass
