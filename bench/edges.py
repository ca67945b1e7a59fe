"""The internet's edges for the benchmark, run by bench/run.py inside `unshare --net --mount`.

In that private network namespace, `lo` carries addresses that the default address policy treats as
public, /etc/resolv.conf points at a DNS server run here (tests/dns.py) and the proxy runs the Procfile's
command with every setting at its default. Nothing can leave the namespace. Four phases, each an open
loop of pings at a fixed rate, with latencies from each ping's planned start:

- dns_quiet: honest pings, each naming a host name not looked up before (so a lookup and a new connection);
- dns_attacked: the same, while an attacker sends pings naming hosts whose DNS server never answers;
- steady_calm: pings to one receiver by address;
- steady_hung: the same, while a receiver that never answers holds 1,000 other pings;
- steady_two_hung: the same, while two such receivers hold 1,000 pings each;
- dns_blip: pings to two known names whose answers expire during a 0.3 s SERVFAIL of one name, and
  during 0.3 s without any DNS server (the port closed: unreachable);
- idle_origins: pings to a busy receiver by name, taking turns with pings to 110 other origins, each
  of which keeps an idle connection: new connections the busy receiver saw;
- many_addresses: 500 names of 4,090 A records each (over TCP), all refusing: the proxy's memory after.

Prints one JSON line for run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvloop

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from run import PING_XML, RESULTS, free_port, procfile_command, wait_for_port  # noqa: E402
from sink import ANSWER  # noqa: E402

from tests.dns import Name, Zone, dns_server  # noqa: E402

RECEIVER = "11.22.33.44"
HANGING = "11.22.33.45"
HANGING_TOO = "11.22.33.46"
BUSY = "11.22.33.47"
NAMESERVER = "11.22.33.53"
REFUSING_NET = "11.0.0.0/16"  # local, nothing listens: the addresses of the names with thousands
HONEST_RATE = 50.0  # pings a second, each to a new name
ATTACK_RATE = 20.0  # pings a second naming silent hosts
STEADY_RATE = 100.0
HANGING_PINGS = 1000
BLIP_RATE = 50.0  # pings a second to each of the two names of dns_blip
BLIP = 0.3  # seconds of each DNS failure
IDLE_ORIGINS = 110  # more than the pool keeps idle (transport.LIMITS)
BUSY_PINGS = 200
MANY_NAMES = 500
MANY_ADDRESSES = 4090


def network(tmp: Path) -> None:
    """lo up with the bench's addresses; /etc/hosts and /etc/resolv.conf replaced in this mount namespace."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        sys.exit("bench/edges.py: not in a private network namespace (run it through bench/run.py)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in (RECEIVER, HANGING, HANGING_TOO, BUSY, NAMESERVER):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "route", "add", "local", REFUSING_NET, "dev", "lo"], check=True)
    (tmp / "hosts").write_text("127.0.0.1 localhost\n")
    (tmp / "resolv.conf").write_text(f"nameserver {NAMESERVER}\n")
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", str(tmp / name), f"/etc/{name}"], check=True)


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if core >= 0 else command


@contextmanager
def running(name: str, command: list[str], host: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = open(RESULTS / f"edges-{name}.log", "wb")  # noqa: SIM115 -- closed below
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
    try:
        if host == "127.0.0.1":
            wait_for_port(port, process)
        else:
            time.sleep(1.0)  # the sinks print their address once listening; a second is plenty
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def ping(port: int, forward: str) -> bool:
    """One ping through the proxy on its own connection; True when it was delivered."""
    path = "/?forward=" + quote(forward, safe="")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(PING_XML)}\r\nConnection: close\r\n\r\n"
    ).encode() + PING_XML
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await reader.read()
    finally:
        writer.close()
    return answer.startswith(b"HTTP/1.1 200 ") and b"<fault>" not in answer


