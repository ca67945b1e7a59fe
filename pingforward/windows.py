"""Windows of time that bound what the proxy does for strangers: repeats, floods, and verification fetches.

The counting is the `limits` library's (https://limits.readthedocs.io), in fixed windows that open at
the first count (limits sets a counter's expiry when it is created, so windows are not aligned to the
clock): one counter per window and subject, and an exact count. A burst at one window's end and the
next one's start can reach twice a window's count; the longer window (an hour) caps that. The counters
live in this worker's memory, bounded, or in Redis when `PINGFORWARD_STATE_URL` names one, so that
several workers and dynos share them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats, parse_many

from pingforward.config import Settings
from pingforward.forward import Outcome
from pingforward.net.policy import host_literal
from pingforward.pingback import FaultCode
from pingforward.verify import FETCH_BOUND_SETTING  # the reflector's bound, named where it is refused

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Counters one worker keeps in memory; the least recently counted go first. bench/README.md has what a
# counter costs, and so what this bound holds a worker to, whatever sources strangers make up.
MAX_KEYS: Final = 50_000
# Redis is one round trip away on the same network; a call that takes longer than this is treated as
# Redis being unreachable. The ping's own deadline is seconds (WordPress waits 3 s for the answer).
STORE_TIMEOUT: Final = 0.25
# After Redis failed, the worker counts in its own memory this long before it tries Redis again, so
# that an outage costs one ping STORE_TIMEOUT, not every ping.
STORE_RETRY: Final = 30.0

REPEAT_SETTING: Final = "PINGFORWARD_REPEAT_WINDOW"
FLOOD_CLIENT_SETTING: Final = "PINGFORWARD_FLOOD_CLIENT"
FLOOD_SOURCE_SETTING: Final = "PINGFORWARD_FLOOD_SOURCE"


class BoundedMemory(MemoryStorage):
    """limits' memory storage holding at most `max_keys` counters, the least recently counted dropped first.

    limits' own `incr` starts a sweep over every key after each count (its cost grows with the keys:
    bench/README.md) and never drops a key before its window ends, so strangers who make
    up sources could grow it without bound. Here each count moves its key to the end of `order`, and
    drops the oldest keys while there are too many, plus up to two expired ones at the front: constant
    work per count. Counting without an `await` keeps every hit atomic within the worker.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        super().__init__()
        self.max_keys = max_keys
        # Least recently counted first. An OrderedDict, not the dict's own order: a dict whose front
        # keys are deleted one by one walks over their empty slots to find its first key.
        self.order: OrderedDict[str, None] = OrderedDict()

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        count = self.storage.get(key, 0)
        if self.expirations.get(key, 0.0) <= now:  # new, or its window is over: a window from now
            count = 0
            self.expirations[key] = now + expiry
        count += amount
        self.storage[key] = count
        self.order[key] = None
        self.order.move_to_end(key)
        while len(self.order) > self.max_keys:
            self._drop(self.order.popitem(last=False)[0])
        for _ in range(2):
            oldest = next(iter(self.order), None)
            if oldest is None or self.expirations.get(oldest, 0.0) > now:
                break
            self._drop(oldest)
            del self.order[oldest]
        return count

    async def clear(self, key: str) -> None:
        await super().clear(key)
        self.order.pop(key, None)

    async def reset(self) -> int | None:
        self.order.clear()
        return await super().reset()

    def _drop(self, key: str) -> None:
        self.storage.pop(key, None)
        self.expirations.pop(key, None)
        self.locks.pop(key, None)


@dataclass(frozen=True, slots=True)
class _Store:
    storage: Storage
    fixed: FixedWindowRateLimiter

    @classmethod
    def over(cls, storage: Storage) -> _Store:
        return cls(storage, FixedWindowRateLimiter(storage))


def rates(text: str) -> tuple[RateLimitItem, ...]:
    """Windows in limits' notation ("60/minute;600/hour"); none for "off" or an empty string."""
    text = text.strip()
    return () if text.lower() in ("", "off") else tuple(parse_many(text))


def limits_url(url: str) -> str:
    """limits' name for a Redis URL: async+redis://, async+rediss://, async+redis+unix://."""
    scheme, _, rest = url.partition("://")
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"


