"""The inbound side for the benchmark: what hostile clients cost the proxy's worker (`--only inbound`).

- fields: heads of 13,000 empty header fields (52 KB, under the 64 KiB head bound), each on a new
  connection, against the same bytes in 7 fields: the proxy's CPU per request;
- readers: 20 clients that pipeline 256 KB of `GET /` each and never read: the proxy's RSS while they
  stay, the connections it still holds, and RSS after they leave.

The proxy runs the Procfile's command on its defaults. Run alone: `.venv/bin/python bench/inbound.py`.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import PROXY_APP, Bench, Row, cpu_seconds, free_port, memory_mib, procfile_command, started  # noqa: E402

FIELD_REQUESTS = 1000
READERS = 20
PIPELINED = 256 * 1024
EMPTY_FIELDS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"a:\r\n" * 13_000 + b"\r\n"
SAME_BYTES_IN_7 = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    + b"".join(b"X-%d: %s\r\n" % (n, b"v" * (13_000 * 4 // 7 - 8)) for n in range(7))
    + b"\r\n"
)


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a new connection; everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return data


def cpu_per_request(pid: int, port: int, request: bytes) -> tuple[float, str]:
    """The proxy's CPU per request in µs, and the status line of the last answer."""
    before = cpu_seconds(pid)
    answer = b""
    for _ in range(FIELD_REQUESTS):
        answer = exchange(port, request)
    return (cpu_seconds(pid) - before) / FIELD_REQUESTS * 1e6, answer.split(b"\r\n", 1)[0].decode()


def held_connections(port: int) -> int:
    """The proxy's open TCP connections on `port` (established, closing, or waiting to close)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in {"01", "04", "05", "08"}:
                count += 1
    return count


def readers(pid: int, port: int) -> dict[str, float]:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    payload = request * (PIPELINED // len(request))
    before = memory_mib(pid, "VmRSS")
    socks = []
    for _ in range(READERS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(payload)
        except OSError:
            pass

    senders = [threading.Thread(target=send, args=(sock,), daemon=True) for sock in socks]
    for sender in senders:
        sender.start()
    peak, held_at = before, {}
    started_at = time.monotonic()
    for second in range(1, 16):  # 15 s: past every bound on the defaults
        time.sleep(max(0.0, started_at + second - time.monotonic()))
        peak = max(peak, memory_mib(pid, "VmRSS"))
        if second in (5, 15):
            held_at[second] = held_connections(port)
    for sock in socks:
        sock.close()
    for sender in senders:
        sender.join(timeout=10)
    time.sleep(1)
    return {
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "held_5s": held_at[5],
        "held_15s": held_at[15],
        "rss_after_mib": memory_mib(pid, "VmRSS"),
    }


def measure(bench: Bench) -> dict[str, Any]:
    port = free_port()
    command = procfile_command(port, bench.args.app, bench.args.uvicorn)
    with started(bench, "proxy-inbound", command, bench.proxy_core, port) as pid:
        exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # warm
        empty_us, empty_status = cpu_per_request(pid, port, EMPTY_FIELDS)
        seven_us, seven_status = cpu_per_request(pid, port, SAME_BYTES_IN_7)
        result: dict[str, Any] = {
            "empty_fields_cpu_us": empty_us,
            "empty_fields_status": empty_status,
            "seven_fields_cpu_us": seven_us,
            "seven_fields_status": seven_status,
            "head_bytes": len(EMPTY_FIELDS),
        }
    port = free_port()
    command = procfile_command(port, bench.args.app, bench.args.uvicorn)
    with started(bench, "proxy-readers", command, bench.proxy_core, port) as pid:
        result.update(readers(pid, port))
    return result


def inbound_rows(result: dict[str, Any]) -> list[Row]:
    empty, seven = result["empty_fields_cpu_us"], result["seven_fields_cpu_us"]
    return [
        (
            f"heads of 13,000 empty fields ({result['head_bytes'] // 1000} KB), new connection each",
            f"{empty:,.0f} µs CPU per request",
            f"{empty / seven:.2f}x the same bytes in 7 fields ({seven:,.0f} µs); "
            f"answers: {result['empty_fields_status']!r} / {result['seven_fields_status']!r}",
            "",
        ),
        (
            f"{READERS} clients pipelining {PIPELINED // 1024} KB of GET / and never reading",
            f"RSS {result['rss_before_mib']:.0f} -> peak {result['rss_peak_mib']:.0f} MiB",
            f"connections held at 5 s / 15 s: {result['held_5s']} / {result['held_15s']}; "
            f"RSS after they leave {result['rss_after_mib']:.0f} MiB",
            "",
        ),
    ]


if __name__ == "__main__":
    import argparse
    import tempfile

    from run import setup

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uvicorn", type=lambda s: s.split(), default=[])
    args = parser.parse_args()
    args.app, args.only, args.rounds, args.seconds = PROXY_APP, ["inbound"], 1, 5
    (BENCH / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(setup(args, Path(tmp)))
    for row in inbound_rows(result):
        print("  ".join(row).rstrip())
    print(json.dumps(result))