async def open_loop(port: int, rate: float, seconds: float, forward: Callable[[int], str]) -> dict[str, Any]:
    """Pings at a fixed rate whatever the answers take; latency counts from each ping's planned start."""
    start = time.perf_counter()  # uvloop's loop.time() has 1 ms steps
    results: list[tuple[bool, float]] = []

    async def one(n: int, planned: float) -> None:
        try:
            ok = await asyncio.wait_for(ping(port, forward(n)), 30)
        except (OSError, TimeoutError):
            ok = False
        results.append((ok, time.perf_counter() - planned))

    tasks = []
    for n in range(int(rate * seconds)):
        planned = start + n / rate
        await asyncio.sleep(max(0.0, planned - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n, planned)))
    await asyncio.gather(*tasks)
    latencies = sorted(latency for _, latency in results)
    return {
        "sent": len(results),
        "delivered": sum(ok for ok, _ in results),
        "p50_s": latencies[len(latencies) // 2],
        "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def held_at(*addresses: str) -> int:
    """Connections established to `addresses` (port 80), as `ss` counts them: the proxy's, held there."""
    out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True, check=True).stdout
    peers = (line.split()[-1].rsplit(":", 1) for line in out.splitlines() if line.strip())
    return sum(address in addresses and port == "80" for address, port in peers)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


class Counting(asyncio.Protocol):
    """A keep-alive receiver that answers every request at once; `connections` counts what it accepted."""

    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.connections += 1
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in head else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(ANSWER)  # type: ignore[attr-defined]


async def dns_blip(port: int, zone: Zone, seconds: float, dns: Nameserver) -> dict[str, Any]:
    """Two names, first looked up now, answers fresh for 5 s (the least the proxy keeps one): the first
    name's answer expires during a 0.3 s SERVFAIL of that name, the second's during 0.3 s with no DNS
    server at all, 5 s later (the first then has a stale answer in use)."""
    zone.names["blip-a.bench.test"] = zone.names["blip-b.bench.test"] = Name([[RECEIVER]], ttl=1)
    loop = asyncio.get_running_loop()
    fresh = 5.0

    def servfail(on: bool) -> None:
        zone.names["blip-a.bench.test"] = Name(rcode=2) if on else Name([[RECEIVER]], ttl=1)  # 2: SERVFAIL

    def in_thread(action: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            loop.run_in_executor(None, action)  # stopping joins threads: not on the loop

        return run

    start = loop.time()
    for at, action in (
        (fresh - 0.1, lambda: servfail(True)),
        (fresh - 0.1 + BLIP, lambda: servfail(False)),
        (2 * fresh - 0.1, in_thread(dns.stop)),
        (2 * fresh - 0.1 + BLIP, in_thread(dns.start)),
    ):
        loop.call_at(start + at, action)
    both = await asyncio.gather(
        open_loop(port, BLIP_RATE, seconds, lambda n: "http://blip-a.bench.test/wm"),
        open_loop(port, BLIP_RATE, seconds, lambda n: "http://blip-b.bench.test/wm"),
    )
    return {"servfail": both[0], "unreachable": both[1]}


async def idle_origins(port: int) -> dict[str, Any]:
    """A busy receiver by name, in turns with pings to IDLE_ORIGINS other origins that each keep a connection."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Counting, BUSY, 80)
    Counting.connections = 0
    delivered = 0
    async with server:
        rounds = 10
        for turn in range(rounds):
            others = range(turn * IDLE_ORIGINS // rounds, (turn + 1) * IDLE_ORIGINS // rounds)
            if turn == 0:
                others = range(IDLE_ORIGINS)  # every other origin has an idle connection from here on
            await asyncio.gather(*(ping(port, f"http://idle-{n}.bench.test/wm") for n in others))
            for _ in range(BUSY_PINGS // rounds // 4):
                results = await asyncio.gather(*(ping(port, "http://busy.bench.test/wm") for _ in range(4)))
                delivered += sum(results)
        server.close()
    return {"pings": BUSY_PINGS, "delivered": delivered, "connections": Counting.connections, "origins": IDLE_ORIGINS}


async def many_addresses(port: int, pid: int) -> dict[str, Any]:
    """MANY_NAMES names of MANY_ADDRESSES addresses each, pinged once each, 10 at a time; RSS before and after."""
    before = rss_mib(pid)
    started = time.perf_counter()
    limit = asyncio.Semaphore(10)

    async def one(n: int) -> bool:
        async with limit:
            return await ping(port, f"http://many-{n}.bench.test/wm")

    results = await asyncio.gather(*(one(n) for n in range(MANY_NAMES)))
    await asyncio.sleep(1)
    return {
        "names": MANY_NAMES,
        "addresses": MANY_ADDRESSES,
        "delivered": sum(results),
        "seconds": time.perf_counter() - started,
        "rss_before_mib": before,
        "rss_after_mib": rss_mib(pid),
    }


class Nameserver:
    """tests/dns.py's server on NAMESERVER:53, which dns_blip stops and starts again."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self._serving: AbstractContextManager[object] | None = None

    def start(self) -> None:
        self._serving = dns_server(self.zone, NAMESERVER, 53)
        self._serving.__enter__()

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.__exit__(None, None, None)
            self._serving = None


async def phases(port: int, seconds: float, zone: Zone, dns: Nameserver, pid: int) -> dict[str, Any]:
    result: dict[str, Any] = {"attack_rate": ATTACK_RATE, "steady_rate": STEADY_RATE, "hanging": HANGING_PINGS}
    print("edges: honest pings by name", file=sys.stderr, flush=True)
    result["dns_quiet"] = await open_loop(port, HONEST_RATE, seconds, lambda n: f"http://quiet-{n}.bench.test/wm")
    print("edges: honest pings by name, with an attacker naming silent hosts", file=sys.stderr, flush=True)
    attack = asyncio.create_task(
        open_loop(port, ATTACK_RATE, seconds + 1, lambda n: f"http://silent-{n}.attack.test/wm")
    )
    await asyncio.sleep(1)  # the attack is under way before the first honest ping
    result["dns_attacked"] = await open_loop(port, HONEST_RATE, seconds, lambda n: f"http://loud-{n}.bench.test/wm")
    result["dns_attacked"]["attacks"] = (await attack)["sent"]
    print("edges: steady pings to one receiver", file=sys.stderr, flush=True)
    steady = min(seconds, 6.0)  # the held pings of the next phase hang for the 10 s of PINGFORWARD_TIMEOUT
    result["steady_calm"] = await open_loop(port, STEADY_RATE, steady, lambda n: f"http://{RECEIVER}/wm")
    print(f"edges: the same, while {HANGING_PINGS} pings hang at another receiver", file=sys.stderr, flush=True)
    held = [asyncio.create_task(ping(port, f"http://{HANGING}/wm")) for _ in range(HANGING_PINGS)]
    await asyncio.sleep(1.5)
    result["steady_hung"] = await open_loop(port, STEADY_RATE, steady, lambda n: f"http://{RECEIVER}/wm")
    result["held"] = sum(not task.done() for task in held)
    await asyncio.gather(*held, return_exceptions=True)  # they end at the proxy's deadline, with fault 50
    print(f"edges: the same, while two receivers hang with {HANGING_PINGS} pings each", file=sys.stderr, flush=True)
    held = [
        asyncio.create_task(ping(port, f"http://{address}/wm")) for address in (HANGING, HANGING_TOO)
        for _ in range(HANGING_PINGS)
    ]  # fmt: skip
    # Until the proxy holds them all (2,000 take it longer to take in than 1,000 on a busy core): what is
    # measured is the traffic beside two receivers that hang, not beside the arrival of their pings.
    for _ in range(80):  # bounded: 8 s, inside the held pings' 10 s
        await asyncio.sleep(0.1)
        if held_at(HANGING, HANGING_TOO) >= 2 * HANGING_PINGS:
            break
    await asyncio.sleep(0.5)
    result["steady_two_hung"] = await open_loop(port, STEADY_RATE, steady, lambda n: f"http://{RECEIVER}/wm")
    result["two_held"] = sum(not task.done() for task in held)
    await asyncio.gather(*held, return_exceptions=True)
    print("edges: a 0.3 s SERVFAIL, and 0.3 s without a DNS server, as answers expire", file=sys.stderr, flush=True)
    result["dns_blip"] = await dns_blip(port, zone, 12.0, dns)
    print(
        f"edges: a busy receiver while {IDLE_ORIGINS} other origins keep idle connections", file=sys.stderr, flush=True
    )
    result["idle_origins"] = await idle_origins(port)
    print(f"edges: {MANY_NAMES} names of {MANY_ADDRESSES} addresses each", file=sys.stderr, flush=True)
    result["many_addresses"] = await many_addresses(port, pid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--proxy-core", type=int, default=-1)
    parser.add_argument("--load-core", type=int, default=-1)
    parser.add_argument("--uvicorn", type=shlex.split, default=[])
    parser.add_argument("--app", default="pingforward.app:create_app")
    args = parser.parse_args()
    if args.load_core >= 0:
        os.sched_setaffinity(0, {args.load_core})
    zone = Zone()
    for n in range(int(HONEST_RATE * args.seconds) + 1):
        zone.names[f"quiet-{n}.bench.test"] = Name([[RECEIVER]])
        zone.names[f"loud-{n}.bench.test"] = Name([[RECEIVER]])
    for n in range(int(ATTACK_RATE * (args.seconds + 1)) + 1):
        zone.names[f"silent-{n}.attack.test"] = Name(silent=True)
    for n in range(IDLE_ORIGINS):
        zone.names[f"idle-{n}.bench.test"] = Name([[RECEIVER]])
    zone.names["busy.bench.test"] = Name([[BUSY]])
    many = Name([[f"11.0.{n >> 8}.{n & 255}" for n in range(1, MANY_ADDRESSES + 1)]])  # one object: packed once
    zone.names.update({f"many-{n}.bench.test": many for n in range(MANY_NAMES)})
    sink = [sys.executable, str(BENCH / "sink.py"), "--port", "80", "--host"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pingforward-edges-") as tmp:
        network(Path(tmp))
        dns = Nameserver(zone)
        dns.start()
        try:
            with (
                running("sink", pinned([*sink, RECEIVER], args.load_core), RECEIVER, 80),
                running("hanging", pinned([*sink, HANGING, "--delay", "3600"], args.load_core), HANGING, 80),
                running(
                    "hanging-too", pinned([*sink, HANGING_TOO, "--delay", "3600"], args.load_core), HANGING_TOO, 80
                ),
                running(
                    "proxy", pinned(procfile_command(port, args.app, args.uvicorn), args.proxy_core), "127.0.0.1", port
                ) as proxy,
            ):
                result = uvloop.run(phases(port, args.seconds, zone, dns, proxy.pid))
        finally:
            dns.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