def _where(url: str) -> str:
    # For the log: the host and port only, never a password from the URL.
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


def _triple(source: str, target: str, forward_url: str) -> str:
    # Fixed length whatever the URLs' (2 KiB each at most): the same size in memory and in Redis.
    return hashlib.sha256("\n".join((source, target, forward_url)).encode()).hexdigest()[:32]


def _subscriber(client: str) -> str:
    """An IPv6 client by its /64, the least one end site is assigned (RFC 6177): one share, not 2**64."""
    if ":" not in client:
        return client
    try:
        return str(ipaddress.IPv6Network(f"{client}/64", strict=False))
    except ValueError:
        return client


def host_key(host: str) -> str:
    """One name for the host a URL names however it is spelled: lower case, no final dot, an IDN in its
    ASCII form, and an address in its one canonical form (`127.1`, `2130706437` and `[::ffff:127.0.0.1]`
    reach 127.0.0.1 as surely as `127.0.0.1` does: a bound per spelling is no bound)."""
    host = host.strip("[]").rstrip(".").lower()
    literal = host_literal(host)
    if literal is not None:
        mapped = getattr(literal, "ipv4_mapped", None)
        return str(mapped or literal)
    if not host.isascii():
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            return host
    return host


def _hit(item: RateLimitItem, key: tuple[str, ...]) -> Callable[[_Store], Awaitable[bool]]:
    return lambda store: store.fixed.hit(item, *key)


def _test(item: RateLimitItem, key: tuple[str, ...]) -> Callable[[_Store], Awaitable[bool]]:
    return lambda store: store.fixed.test(item, *key)


def _stats(item: RateLimitItem, key: tuple[str, ...]) -> Callable[[_Store], Awaitable[WindowStats]]:
    return lambda store: store.fixed.get_window_stats(item, *key)


