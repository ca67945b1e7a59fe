"""Name lookups for outbound connections: concurrent, bounded in time, cached, and never starving each other.

`loop.getaddrinfo` runs the C library's blocking lookup in the default thread pool, which has a few
threads on a small machine and cannot cancel a lookup: a handful of names whose DNS server never
answers held every thread and failed all other pings (bench/README.md). c-ares (through aiodns)
sends the queries itself on the event loop's sockets, so any number run at once, each bounded by its
own timeout, and it reads /etc/hosts and /etc/resolv.conf as the C library does.

Answers are cached by name, positive ones for their TTL (clamped), a handful of addresses each, and
missing names briefly; concurrent lookups of one name share one query. An expired answer is served
stale (RFC 8767, https://www.rfc-editor.org/rfc/rfc8767) while the DNS server fails or is silent: a
blip of the server costs nothing to names already known, and a timeout is never taken for an answer.
A numeric host, in any spelling that inet_aton(3) accepts, needs no lookup and is normalised
(`0xb.22.33.44` is `11.22.33.44`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import aiodns
import aiodns.error
import pycares

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
# Addresses kept of one answer, per family: a connection tries a handful (pool.ATTEMPTS), and a name
# answering thousands (over TCP) must not cost thousands of strings a name. With CACHE_SIZE this bounds
# the cache at 16,384 addresses.
ADDRESSES_PER_FAMILY: Final = 8
MIN_TTL: Final = 5.0  # a TTL of 0 would mean one query per ping to the busiest receiver
MAX_TTL: Final = 300.0
# c-ares keeps an answer cache of its own (on by default since 1.23, up to an hour per answer) with no
# bound on its size that pycares lets us set; it grows with the names looked up and with the size of
# their answers (bench/README.md). So each channel serves this many lookups, or answers with this many
# addresses in all, then a fresh one takes over and the old one is closed.
QUERIES_PER_CHANNEL: Final = 2000
ADDRESSES_PER_CHANNEL: Final = 20_000
# ares.h's ARES_AI_NOSORT: c-ares's RFC 6724 sort opens and connects a UDP socket per address, which
# doubled the CPU of a lookup answering thousands of addresses (bench/README.md); the connection tries
# the families in turn instead (pool.attempts), so an unusable family costs one failed attempt.
NOSORT: Final = 1 << 7
NEGATIVE_TTL: Final = 10.0  # no such name, or no address of either family (RFC 2308 negative caching)
# A server failure (SERVFAIL, REFUSED) for a name with no answer to fall back on: remembered only
# briefly (RFC 2308 §7.1 allows up to 5 minutes), so that a blip of the server costs a handful of pings
# while a name whose server always fails does not cost a query per ping.
SERVFAIL_TTL: Final = 1.0
# Serving stale answers, RFC 8767: an expired answer is still used, for at most STALE_LIMIT after it
# expired (§5 suggests 1 to 3 days), when a fresh lookup fails or has not answered within STALE_WAIT
# (§5's "client response timer", shorter here: WordPress waits 3 s for the whole ping). After a failed
# refresh the stale answer is used for STALE_TTL (§4: 30 s) before the name is asked for again.
STALE_LIMIT: Final = 86400.0
STALE_WAIT: Final = 0.5
STALE_TTL: Final = 30.0

# c-ares's errors by what they say about the name. A timeout, an unreachable or failing server and a
# lookup cut short say nothing about it: they are never remembered as the name's answer.
_MISSING: Final = frozenset({aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA})
_SERVFAIL: Final = frozenset(
    {aiodns.error.ARES_ESERVFAIL, aiodns.error.ARES_EREFUSED, aiodns.error.ARES_EFORMERR, aiodns.error.ARES_EBADRESP}
)
_TIMEOUT: Final = frozenset({aiodns.error.ARES_ETIMEOUT})
_UNREACHABLE: Final = frozenset(
    {aiodns.error.ARES_ECONNREFUSED, aiodns.error.ARES_ECANCELLED, aiodns.error.ARES_EDESTRUCTION}
)


def _result(code: object) -> str:
    """The key in `Resolver.lookups` of a c-ares error code."""
    if code in _MISSING:
        return "nxdomain"
    if code in _SERVFAIL:
        return "servfail"
    if code in _TIMEOUT:
        return "timeout"
    if code in _UNREACHABLE:
        return "unreachable"
    return "error"


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


class _Failed(ResolveError):
    """A failed lookup, with the key it is counted under in `Resolver.lookups`."""

    def __init__(self, reason: str, result: str) -> None:
        # The DNS said that the name does not exist or has no address: the source verification's "gone".
        super().__init__(reason, no_such_name=result == "nxdomain")
        self.result = result


@dataclass(slots=True)
class _Entry:
    expiry: float  # loop time until which the answer is fresh
    answer: tuple[str, ...] | _Failed
    usable_until: float  # loop time until which an expired answer may still be served (RFC 8767)
    stale: bool = False  # served after a failed refresh


def kept(addresses: Iterable[str], per_family: int = ADDRESSES_PER_FAMILY) -> tuple[str, ...]:
    """The first `per_family` addresses of each family, in the answer's order, without duplicates."""
    counts = [0, 0]
    keep = []
    for address in dict.fromkeys(addresses):
        family = ":" in address
        if counts[family] < per_family:
            counts[family] += 1
            keep.append(address)
    return tuple(keep)


