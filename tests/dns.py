"""A scriptable DNS server for tests: names that answer, answer late, never answer, or change their answer.

UDP only, on an address the test picks (127.0.0.1 at a random port, or port 53 inside a private
network namespace). Unknown names get NXDOMAIN. Every query is counted by name.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


@dataclass(frozen=True)
class Name:
    """How one name answers. `answers` are used in turn, the last one for every later query."""

    answers: Sequence[Sequence[str]] = ()
    ttl: int = 60
    # Seconds from the first query until the answer is there; every query is answered once it is, as
    # a recursive resolver answers the retries of a name it is still looking up.
    delay: float = 0.0
    silent: bool = False  # never answer at all


@dataclass
class Zone:
    names: dict[str, Name] = field(default_factory=dict)
    queries: Counter[str] = field(default_factory=Counter)
    first: dict[str, float] = field(default_factory=dict)  # when each name was first asked for
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, query: DNSRecord) -> tuple[float, bytes | None]:
        qname = str(query.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries[qname] += 1
            seen = self.queries[qname]
            name = self.names.get(qname)
            first = self.first.setdefault(qname, time.monotonic())
        reply = query.reply()
        if name is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return 0.0, reply.pack()
        if name.silent:
            return 0.0, None
        # Both the A and the AAAA query count as one lookup: c-ares asks both at once.
        addresses = name.answers[min((seen - 1) // 2, len(name.answers) - 1)] if name.answers else ()
        for address in addresses:
            if ":" in address and query.q.qtype == QTYPE.AAAA:
                reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=name.ttl))
            elif ":" not in address and query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=name.ttl))
        return max(0.0, first + name.delay - time.monotonic()), reply.pack()

    def lookups(self, name: str) -> int:
        with self.lock:
            return (self.queries[name] + 1) // 2


@contextmanager
def dns_server(zone: Zone, host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, int]]:
    """Serve `zone` on UDP until the block ends; yields the (host, port) it listens on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(0.1)
    stop = threading.Event()

    def reply_later(delay: float, data: bytes, peer: tuple[str, int]) -> None:
        if not stop.wait(delay):
            sock.sendto(data, peer)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                delay, reply = zone.answer(DNSRecord.parse(data))
            except Exception:  # a packet the test did not mean to send: ignore it
                continue
            if reply is None:
                continue
            if delay:
                threading.Thread(target=reply_later, args=(delay, reply, peer), daemon=True).start()
            else:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