class Windows:
    """The windows of one worker: made in the app's lifespan from Settings, closed at its end."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_keys: int = MAX_KEYS,
        store_timeout: float = STORE_TIMEOUT,
        store_retry: float = STORE_RETRY,
    ) -> None:
        on = settings.spam_checks
        seconds = settings.repeat_window if on else 0
        # Claimed while a triple's ping is being forwarded, and delivered once its receiver said 2xx.
        self.repeat: RateLimitItem | None = RateLimitItemPerSecond(1, seconds) if seconds else None
        self.flood_client = rates(settings.flood_client) if on else ()
        self.flood_source = rates(settings.flood_source) if on else ()
        self.fetch_bound = rates(settings.fetch_bound) if on else ()
        self.memory = _Store.over(BoundedMemory(max_keys))
        self.shared: _Store | None = None
        self.where = ""
        if settings.state_url and (self.repeat or self.flood_client or self.flood_source or self.fetch_bound):
            self.where = _where(settings.state_url)
            # redis-py's asyncio client, which limits drives with one Lua script per count (INCRBY and
            # EXPIRE together): with its coredis bridge they are two calls, and a call cut between them
            # would leave a counter that never expires.
            storage = RedisStorage(
                limits_url(settings.state_url),
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="pingforward",
                socket_timeout=store_timeout,
                socket_connect_timeout=store_timeout,
            )
            self.shared = _Store.over(storage)
        self.store_timeout = store_timeout
        self.store_retry = store_retry
        self._memory_until = 0.0  # while Redis is down: count in memory until then

    async def close(self) -> None:
        if self.shared is not None:
            storage = self.shared.storage
            assert isinstance(storage, RedisStorage)
            await storage.bridge.get_connection().aclose()  # type: ignore[attr-defined]

    async def _use(self, op: Callable[[_Store], Awaitable[T]]) -> T:
        """`op` on Redis if there is one and it answers in time, else on this worker's memory.

        Unreachable Redis neither refuses every ping (the pings of honest blogs would be lost: WordPress
        pings again only when the post is next updated) nor lets every ping through: each worker counts
        by itself until Redis is back, so a flood still meets a share per worker.
        """
        if self.shared is None or time.monotonic() < self._memory_until:
            return await op(self.memory)
        try:
            async with asyncio.timeout(self.store_timeout):
                result = await op(self.shared)
        except (StorageError, TimeoutError, OSError) as exc:
            if not self._memory_until:
                logger.warning(
                    "shared state at %s unreachable (%s); this worker counts in its own memory for %g s",
                    self.where,
                    f"no answer within {self.store_timeout:g} s" if isinstance(exc, TimeoutError) else exc,
                    self.store_retry,
                )
            self._memory_until = time.monotonic() + self.store_retry
            return await op(self.memory)
        if self._memory_until:
            self._memory_until = 0.0
            logger.warning("shared state at %s reachable again", self.where)
        return result

    async def flood(self, client: str, source_host: str) -> Outcome | None:
        """None when the client and the source's host are within their windows, else fault 429 saying when to retry.

        The client's ping is counted here. The source's host is only looked at: any client can name any
        site as its source, so a ping counts against its source's host once its source has passed the
        checks (`count_source`), and pings naming made-up pages of an honest blog cannot use up its share.
        """
        for setting, items, subject, count in (
            (FLOOD_CLIENT_SETTING, self.flood_client, client, True),
            (FLOOD_SOURCE_SETTING, self.flood_source, source_host, False),
        ):
            if not items or not subject:  # a window that is off costs nothing
                continue
            subject = _subscriber(subject) if count else host_key(subject)
            full = await self._exceeded(items, count, setting, subject)
            if full is not None:
                item, retry = full
                who = f"from {subject}" if setting == FLOOD_CLIENT_SETTING else f"with a source on {subject}"
                return Outcome(
                    f"too many pings {who}: more than {item} ({setting}); retry in {retry} s",
                    FaultCode.TOO_MANY,
                    refusal="flood",
                )
        return None

    async def count_source(self, source_host: str) -> None:
        """Count a ping whose source has passed the checks against its host's windows (see `flood`)."""
        if source_host and self.flood_source:
            key = (FLOOD_SOURCE_SETTING, host_key(source_host))
            for item in self.flood_source:
                await self._use(_hit(item, key))

    async def _exceeded(
        self, items: tuple[RateLimitItem, ...], count: bool, *key: str
    ) -> tuple[RateLimitItem, int] | None:
        """Count one in each window in turn (or, without `count`, only look); the first that was already full
        and the seconds until it has room."""
        for item in items:
            if not await self._use(_hit(item, key) if count else _test(item, key)):
                stats = await self._use(_stats(item, key))
                return item, max(1, math.ceil(stats.reset_time - time.time()))
        return None

    async def claim(self, source: str, target: str, forward_url: str) -> Outcome | None:
        """None when this ping is the first of its (source, target, forward URL) in the repeat window.

        Else the answer for a repeat: fault 48 once the first was delivered (what WordPress answers
        for a ping it has, and what its client records as pinged), fault 50 while it is still being
        forwarded. A claim is settled with `settle` after the forward, whatever happened.
        """
        item = self.repeat
        if item is None:
            return None
        key = _triple(source, target, forward_url)
        if await self._use(lambda store: store.fixed.hit(item, "claim", key)):
            return None
        if not await self._use(lambda store: store.fixed.test(item, "delivered", key)):
            return Outcome(
                f"already registered: this ping was forwarded within the last {item.multiples} s "
                f"and is forwarded once ({REPEAT_SETTING})",
                FaultCode.ALREADY_REGISTERED,
                refusal="repeat",
            )
        return Outcome(
            f"the same ping is being forwarded now; retry in a minute ({REPEAT_SETTING})",
            FaultCode.UPSTREAM_ERROR,
            refusal="repeat",
        )

    async def settle(self, source: str, target: str, forward_url: str, delivered: bool) -> None:
        """End a claim: a delivered ping is not forwarded again within the window; any other may be retried."""
        item = self.repeat
        if item is None:
            return
        key = _triple(source, target, forward_url)
        if delivered:
            await self._use(lambda store: store.fixed.hit(item, "delivered", key))
        else:
            await self._use(lambda store: store.fixed.clear(item, "claim", key))

    async def fetch_allowed(self, host: str) -> bool:
        """Whether verification may make one more GET to `host` in its windows (each call counts one)."""
        return await self._exceeded(self.fetch_bound, True, FETCH_BOUND_SETTING, host_key(host)) is None
