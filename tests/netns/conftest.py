"""The internet's edges in a private network namespace: public-looking addresses, a DNS server, /etc/hosts.

These tests run only inside the namespace that tests/test_netns.py makes (`unshare -n -m`): there the
addresses below sit on the namespace's own `lo`, so the default address policy treats them as public
while no packet can leave the machine. /etc/hosts and /etc/resolv.conf are bind-mounted over in that
namespace's private mount table, pointing name lookups at the DNS server the tests run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dns import Zone, dns_server

INSIDE: bool = os.environ.get("PINGFORWARD_NETNS") == "1"
if not INSIDE:  # outside the namespace these tests would touch the real network: not even collected
    collect_ignore_glob = ["test_*.py"]

RECEIVER = "11.22.33.44"  # a well-behaved receiver
HANGING = "11.22.33.45"  # a receiver that holds every request until told
BUSY = "11.22.33.47"  # a receiver whose connections are counted
REFUSING_NET = "11.0.0.0/16"  # local addresses where nothing listens: connections are refused at once
NAMESERVER = "11.22.33.53"
HOSTS = f"127.0.0.1 localhost\n{RECEIVER} hosts-file.test\n{HANGING} hang-hosts.test\n"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="session")
def network() -> Iterator[Path]:
    """The namespace's `lo` up with the test addresses, and /etc/hosts and /etc/resolv.conf replaced."""
    interfaces = [name for _, name in socket.if_nameindex()]
    assert interfaces == ["lo"], f"not in a private network namespace: {interfaces}"
    _run("ip", "link", "set", "lo", "up")
    for address in (RECEIVER, HANGING, BUSY, NAMESERVER):
        _run("ip", "addr", "add", f"{address}/32", "dev", "lo")
    # For names with thousands of addresses, or each its own refusing one.
    _run("ip", "route", "add", "local", REFUSING_NET, "dev", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "hosts").write_text(HOSTS)
        (folder / "resolv.conf").write_text(f"nameserver {NAMESERVER}\n")
        for name in ("hosts", "resolv.conf"):
            _run("mount", "--bind", str(folder / name), f"/etc/{name}")
        yield folder


@pytest.fixture(scope="session")
def zone(network: Path) -> Iterator[Zone]:
    """The DNS server on NAMESERVER:53; tests add the names they need."""
    zone = Zone()
    with dns_server(zone, NAMESERVER, 53):
        yield zone


@dataclass
class RawServer:
    """A TCP server whose `serve` function gets each accepted socket, in a thread of its own."""

    serve: Callable[[socket.socket, RawServer], None]
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: int = 0  # requests being held right now
    most: int = 0  # the most held at once
    requests: int = 0
    connections: int = 0

    def hold(self) -> None:
        with self.lock:
            self.requests += 1
            self.held += 1
            self.most = max(self.most, self.held)
        self.release.wait(20)  # bounded; each test releases it far sooner
        with self.lock:
            self.held -= 1


@contextmanager
def raw_server(host: str, port: int, serve: Callable[[socket.socket, RawServer], None]) -> Iterator[RawServer]:
    server = RawServer(serve)
    listener = socket.create_server((host, port), backlog=1024)
    listener.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(20)
            with server.lock:
                server.connections += 1
            threading.Thread(target=_serve_one, args=(serve, conn, server), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _serve_one(serve: Callable[[socket.socket, RawServer], None], conn: socket.socket, server: RawServer) -> None:
    with conn:
        try:
            serve(conn, server)
        except OSError:
            pass


def read_request(conn: socket.socket) -> bytes:
    """One request (head and Content-Length body) from `conn`; b"" once the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


def answer(status: str, body: bytes = b'{"result": "ok"}', close: bool = False) -> bytes:
    """A raw HTTP/1.1 answer with a JSON body."""
    fields = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status.encode(),
        fields,
        len(body),
        body,
    )
