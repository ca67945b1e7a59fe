"""Drive the proxy with honest and junk pings for run.py's spam scenario; prints one JSON line.

`closed`: C kept-alive connections, each sending the next honest ping as soon as the last is answered,
for --seconds: the rate of delivered pings and their latency. Every ping names a source not seen
before (--same: always the same one, which the proxy's page cache then answers).

`mix`: an open loop at --rate pings a second for --seconds, each on a new connection as WordPress
sends them, in a fixed cycle of kinds: mostly junk (no link, a missing source, a scraper's copy, a
self-ping, a source that refuses connections, one that hangs) and 10% honest pings from other
clients. Reports, per kind, what came back, and the honest pings' delivered share and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import xmlrpc.client

import uvloop

# 20 slots: 2 honest (10%), 18 junk; the hanging source is 1 in 20.
CYCLE = ["honest", "nolink", "gone", "copy", "nolink", "self", "refused", "gone", "nolink", "copy"] * 2
CYCLE[19] = "hang"


def request(port: int, path: str, source: str, target: str, client: str, close: bool) -> bytes:
    body = xmlrpc.client.dumps((source, target), "pingback.ping").encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
        f"X-Forwarded-For: {client}\r\nContent-Length: {len(body)}\r\n"
    )
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> str:
    """One request; the answer's kind: "ok" (HTTP 200, no fault), "fault N", or "error"."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200 "):
        return "error"
    if b"<fault>" not in body:
        return "ok"
    code = body.split(b"<int>", 1)[1].split(b"</int>", 1)[0] if b"<int>" in body else b"?"
    return f"fault {code.decode()}"


def honest(args: argparse.Namespace, n: int) -> str:
    """The n-th honest post, on one of the honest blogs' hosts in turn."""
    return f"http://127.0.1.{n % args.honest_hosts + 1}:{args.honest_port}/honest/{n}"


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def closed(args: argparse.Namespace) -> dict[str, float]:
    counter = iter(range(10**9))
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + args.seconds

    async def connection(n: int) -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            while time.perf_counter() < deadline:
                source = honest(args, args.offset if args.same else args.offset + next(counter))
                data = request(args.port, args.path, source, args.target, f"198.51.100.{n % 250}", False)
                started = time.perf_counter()
                kind = await exchange(reader, writer, data)
                if kind == "ok":
                    latencies.append(time.perf_counter() - started)
                else:
                    bad += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(n) for n in range(args.connections)))
    duration = time.perf_counter() - started
    return {
        "good": len(latencies),
        "bad": bad,
        "rate": len(latencies) / duration,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def mix(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, dict[str, int]] = {}
    honest_latencies: list[float] = []
    honest_sent = 0

    async def one(i: int, kind: str) -> None:
        nonlocal honest_sent
        i += args.offset
        source = {
            "honest": honest(args, i // 10),  # honest pings are every tenth: spread over the hosts in turn
            "nolink": f"{args.junk}/nolink/{i}",
            "gone": f"{args.junk}/gone/{i}",
            "copy": f"{args.junk}/copy/{i}",
            "hang": f"{args.junk}/hang/{i}",
            "refused": f"http://127.0.0.3:{args.closed_port}/post/{i}",
            "self": args.target,
        }[kind]
        # Honest pings come from many blogs, junk from a few flooding clients.
        client = f"198.51.100.{i // 10 % 250}" if kind == "honest" else f"203.0.113.{i % 4}"
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            try:
                answer = await asyncio.wait_for(
                    exchange(reader, writer, request(args.port, args.path, source, args.target, client, True)), 15
                )
            finally:
                writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            answer = "error"
        counts = results.setdefault(kind, {})
        counts[answer] = counts.get(answer, 0) + 1
        if kind == "honest":
            honest_sent += 1
            if answer == "ok":
                honest_latencies.append(time.perf_counter() - started)

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    tasks = []
    for i in range(int(args.rate * args.seconds)):
        await asyncio.sleep(max(0.0, start + i / args.rate - loop.time()))
        tasks.append(asyncio.create_task(one(i, CYCLE[i % len(CYCLE)])))
    await asyncio.gather(*tasks)
    return {
        "kinds": results,
        "honest_sent": honest_sent,
        "honest_delivered": len(honest_latencies),
        "honest_p50_ms": statistics.median(honest_latencies) * 1000 if honest_latencies else float("nan"),
        "honest_p99_ms": percentile(honest_latencies, 0.99) * 1000,
        "junk_delivered": sum(c.get("ok", 0) for kind, c in results.items() if kind != "honest"),
        "sent": len(tasks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["closed", "mix"])
    parser.add_argument("--port", type=int, required=True, help="the proxy's")
    parser.add_argument("--path", required=True, help="/?forward=... to the sink")
    parser.add_argument("--target", required=True)
    parser.add_argument("--honest-port", type=int, required=True, help="the honest blogs' port (web.py)")
    parser.add_argument("--honest-hosts", type=int, default=50, help="honest blogs: 127.0.1.1 and on")
    parser.add_argument("--junk", required=True, help="base URL of the junk sources")
    parser.add_argument("--closed-port", type=int, default=9, help="a port where nothing listens, on 127.0.0.3")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--same", action="store_true", help="closed: one source for every ping")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--offset", type=int, default=0, help="first source number: a run's sources are new")
    parser.add_argument("--rate", type=float, default=400.0, help="mix: pings a second")
    args = parser.parse_args()
    result = uvloop.run(closed(args) if args.mode == "closed" else mix(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
