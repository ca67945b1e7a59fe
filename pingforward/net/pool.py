"""A lean HTTP/1.1 connection pool under httpx: the transport of the one outbound AsyncClient.

httpcore's pool walks every open connection on every request (encode/httpx#3215), which made it the
largest cost of a forwarded ping (bench/README.md). This pool keeps the idle connections of each
origin on a stack, parses answers with httptools (uvicorn's parser), and dials only the addresses
that its `resolve` callback returns; that callback is where the address policy checks them.
HTTP/1.1 only (RFC 9112), one request at a time per connection, no proxies.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, NoReturn

import httptools
import httpx

from pingforward.errors import BrokenAnswer, ConnectFailed, Failure, OutboundError, OutboundTimeout, ResolveError

Origin = tuple[str, str, int]  # scheme, host, port: TLS verified for a host is only reused for that host
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]  # (host, port) -> addresses to try, in order
# Which destination a request's slot counts against: where its connection goes, not how the URL spells it.
DestinationOf = Callable[[str], str]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
MAX_HEAD: Final = 64 * 1024  # status line and header fields of one answer
HIGH_WATER: Final = 256 * 1024  # unread body bytes held before the socket stops being read
RETRY_WINDOW: Final = 0.5  # seconds after a request's write within which a dropped reused connection is retried


class _Connection(asyncio.Protocol):
    """One connection: asyncio feeds it bytes, httptools calls its `on_*` methods back."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set by connection_lost
        self.idle_since = 0.0
        self.destination = ""  # whose slot the request in flight holds
        self.busy = self.paused = False
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_size = self.field_size = 0
        self.head_done = self.complete = self.keep_alive = self.received = False
        self.head_only = False
        self.error: OutboundError | None = None

    @property
    def where(self) -> str:
        """The peer as log lines and fault strings name it: host and port."""
        return f"{self.origin[1]} port {self.origin[2]}"

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.error is None

    def close(self) -> None:
        # abort(), not close(): a connection is only closed when it is done with or spoilt, so unsent
        # bytes are worthless, and asyncio's TLS close() waits up to 30 s for the peer's close_notify
        # (ssl_shutdown_timeout), which a peer that stopped reading never sends. httpcore sends none either.
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self) -> None:
        """Close, and return once asyncio has closed the socket (a loop turn later), as anyio's streams do."""
        self.close()
        await asyncio.shield(self.lost)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes nobody asked for (RFC 9112 §9.3): the connection is out of step, never reuse it.
            self._fail(BrokenAnswer(f"unexpected data from {self.where}"))
            return
        self.received = True
        if not self.head_done:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(BrokenAnswer(f"malformed answer from {self.where}: {exc}"))
            return
        # While the head is incomplete every byte was head; once it is, its fields tell its size.
        if (self.field_size if self.head_done else self.head_size) > MAX_HEAD:
            self._fail(BrokenAnswer(f"answer head from {self.where} longer than {MAX_HEAD} bytes"))
            return
        if self.buffered > HIGH_WATER and self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if self.busy and not self.complete and self.error is None:
            if self.head_done and not self._framed() and exc is None:
                # RFC 9112 §6.3 ¶8: without Content-Length or chunked coding, the close ends the body
                # (a close, not a reset: §8, an answer cut by an error is incomplete).
                self.complete = True
            elif exc is not None:
                self.error = ConnectFailed(
                    f"connection to {self.where} cut: {exc or type(exc).__name__}", Failure.RESET
                )
            else:
                self.error = BrokenAnswer(f"{self.where} closed the connection without a complete answer")
        self._wake()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request
            self._stop()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # RFC 9110 §6.5.1: trailer fields are not merged into the header section
            self.headers.append((name, value))
        self.field_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # RFC 9110 §15.2: interim answers precede the final one
            self.headers, self.reason = [], b""
            return
        self.status, self.head_done = status, True
        if self.head_only:  # RFC 9110 §9.3.2: an answer to HEAD has no content, whatever it says
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:  # sent after the head of an answer to HEAD
            self._stop()
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.head_only:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    # --- used by Pool and _Body ---

    def _framed(self) -> bool:
        return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def _fail(self, error: OutboundError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _stop(self) -> NoReturn:
        """Fail the connection and stop httptools mid-feed, before what follows reaches this answer."""
        self._fail(BrokenAnswer(f"unexpected data from {self.where}"))
        raise httptools.HttpParserError("unexpected data")  # data_received catches it

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until bytes, the end of the answer, or an error arrive; `OutboundTimeout` after `timeout`."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._time_out, timeout)
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def _time_out(self, timeout: float) -> None:
        self._fail(OutboundTimeout(f"no answer from {self.where} within {timeout:g} s"))

    async def send(self, message: bytes, timeout: float | None, head_only: bool) -> None:
        """Send one request and wait for the head of its answer."""
        assert self.transport is not None and not self.busy
        self.reset()
        self.busy, self.head_only = True, head_only
        self.transport.write(message)
        try:
            while not self.head_done and self.error is None:
                await self.wait(timeout)
        finally:
            if not self.head_done:
                self.close()
        if not self.head_done:
            assert self.error is not None
            raise self.error

    def take_body(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return data


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: Pool, connection: _Connection, timeout: float | None) -> None:
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.chunks:
                yield connection.take_body()
            elif connection.complete:
                return
            elif connection.error is not None:
                raise connection.error
            else:
                await connection.wait(self._timeout)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._pool._release(self._connection):
                await self._connection.aclose()


class _Line:
    """The requests in flight to one destination, and those waiting for their turn."""

    __slots__ = ("slots", "users")

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.users = 0  # holding or waiting: the line is dropped when none are left


class Slots:
    """Requests in flight: at most `total`, and at most `per_destination` to one destination.

    A request that finds its destination or the pool full waits in line (first come, first served)
    instead of failing: a burst to one busy receiver is delivered in turn, while a receiver that hangs
    holds at most its own share, and requests to every other destination go ahead of its queue.
    """

    def __init__(self, total: int, per_destination: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_destination = per_destination
        self._lines: dict[str, _Line] = {}

    async def acquire(self, destination: str, timeout: float | None) -> None:
        line = self._lines.get(destination)
        if line is None:
            line = self._lines[destination] = _Line(self._per_destination)
        line.users += 1
        acquired = False
        try:
            if line.slots.locked() or self._total.locked():
                try:
                    async with asyncio.timeout(timeout):
                        await line.slots.acquire()
                        try:
                            await self._total.acquire()
                        except asyncio.CancelledError:
                            line.slots.release()
                            raise
                except TimeoutError:
                    raise OutboundTimeout(
                        f"no free connection to {destination} within {timeout:g} s", Failure.BUSY
                    ) from None
            else:  # neither waits: no timer
                await line.slots.acquire()
                await self._total.acquire()
            acquired = True
        finally:
            if not acquired:
                self._leave(destination, line)

    def release(self, destination: str) -> None:
        self._total.release()
        line = self._lines[destination]
        line.slots.release()
        self._leave(destination, line)

    def _leave(self, destination: str, line: _Line) -> None:
        line.users -= 1
        if not line.users:
            del self._lines[destination]


def _same(address: str) -> str:
    return address


class Pool(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 keep-alive connections, dialled to the addresses `resolve` returns.

    Args:
        resolve: (host, port) -> the addresses to try in order; it may raise to refuse the host.
        max_connections: requests in flight at once; more wait up to the pool timeout.
        max_per_destination: requests in flight to one destination; more wait up to the pool timeout.
        destination_of: the destination an address belongs to (by default the address itself).
        max_idle: kept-alive connections over all origins; more are closed after their answer.
        keepalive_expiry: seconds an idle connection is kept.
        ssl_context: for https; by default httpx's (certifi), made on the first https connection.
    """

    def __init__(
        self,
        resolve: Resolve,
        *,
        max_connections: int = 1000,
        max_per_destination: int | None = None,
        destination_of: DestinationOf = _same,
        max_idle: int = 100,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolve = resolve
        self.slots = Slots(max_connections, max_per_destination or max_connections)
        self._destination_of = destination_of
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._sweeper: asyncio.TimerHandle | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise OutboundError(f"cannot send to {url.scheme!r} URLs", Failure.URL)
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[url.scheme])
        timeout = request.extensions.get("timeout", {})
        message = _message(request, await request.aread())
        # Resolved (and checked) before a slot is taken: the slot counts against where the connection
        # goes, and a slow lookup holds no slot. A kept-alive connection goes to an address of the same
        # name, so a cached lookup is all that reusing one costs.
        connect = timeout.get("connect")
        if connect is None:
            addresses = await self._addresses(origin)
        else:
            try:
                async with asyncio.timeout(connect):
                    addresses = await self._addresses(origin)
            except TimeoutError:
                raise OutboundTimeout(f"no address for {origin[1]} within {connect:g} s", Failure.DNS) from None
        destination = self._destination_of(addresses[0])
        await self.slots.acquire(destination, timeout.get("pool"))
        connection = None
        try:
            connection = await self._exchange(origin, addresses, message, timeout, request.method)
            connection.destination = destination
        finally:
            if connection is None:
                self.slots.release(destination)
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            # "body": a bound on each wait for the body alone, for callers whose head wait has none.
            stream=_Body(self, connection, timeout.get("body", timeout.get("read"))),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def _addresses(self, origin: Origin) -> Sequence[str]:
        _, host, port = origin
        addresses = await self._resolve(host, port)  # raises ResolveError or Refused
        if not addresses:
            raise ResolveError(f"no address for {host}")
        return addresses

    async def _exchange(
        self, origin: Origin, addresses: Sequence[str], message: bytes, timeout: dict[str, float | None], method: str
    ) -> _Connection:
        connection = self._take_idle(origin)
        if connection is not None:
            sent = self._loop_time()
            try:
                await connection.send(message, timeout.get("read"), method == "HEAD")
                return connection
            except (ConnectFailed, BrokenAnswer):
                # Only a failure right after the write is that race; a receiver that closed after
                # working on the request for a while may have taken it, and gets it once only.
                if self._loop_time() - sent > RETRY_WINDOW:
                    raise
                # The server closed a kept-alive connection as we reused it (RFC 9112 §9.3.1 calls this
                # race out). Not a byte of an answer came, so the request goes out once more, on a new
                # connection; for a POST too: the proxy's and the sender's are notifications that a
                # receiver must take again as the same one (Webmention §3.2.1: a repeat updates, and
                # Pingback fault 48 answers a ping already registered).
                if connection.received:
                    raise
        connection = await self._connect(origin, addresses, timeout.get("connect"))
        await connection.send(message, timeout.get("read"), method == "HEAD")
        return connection

    async def _connect(self, origin: Origin, addresses: Sequence[str], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                error: OSError = OSError(f"no address for {host}")
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: _Connection(origin), address, port, ssl=tls, server_hostname=host if tls else None
                        )
                        return connection
                    except OSError as exc:  # includes ssl.SSLError: a failed handshake or certificate
                        error = exc
                raise error
        except TimeoutError:
            raise OutboundTimeout(f"no connection to {host} port {port} within {timeout:g} s") from None
        except OSError as exc:
            raise connect_failure(exc, host, port) from exc

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _take_idle(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            self._idle_count -= 1
            if connection.usable and self._loop_time() - connection.idle_since < self._expiry:
                return connection
            connection.close()
        self._idle.pop(origin, None)
        return None

    def _release(self, connection: _Connection) -> bool:
        """Give the slot back and keep the connection for reuse if it can be; False if it cannot."""
        self.slots.release(connection.destination)
        connection.busy = False
        reusable = connection.complete and connection.keep_alive and connection.usable
        if not reusable or self._idle_count >= self._max_idle:
            return False
        connection.take_body()  # what the reader left unread; this also resumes reading
        connection.idle_since = self._loop_time()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry, self._sweep)
        return True

    def _sweep(self) -> None:
        """Close what has been idle for `keepalive_expiry`; one timer for the pool, not one per answer."""
        self._sweeper = None
        now = self._loop_time()
        for origin, stack in list(self._idle.items()):
            keep = [c for c in stack if c.usable and now - c.idle_since < self._expiry]
            for connection in stack:
                if connection not in keep:
                    connection.close()
            self._idle_count -= len(stack) - len(keep)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry / 2, self._sweep)

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle = [connection for stack in self._idle.values() for connection in stack]
        self._idle.clear()
        self._idle_count = 0
        await asyncio.gather(*(connection.aclose() for connection in idle))


def connect_failure(exc: OSError, host: str, port: int) -> ConnectFailed:
    """A failed connection attempt, in words that say what kind of failure it was."""
    where = f"{host} port {port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectFailed(f"TLS certificate of {host} not valid: {exc.verify_message}", Failure.TLS)
    if isinstance(exc, ssl.SSLError):
        return ConnectFailed(f"TLS handshake with {where} failed: {exc.reason or exc}", Failure.TLS)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(f"connection to {where} refused", Failure.REFUSED)
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return ConnectFailed(f"connection to {where} reset", Failure.RESET)
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ConnectFailed(f"no route to {where}", Failure.UNREACHABLE)
    return ConnectFailed(f"could not connect to {where}: {exc.strerror or exc}", Failure.REFUSED)


def _message(request: httpx.Request, body: bytes) -> bytes:
    """The request as bytes (RFC 9112 §3); a streamed body is sent as one chunk (§7.1)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        lines.append(b"%s: %s" % (name, value))
        chunked = chunked or (name.lower() == b"transfer-encoding" and value.lower() == b"chunked")
    head = b"\r\n".join(lines)
    # RFC 9110 §5.5: a CR, LF or NUL inside a field value would split or end the head.
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1 or b"\0" in head:
        raise OutboundError("a header field contains CR, LF or NUL", Failure.URL)
    if chunked:
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + b"\r\n\r\n" + body
