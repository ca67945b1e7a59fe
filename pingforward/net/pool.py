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
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import zip_longest
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
# A reused connection that closes unanswered within its handshake time plus RETRY_MARGIN of the write,
# and at most RETRY_WINDOW, lost the keep-alive race: the request goes out again (Pool._raced).
RETRY_MARGIN: Final = 0.025
RETRY_WINDOW: Final = 0.25
RETRIED: Final = "pingforward.retried"  # in a response's extensions: the request was sent twice
SHARE: Final = 20  # requests in flight every destination may have, whatever the others hold (Slots)
ATTEMPTS: Final = 4  # addresses a new connection tries at most (attempts)


class _Connection(asyncio.Protocol):
    """One connection: asyncio feeds it bytes, httptools calls its `on_*` methods back."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set by connection_lost
        self.idle_since = 0.0
        self.destination = ""  # whose slot its requests take: that of the address it is connected to
        self.bulk = False  # the slot of the request in flight is from Slots' bulk
        self.handshake = 0.0  # seconds its connection took: about a round trip (TCP) or a few (TLS)
        self.written_at = 0.0  # loop time of the last request's write
        self.ended_at = math.inf  # loop time of the close or reset
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
        self.ended_at = asyncio.get_running_loop().time()
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
        self.written_at = asyncio.get_running_loop().time()
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
    """One destination's requests: those holding a slot, and those waiting for one, first come first served."""

    __slots__ = ("held", "waiting", "queued")

    def __init__(self) -> None:
        self.held = 0  # slots in use: its guaranteed share and the bulk together
        self.waiting: deque[asyncio.Future[bool]] = deque()
        self.queued = False  # in Slots._wanting: its first waiter waits for the bulk, not for its cap


class Slots:
    """Requests in flight: a guaranteed share for every destination, and a shared bulk that few cannot exhaust.

    Each destination may always have `share` requests in flight, whatever the others do. Beyond that it
    draws on a bulk of `bulk` slots shared by all, up to `per_destination` in all. With that cap a
    quarter of the bulk, a burst to one busy receiver still goes out at once, two or three receivers
    that hang leave most of the bulk to everyone else, and a bulk taken whole still leaves every other
    destination its share. A request that finds no slot waits in its destination's line (first come,
    first served) instead of failing, within its timeout.

    `in_use` and `waiting` count the requests holding a slot and waiting for one (for metrics);
    `bulk_in_use` those of the bulk.
    """

    def __init__(self, bulk: int, per_destination: int, share: int = SHARE) -> None:
        self._bulk = bulk
        self._cap = per_destination
        self._share = min(share, per_destination)
        self._lines: dict[str, _Line] = {}
        # Lines whose first waiter waits only for the bulk, in the order they began to wait for it.
        self._wanting: deque[tuple[str, _Line]] = deque()
        self.bulk_in_use = 0
        self.in_use = 0
        self.waiting = 0

    def _grant(self, line: _Line) -> bool | None:
        """Take a slot for `line` if one is free: False from its share, True from the bulk, None if none is."""
        if line.held < self._share:
            line.held += 1
            self.in_use += 1
            return False
        if line.held < self._cap and self.bulk_in_use < self._bulk:
            line.held += 1
            self.in_use += 1
            self.bulk_in_use += 1
            return True
        return None

    async def acquire(self, destination: str, timeout: float | None) -> bool:
        """Wait for a slot to `destination`; True if it is the bulk's. Give it back with `release`."""
        line = self._lines.get(destination)
        if line is None:
            line = self._lines[destination] = _Line()
        if not line.waiting:  # nobody ahead of it in this line
            granted = self._grant(line)
            if granted is not None:
                return granted
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        line.waiting.append(future)
        self.waiting += 1
        self._want(destination, line)
        taken = False
        try:
            async with asyncio.timeout(timeout):
                bulk = await future
            taken = True
            return bulk
        except TimeoutError:
            raise OutboundTimeout(f"no free connection to {destination} within {timeout:g} s", Failure.BUSY) from None
        finally:
            if not taken:
                if future.done() and not future.cancelled():  # granted just as it gave up
                    self.release(destination, future.result())
                else:
                    future.cancel()
                    self._forget(destination, line, future)

    def release(self, destination: str, bulk: bool) -> None:
        """Give back a slot that `acquire` gave; `bulk` is what it returned."""
        line = self._lines[destination]
        line.held -= 1
        self.in_use -= 1
        if bulk:
            self.bulk_in_use -= 1
            # The bulk slot goes to the line that has waited longest for the bulk (maybe this one).
            while self._wanting and self.bulk_in_use < self._bulk:
                name, wanting = self._wanting.popleft()
                wanting.queued = False
                if self._lines.get(name) is wanting:
                    self._serve(name, wanting)
        self._serve(destination, line)
        if not line.held and not line.waiting:
            del self._lines[destination]

    def _serve(self, destination: str, line: _Line) -> None:
        """Hand free slots to the line's waiters in turn, then queue it for the bulk if that is what it lacks."""
        waiting = line.waiting
        while waiting:
            if waiting[0].done():  # cancelled; its task has not yet taken it out
                waiting.popleft()
                self.waiting -= 1
                continue
            granted = self._grant(line)
            if granted is None:
                break
            self.waiting -= 1
            waiting.popleft().set_result(granted)
        self._want(destination, line)

    def _want(self, destination: str, line: _Line) -> None:
        if line.waiting and not line.queued and self._share <= line.held < self._cap:
            line.queued = True
            self._wanting.append((destination, line))

    def _forget(self, destination: str, line: _Line, future: asyncio.Future[bool]) -> None:
        try:
            line.waiting.remove(future)
        except ValueError:  # already taken out by _serve
            pass
        else:
            self.waiting -= 1
        if not line.held and not line.waiting and self._lines.get(destination) is line:
            del self._lines[destination]


