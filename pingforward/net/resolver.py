"""Name lookups for outbound connections: concurrent, bounded in time, cached, and never starving each other.

`loop.getaddrinfo` runs the C library's blocking lookup in the default thread pool, which has a few
threads on a small machine and cannot cancel a lookup: a handful of names whose DNS server never
answers held every thread for 10 s and failed all other pings (issue 11). c-ares (through aiodns)
sends the queries itself on the event loop's sockets, so any number run at once, each bounded by its
own timeout, and it reads /etc/hosts and /etc/resolv.conf as the C library does.

Answers are cached by name, positive ones for their TTL (clamped) and failures briefly, and
concurrent lookups of one name share one query. A numeric host, in any spelling that inet_aton(3)
accepts, needs no lookup and is normalised (`0xb.22.33.44` is `11.22.33.44`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import aiodns
import aiodns.error

from pingforward.errors import ResolveError
from pingforward.net.policy import host_literal

# One lookup, all retries and servers included, takes at most this long: well under the 10 s a ping
# may take, so a silent name costs its own ping a known slice of its deadline and nothing else.
LOOKUP_TIMEOUT: Final = 3.0
# c-ares times each try by the server's recent latency (from 250 ms up), doubling it per retry, and
# asks again on the same question: a recursive resolver that is still looking up a cold name answers
# a later try once it has it. Enough tries to keep asking until LOOKUP_TIMEOUT, which is enforced
# here, around c-ares; TRY_TIMEOUT is the first try's, before any latency is known.
TRY_TIMEOUT: Final = 1.0
TRIES: Final = 4
CACHE_SIZE: Final = 1024  # names; a flood of random names only evicts, it cannot grow the cache
MIN_TTL: Final = 5.0  # a TTL of 0 would mean one query per ping to the busiest receiver
MAX_TTL: Final = 300.0
# c-ares keeps an answer cache of its own (on by default since 1.23, up to an hour per answer) with no
# bound on its size that pycares lets us set: a flood of random names grew it by about 2 MiB per 1,000.
# So each channel serves this many lookups, then a fresh one takes over and the old one is closed.
QUERIES_PER_CHANNEL: Final = 2000
# c-ares's answers that the name does not exist (NXDOMAIN) or has no address of the kinds asked for.
NO_SUCH_NAME: Final = frozenset({aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA})
NEGATIVE_TTL: Final = 10.0  # no such name, or a server failure (not a lookup that timed out)


@functools.lru_cache(maxsize=1024)
def _literal(host: str) -> tuple[str] | None:
    """The one address a numeric host names, normalised; None for a name. Pings repeat their hosts."""
    literal = host_literal(host)
    if literal is None:
        return None
    # An IPv4-mapped IPv6 address is that IPv4 address on the wire (RFC 4291 §2.5.5.2).
    if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped is not None:
        literal = literal.ipv4_mapped
    return (str(literal),)


class Resolver:
    """Resolve host names to addresses with c-ares; one per worker, made in its event loop."""

    def __init__(
        self,
        *,
        timeout: float = LOOKUP_TIMEOUT,
        cache_size: int = CACHE_SIZE,
        nameservers: Sequence[str] = (),
        queries_per_channel: int = QUERIES_PER_CHANNEL,
    ) -> None:
        self._timeout = timeout
        self._queries_per_channel = queries_per_channel
        self._used = 0  # lookups on the current channel
        self._nameservers = nameservers  # "ip" or "ip:port"; none: those of /etc/resolv.conf
        self._cache_size = cache_size
        # name -> (expiry on the loop's clock, addresses or the error to raise again)
        self._cache: OrderedDict[str, tuple[float, tuple[str, ...] | ResolveError]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[tuple[str, ...]]] = {}
        self._queries: set[asyncio.Task[None]] = set()
        self._dns: aiodns.DNSResolver | None = None

    async def resolve(self, host: str) -> tuple[str, ...]:
        """The addresses of `host` in the resolver's order, without duplicates; raise `ResolveError`."""
        literal = _literal(host)
        if literal is not None:
            return literal
        name = host.rstrip(".").lower()
        loop = asyncio.get_running_loop()
        cached = self._cache.get(name)
        if cached is not None:
            expiry, answer = cached
            if expiry > loop.time():
                self._cache.move_to_end(name)
                if isinstance(answer, ResolveError):
                    raise answer
                return answer
            del self._cache[name]
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = loop.create_future()
            # The query runs as its own task, so a ping that gives up waiting cancels only its wait.
            query = loop.create_task(self._query(name, pending))
            self._queries.add(query)
            query.add_done_callback(self._queries.discard)
        return await asyncio.shield(pending)

    async def _query(self, name: str, future: asyncio.Future[tuple[str, ...]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._channel().getaddrinfo(name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
        except TimeoutError:
            # Not cached: c-ares may yet get the answer, and keeps it, so the next ping that names
            # it asks again (a name behind slow servers then works a moment later, not 10 s later).
            future.set_exception(ResolveError(f"no DNS answer for {name} within {self._timeout:g} s"))
            future.exception()
        except aiodns.error.DNSError as exc:
            reason = exc.args[1] if len(exc.args) > 1 else str(exc)
            gone = bool(exc.args) and exc.args[0] in NO_SUCH_NAME
            self._fail(name, future, ResolveError(f"cannot resolve {name}: {reason}", no_such_name=gone))
        except (UnicodeError, ValueError) as exc:  # a name c-ares cannot even encode
            self._fail(name, future, ResolveError(f"cannot resolve {name}: {exc}"))
        else:
            addresses = tuple(dict.fromkeys(node.addr[0].decode("ascii") for node in result.nodes))
            if addresses:
                ttl = min(node.ttl for node in result.nodes)
                self._store(name, min(max(ttl, MIN_TTL), MAX_TTL), addresses)
                future.set_result(addresses)
            else:
                self._fail(name, future, ResolveError(f"no address for {name}", no_such_name=True))
        finally:
            del self._pending[name]
            if not future.done():  # the query was cancelled: at shutdown
                future.cancel()

    def _fail(self, name: str, future: asyncio.Future[tuple[str, ...]], error: ResolveError) -> None:
        self._store(name, NEGATIVE_TTL, error)
        future.set_exception(error)
        future.exception()  # retrieved: every ping waiting for it may have given up already

    def _store(self, name: str, ttl: float, answer: tuple[str, ...] | ResolveError) -> None:
        self._cache[name] = (asyncio.get_running_loop().time() + ttl, answer)
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _channel(self) -> aiodns.DNSResolver:
        if self._dns is not None and self._used >= self._queries_per_channel:
            retiring = asyncio.get_running_loop().create_task(self._retire(self._dns))
            self._queries.add(retiring)
            retiring.add_done_callback(self._queries.discard)
            self._dns = None
        if self._dns is None:
            self._dns = aiodns.DNSResolver(
                self._nameservers or None, loop=asyncio.get_running_loop(), timeout=TRY_TIMEOUT, tries=TRIES
            )
            self._used = 0
        self._used += 1
        return self._dns

    async def _retire(self, channel: aiodns.DNSResolver) -> None:
        """Close a channel once every lookup on it is past its bound (and so answered or given up)."""
        try:
            await asyncio.sleep(self._timeout + 1)
        finally:
            await channel.close()

    async def aclose(self) -> None:
        for query in list(self._queries):
            query.cancel()
        if self._dns is not None:
            await self._dns.close()
            self._dns = None
