"""The internet's edges for the benchmark (issue 11), run by bench/run.py inside `unshare --net --mount`.

In that private network namespace, `lo` carries addresses that the default address policy treats as
public, /etc/resolv.conf points at a DNS server run here (tests/dns.py) and the proxy runs the Procfile's
command with every setting at its default. Nothing can leave the namespace. Four phases, each an open
loop of pings at a fixed rate, with latencies from each ping's planned start:

- dns_quiet: honest pings, each naming a host name not looked up before (so a lookup and a new connection);
- dns_attacked: the same, while an attacker sends pings naming hosts whose DNS server never answers;
- steady_calm: pings to one receiver by address;
- steady_hung: the same, while a receiver that never answers holds 1,000 other pings.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvloop

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from run import PING_XML, RESULTS, free_port, procfile_command, wait_for_port  # noqa: E402

from tests.dns import Name, Zone, dns_server  # noqa: E402

RECEIVER = "11.22.33.44"
HANGING = "11.22.33.45"
NAMESERVER = "11.22.33.53"
HONEST_RATE = 50.0  # pings a second, each to a new name
ATTACK_RATE = 20.0  # pings a second naming silent hosts (issue 11)
STEADY_RATE = 100.0
HANGING_PINGS = 1000


def network(tmp: Path) -> None:
    """lo up with the bench's addresses; /etc/hosts and /etc/resolv.conf replaced in this mount namespace."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        sys.exit("bench/edges.py: not in a private network namespace (run it through bench/run.py)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in (RECEIVER, HANGING, NAMESERVER):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    (tmp / "hosts").write_text("127.0.0.1 localhost\n")
    (tmp / "resolv.conf").write_text(f"nameserver {NAMESERVER}\n")
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", str(tmp / name), f"/etc/{name}"], check=True)


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if core >= 0 else command


@contextmanager
def running(name: str, command: list[str], host: str, port: int) -> Iterator[None]:
    log = open(RESULTS / f"edges-{name}.log", "wb")  # noqa: SIM115 -- closed below
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
    try:
        if host == "127.0.0.1":
            wait_for_port(port, process)
        else:
            time.sleep(1.0)  # the sinks print their address once listening; a second is plenty
        yield
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


async def phases(port: int, seconds: float) -> dict[str, Any]:
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
    sink = [sys.executable, str(BENCH / "sink.py"), "--port", "80", "--host"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pingforward-edges-") as tmp:
        network(Path(tmp))
        with (
            dns_server(zone, NAMESERVER, 53),
            running("sink", pinned([*sink, RECEIVER], args.load_core), RECEIVER, 80),
            running("hanging", pinned([*sink, HANGING, "--delay", "3600"], args.load_core), HANGING, 80),
            running(
                "proxy", pinned(procfile_command(port, args.app, args.uvicorn), args.proxy_core), "127.0.0.1", port
            ),
        ):
            result = uvloop.run(phases(port, args.seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
