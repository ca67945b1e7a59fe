"""A scriptable DNS server for tests: names that answer, answer late, never answer, fail, or change their answer.

UDP and TCP on one address the test picks (127.0.0.1 at a random port, or port 53 inside a private network
namespace). An answer too long for UDP (RFC 1035 §4.2.1: 512 bytes, or the EDNS size the query offers) is
sent truncated, and the client asks again over TCP (RFC 7766), as for a name answering thousands of
addresses. Unknown names get NXDOMAIN. Every query is counted by name; `Zone.outage` fails them all.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, DNSRecord

UDP_SIZE = 512  # RFC 1035 §4.2.1, without EDNS


@dataclass(frozen=True, eq=False)  # hashed by identity: a cache key for its packed records
class Name:
    """How one name answers. `answers` are used in turn, the last one for every later query."""

    answers: Sequence[Sequence[str]] = ()
    ttl: int = 60
    # Seconds from the first query until the answer is there; every query is answered once it is, as
    # a recursive resolver answers the retries of a name it is still looking up.
    delay: float = 0.0
    silent: bool = False  # never answer at all
    rcode: int = RCODE.NOERROR  # e.g. RCODE.SERVFAIL: answer with that code and no addresses


@dataclass
class Zone:
    names: dict[str, Name] = field(default_factory=dict)
    queries: Counter[str] = field(default_factory=Counter)
    tcp: Counter[str] = field(default_factory=Counter)  # queries that came over TCP
    first: dict[str, float] = field(default_factory=dict)  # when each name was first asked for
    lock: threading.Lock = field(default_factory=threading.Lock)
    outage: str | None = None  # "servfail" or "silent": the whole server fails, whatever the name

    def answer(self, query: DNSRecord) -> tuple[float, bytes | None]:
        qname = str(query.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries[qname] += 1
            seen = self.queries[qname]
            name = self.names.get(qname)
            first = self.first.setdefault(qname, time.monotonic())
            outage = self.outage
        reply = query.reply()
        if outage == "silent" or (name is not None and name.silent):
            return 0.0, None
        rcode = RCODE.SERVFAIL if outage == "servfail" else RCODE.NXDOMAIN if name is None else name.rcode
        if rcode != RCODE.NOERROR or name is None:
            reply.header.rcode = rcode
            return 0.0, reply.pack()
        # Both the A and the AAAA query count as one lookup: c-ares asks both at once.
        turn = min((seen - 1) // 2, len(name.answers) - 1) if name.answers else -1
        count, records = _records(name, turn, query.q.qtype)
        head = bytearray(reply.pack())
        struct.pack_into("!H", head, 6, count)  # ANCOUNT
        return max(0.0, first + name.delay - time.monotonic()), bytes(head) + records

    def lookups(self, name: str) -> int:
        with self.lock:
            return (self.queries[name] + 1) // 2


@functools.lru_cache(maxsize=4096)
def _records(name: Name, turn: int, qtype: int) -> tuple[int, bytes]:
    """The answer records of one turn of `name` for an A or AAAA query, and how many there are.

    Packed by hand, the owner name a pointer to the question's (RFC 1035 §4.1.4), and kept: dnslib takes
    about a second to pack thousands of records, and a test may ask for a large answer hundreds of times.
    """
    size = {QTYPE.A: 4, QTYPE.AAAA: 16}.get(qtype)
    if turn < 0 or size is None:
        return 0, b""
    packed = [ipaddress.ip_address(address).packed for address in name.answers[turn]]
    records = [struct.pack("!HHHIH", 0xC00C, qtype, 1, name.ttl, size) + data for data in packed if len(data) == size]
    return len(records), b"".join(records)


def _truncated(query: DNSRecord, reply: bytes) -> bytes:
    """The reply as UDP carries it: whole if it fits the size the query offers, else header and question, TC set."""
    size = max([UDP_SIZE, *(rr.rclass for rr in query.ar if rr.rtype == QTYPE.OPT)])
    if len(reply) <= size:
        return reply
    short = query.reply()
    short.header.tc = 1
    packed: bytes = short.pack()
    return packed


def _bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on one port; with port 0, one free for both (a few tries, bounded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            sock.bind((host, listener.getsockname()[1]))
        except OSError:
            sock.close()
            listener.close()
            if port:
                raise
            continue
        listener.listen(64)
        listener.settimeout(0.1)
        sock.settimeout(0.1)
        return sock, listener
    raise OSError(f"no port free for both UDP and TCP on {host}")


@contextmanager
def dns_server(zone: Zone, host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, int]]:
    """Serve `zone` on UDP and TCP until the block ends; yields the (host, port) it listens on."""
    sock, listener = _bind(host, port)
    port = sock.getsockname()[1]
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
                query = DNSRecord.parse(data)
                delay, reply = zone.answer(query)
            except Exception:  # a packet the test did not mean to send: ignore it
                continue
            if reply is None:
                continue
            reply = _truncated(query, reply)
            if delay:
                threading.Thread(target=reply_later, args=(delay, reply, peer), daemon=True).start()
            else:
                sock.sendto(reply, peer)

    def serve_tcp(conn: socket.socket) -> None:
        # RFC 7766 §8: each message is preceded by its length in two bytes; one connection, many queries.
        with conn:
            conn.settimeout(5)
            try:
                while not stop.is_set():
                    size = conn.recv(2, socket.MSG_WAITALL)
                    if len(size) < 2:
                        return
                    query = DNSRecord.parse(conn.recv(struct.unpack("!H", size)[0], socket.MSG_WAITALL))
                    with zone.lock:
                        zone.tcp[str(query.q.qname).rstrip(".").lower()] += 1
                    delay, reply = zone.answer(query)
                    if reply is None or stop.wait(delay):
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except (OSError, ValueError):
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_tcp, args=(conn,), daemon=True).start()

    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=accept, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield host, port
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        sock.close()
        listener.close()