class Resolver:
    """Resolve host names to addresses with c-ares; one per worker, made in its event loop.

    `lookups` counts the lookups of names by result, for metrics: `answered` (by a query), `cached`,
    `stale` (an expired answer served, RFC 8767), `nxdomain` (no such name or no address), `servfail`
    (the server failed or refused), `timeout`, `unreachable` (no DNS server could be reached) and
    `error` (a name that cannot be looked up). Numeric hosts need no lookup and are not counted.
    """

    def __init__(
        self,
        *,
        timeout: float = LOOKUP_TIMEOUT,
        cache_size: int = CACHE_SIZE,
        nameservers: Sequence[str] = (),
        queries_per_channel: int = QUERIES_PER_CHANNEL,
        stale_wait: float = STALE_WAIT,
        min_ttl: float = MIN_TTL,
        stale_ttl: float = STALE_TTL,
        try_timeout: float = TRY_TIMEOUT,
        tries: int = TRIES,
    ) -> None:
        self._try_timeout, self._tries, self._stale_ttl = try_timeout, tries, stale_ttl
        self._timeout = timeout
        self._queries_per_channel = queries_per_channel
        self._stale_wait = stale_wait
        self._min_ttl = min_ttl
        self._used = self._answered = 0  # lookups on the current channel, and addresses in their answers
        self._nameservers = nameservers  # "ip" or "ip:port"; none: those of /etc/resolv.conf
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Future[tuple[str, ...]]] = {}
        self._queries: set[asyncio.Task[None]] = set()
        self._busy: dict[aiodns.DNSResolver, int] = {}  # lookups under way on each channel
        self._closing: set[asyncio.Task[None]] = set()
        self._dns: aiodns.DNSResolver | None = None
        self.lookups: Counter[str] = Counter()

    async def resolve(self, host: str) -> tuple[str, ...]:
        """The addresses of `host` in the resolver's order, without duplicates; raise `ResolveError`."""
        literal = _literal(host)
        if literal is not None:
            return literal
        name = host.rstrip(".").lower()
        loop = asyncio.get_running_loop()
        entry = self._cache.get(name)
        stale = None
        if entry is not None:
            now = loop.time()
            if entry.expiry > now:
                self._cache.move_to_end(name)
                if isinstance(entry.answer, _Failed):
                    self.lookups[entry.answer.result] += 1
                    raise entry.answer
                self.lookups["stale" if entry.stale else "cached"] += 1
                return entry.answer
            if isinstance(entry.answer, tuple) and entry.usable_until > now:
                stale = entry.answer
            else:
                del self._cache[name]
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = loop.create_future()
            # The query runs as its own task, so a ping that gives up waiting cancels only its wait.
            query = loop.create_task(self._query(name, pending))
            self._queries.add(query)
            query.add_done_callback(self._queries.discard)
        try:
            if stale is None:
                answer = await asyncio.shield(pending)
            else:
                async with asyncio.timeout(self._stale_wait):
                    answer = await asyncio.shield(pending)
        except TimeoutError:  # only with a stale answer at hand: the query goes on for the next pings
            assert stale is not None
            answer = stale
        except _Failed as exc:
            self.lookups[exc.result] += 1
            raise
        self.lookups["stale" if answer is stale else "answered"] += 1
        return answer

    async def _query(self, name: str, future: asyncio.Future[tuple[str, ...]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._getaddrinfo(name)
        except TimeoutError:
            # Not remembered: c-ares may yet get the answer, and keeps it, so the next ping that names
            # it asks again (a name behind slow servers then works a moment later, not 10 s later).
            self._fail(name, future, _Failed(f"no DNS answer for {name} within {self._timeout:g} s", "timeout"))
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            reason = exc.args[1] if len(exc.args) > 1 else str(exc)
            self._fail(name, future, _Failed(f"cannot resolve {name}: {reason}", _result(code)))
        except (UnicodeError, ValueError) as exc:  # a name c-ares cannot even encode
            self._fail(name, future, _Failed(f"cannot resolve {name}: {exc}", "error"))
        else:
            self._answered += len(result.nodes)
            addresses = kept(node.addr[0].decode("ascii") for node in result.nodes)
            if addresses:
                ttl = min(max(min(node.ttl for node in result.nodes), self._min_ttl), MAX_TTL)
                now = asyncio.get_running_loop().time()
                self._store(name, _Entry(now + ttl, addresses, now + ttl + STALE_LIMIT))
                future.set_result(addresses)
            else:
                self._fail(name, future, _Failed(f"no address for {name}", "nxdomain"))
        finally:
            del self._pending[name]
            if not future.done():  # the query was cancelled: the resolver is closing
                future.set_exception(ResolveError(f"no answer for {name}: the resolver is closing"))
                future.exception()

    def _fail(self, name: str, future: asyncio.Future[tuple[str, ...]], error: _Failed) -> None:
        now = asyncio.get_running_loop().time()
        entry = self._cache.get(name)
        if error.result != "nxdomain" and entry is not None and isinstance(entry.answer, tuple):
            if entry.usable_until > now:
                # RFC 8767 §4: the server failed to answer, so the expired answer is served for a while.
                entry.expiry, entry.stale = min(now + self._stale_ttl, entry.usable_until), True
                self._cache.move_to_end(name)
                future.set_result(entry.answer)
                return
        if error.result in ("nxdomain", "error"):
            self._store(name, _Entry(now + NEGATIVE_TTL, error, now + NEGATIVE_TTL))
        elif error.result == "servfail":
            self._store(name, _Entry(now + SERVFAIL_TTL, error, now + SERVFAIL_TTL))
        future.set_exception(error)
        future.exception()  # retrieved: every ping waiting for it may have given up already

    def _store(self, name: str, entry: _Entry) -> None:
        self._cache[name] = entry
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _getaddrinfo(self, name: str) -> pycares.AddrInfoResult:
        """One lookup on the current channel; a channel replaced is closed once its last lookup is over."""
        channel = self._channel()
        self._busy[channel] = self._busy.get(channel, 0) + 1
        try:
            return await channel.getaddrinfo(name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=NOSORT)
        finally:
            self._busy[channel] -= 1
            if not self._busy[channel]:
                del self._busy[channel]
                if channel is not self._dns:
                    self._close(channel)

    def _channel(self) -> aiodns.DNSResolver:
        if self._dns is not None and (
            self._used >= self._queries_per_channel or self._answered >= ADDRESSES_PER_CHANNEL
        ):
            if self._dns not in self._busy:
                self._close(self._dns)
            self._dns = None
        if self._dns is None:
            self._dns = aiodns.DNSResolver(
                self._nameservers or None, loop=asyncio.get_running_loop(), timeout=self._try_timeout, tries=self._tries
            )
            self._used = self._answered = 0
        self._used += 1
        return self._dns

    def _close(self, channel: aiodns.DNSResolver) -> None:
        closing = asyncio.get_running_loop().create_task(channel.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Stop every lookup (their waiters get a `ResolveError`) and close the channels."""
        queries = list(self._queries)
        for query in queries:
            query.cancel()
        await asyncio.gather(*queries, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._dns is not None:
            await self._dns.close()
            self._dns = None