def _same(address: str) -> str:
    return address


def attempts(addresses: Sequence[str], limit: int = ATTEMPTS) -> list[str]:
    """The addresses a new connection tries, in order: at most `limit`, the families taking turns.

    RFC 8305 §4: start with the first address's family and alternate, so a host whose IPv6 does not
    work reaches an IPv4 address on the second try; a name with thousands of addresses costs a handful
    of attempts, not thousands.
    """
    first = ":" in addresses[0]
    same = [address for address in addresses if (":" in address) == first][:limit]
    other = [address for address in addresses if (":" in address) != first][:limit]
    order = [address for pair in zip_longest(same, other) for address in pair if address is not None]
    return order[:limit]


class Pool(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 keep-alive connections, dialled to the addresses `resolve` returns.

    Args:
        resolve: (host, port) -> the addresses to try in order; it may raise to refuse the host.
        max_connections: the bulk of `Slots` shared by all destinations beyond their own share.
        max_per_destination: requests in flight to one destination (by default a quarter of the bulk);
            more wait up to the pool timeout.
        share: requests in flight that every destination may have, whatever the others hold.
        destination_of: the destination an address belongs to (by default the address itself).
        max_idle: kept-alive connections over all origins; at that number the one idle longest is closed.
        keepalive_expiry: seconds an idle connection is kept.
        ssl_context: for https; by default httpx's (certifi), made on the first https connection.
        retry_margin: seconds past a connection's handshake time within which a reused connection that
            closed unanswered is taken for the keep-alive race (see `_exchange`).
    """

    def __init__(
        self,
        resolve: Resolve,
        *,
        max_connections: int = 4000,
        max_per_destination: int | None = None,
        share: int = SHARE,
        destination_of: DestinationOf = _same,
        max_idle: int = 100,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        retry_margin: float = RETRY_MARGIN,
    ) -> None:
        self._resolve = resolve
        self.slots = Slots(max_connections, max_per_destination or max(1, max_connections // 4), share)
        self._destination_of = destination_of
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._retry_margin = retry_margin
        self._idle: dict[Origin, list[_Connection]] = {}  # per origin, the most recently used last
        self._lru: dict[_Connection, None] = {}  # every idle connection, the one idle longest first
        self._sweeper: asyncio.TimerHandle | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise OutboundError(f"cannot send to {url.scheme!r} URLs", Failure.URL)
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[url.scheme])
        timeout = request.extensions.get("timeout", {})
        message = _message(request, await request.aread())
        # Resolved (and checked) before a slot is taken: a slow lookup holds no slot. A kept-alive
        # connection goes to an address of the same name, so a cached lookup is all reusing one costs.
        connect = timeout.get("connect")
        if connect is None:
            addresses = await self._addresses(origin)
        else:
            try:
                async with asyncio.timeout(connect):
                    addresses = await self._addresses(origin)
            except TimeoutError:
                raise OutboundTimeout(f"no address for {origin[1]} within {connect:g} s", Failure.DNS) from None
        connection, retried = await self._exchange(origin, addresses, message, timeout, request.method == "HEAD")
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1", "reason_phrase": connection.reason}
        if retried:
            extensions[RETRIED] = True
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            # "body": a bound on each wait for the body alone, for callers whose head wait has none.
            stream=_Body(self, connection, timeout.get("body", timeout.get("read"))),
            extensions=extensions,
        )

    async def _addresses(self, origin: Origin) -> Sequence[str]:
        _, host, port = origin
        addresses = await self._resolve(host, port)  # raises ResolveError or Refused
        if not addresses:
            raise ResolveError(f"no address for {host}")
        return addresses

    async def _exchange(
        self, origin: Origin, addresses: Sequence[str], message: bytes, timeout: dict[str, float | None], head: bool
    ) -> tuple[_Connection, bool]:
        """Send on a kept-alive or a new connection; the slot held is always that of the address dialled.

        Returns the connection, its answer's head read, holding its slot; and whether the request was
        sent twice (the keep-alive race).
        """
        slots, wait = self.slots, timeout.get("pool")
        held: str | None = None  # the destination whose slot this request holds
        bulk = False
        done = retried = False
        try:
            idle = self._idle.get(origin)
            if idle:
                held = idle[-1].destination
                bulk = await slots.acquire(held, wait)
                connection = self._take_idle(origin, held)  # its stack may have changed while it waited
                if connection is not None:
                    connection.bulk = bulk
                    try:
                        await connection.send(message, timeout.get("read"), head)
                        done = True
                        return connection, False
                    except (ConnectFailed, BrokenAnswer):
                        if not self._raced(connection):
                            raise
                    retried = True
            connection = None
            _, host, port = origin
            left = timeout.get("connect")
            error: OSError = OSError(f"no address for {host}")
            for address in attempts(addresses):
                destination = self._destination_of(address)
                if destination != held:  # e.g. IPv6 refused, and IPv4 next: count the address dialled
                    if held is not None:
                        slots.release(held, bulk)
                        held = None
                    bulk = await slots.acquire(destination, wait)
                    held = destination
                try:
                    connection, left = await self._connect(origin, address, left, timeout.get("connect"))
                    break
                except OSError as exc:  # includes ssl.SSLError: a failed handshake or certificate
                    error = exc
            if connection is None:
                raise connect_failure(error, host, port) from error
            connection.destination, connection.bulk = destination, bulk
            await connection.send(message, timeout.get("read"), head)
            done = True
            return connection, retried
        finally:
            if not done and held is not None:
                slots.release(held, bulk)

    def _raced(self, connection: _Connection) -> bool:
        """Whether a kept-alive connection that failed under a request lost the keep-alive race.

        RFC 9112 §9.3.1: a server may close an idle connection just as a request is sent on it. Then
        not a byte of answer comes, and the close reaches us within about one round trip of the write,
        which the connection's own handshake measured. A receiver that closes later may have taken the
        request while working on it, and must not get it twice; one that answered in part has it.
        """
        after = connection.ended_at - connection.written_at
        return not connection.received and after <= min(RETRY_WINDOW, connection.handshake + self._retry_margin)

    async def _connect(
        self, origin: Origin, address: str, left: float | None, total: float | None
    ) -> tuple[_Connection, float | None]:
        """One connection attempt within what is `left` of the connect timeout; returns what is left after it."""
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        started = loop.time()
        try:
            async with asyncio.timeout(left):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin), address, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise OutboundTimeout(f"no connection to {host} port {port} within {total:g} s") from None
        took = loop.time() - started
        connection.handshake = took
        return connection, None if left is None else max(0.0, left - took)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _take_idle(self, origin: Origin, destination: str) -> _Connection | None:
        """The most recently used live idle connection of `origin` to `destination`, closing stale ones."""
        stack = self._idle.get(origin)
        now = self._loop_time()
        while stack:
            connection = stack[-1]
            if connection.usable and now - connection.idle_since < self._expiry:
                if connection.destination != destination:
                    return None
                stack.pop()
                del self._lru[connection]
                if not stack:
                    del self._idle[origin]
                return connection
            stack.pop()
            del self._lru[connection]
            connection.close()
        self._idle.pop(origin, None)
        return None

    def _release(self, connection: _Connection) -> bool:
        """Give the slot back and keep the connection for reuse if it can be; False if it cannot."""
        self.slots.release(connection.destination, connection.bulk)
        connection.busy = False
        reusable = connection.complete and connection.keep_alive and connection.usable
        if not reusable or self._max_idle <= 0:
            return False
        if len(self._lru) >= self._max_idle:
            # The one idle longest goes, never the one just handed back: a busy receiver keeps its
            # connections however many other origins have one idle.
            self._evict(next(iter(self._lru)))
        connection.take_body()  # what the reader left unread; this also resumes reading
        connection.idle_since = self._loop_time()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._lru[connection] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry, self._sweep)
        return True

    def _evict(self, connection: _Connection) -> None:
        del self._lru[connection]
        stack = self._idle[connection.origin]
        stack.remove(connection)
        if not stack:
            del self._idle[connection.origin]
        connection.close()

    def _sweep(self) -> None:
        """Close what has been idle for `keepalive_expiry`; one timer for the pool, not one per answer."""
        self._sweeper = None
        now = self._loop_time()
        for connection in [c for c in self._lru if not c.usable or now - c.idle_since >= self._expiry]:
            self._evict(connection)
        if self._lru:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry / 2, self._sweep)

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle = list(self._lru)
        self._idle.clear()
        self._lru.clear()
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
