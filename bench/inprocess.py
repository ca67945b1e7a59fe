"""CPU per request of the app alone, without uvicorn or wrk: `.venv/bin/python bench/inprocess.py`.

For quick A/B comparisons while changing the request path. run.py measures what an operator gets
(uvicorn, the kernel, wrk); this drives the ASGI apps directly in one process, 16 requests at a time,
so machine noise and the server's own costs mostly drop out. The sink (bench/sink.py) runs in its own
process on 127.0.0.1, on another core when there is one. Prints the minimum and the median CPU µs per
request over the rounds, for the ceiling app, a forwarded ping and the three kinds of junk.
`--profile KIND` runs one kind under cProfile instead and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ceiling
import run
import uvloop
from asgi_lifespan import LifespanManager

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
CONCURRENCY = 16


async def call(app: App, path: str, body: bytes) -> None:
    """One POST through the app, as uvicorn would present it."""
    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"text/xml"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


async def cpu_per_request(app: App, path: str, body: bytes, count: int) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            await call(app, path, body)

    await worker(50)  # warm up
    started = time.process_time()
    await asyncio.gather(*(worker(count // CONCURRENCY) for _ in range(CONCURRENCY)))
    return (time.process_time() - started) / count * 1e6


async def main(args: argparse.Namespace) -> None:
    port = run.free_port()
    cores = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cores[-1])] if len(cores) > 1 else []
    sink = subprocess.Popen([*pin, sys.executable, str(run.BENCH / "sink.py"), "--port", str(port)])
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[0]})
    try:
        run.wait_for_port(port, sink)
        forward = "/?forward=" + quote(f"http://127.0.0.1:{port}/webmention", safe="")
        kinds = {
            "ping": (forward, run.PING_XML),
            "malformed": ("/", run.MALFORMED_XML),
            "refused": ("/?forward=ftp%3A%2F%2Fx", run.PING_XML),
            "missing": ("/", run.PING_XML),
        }
        from pingforward.app import create_app

        with open(os.devnull, "w") as devnull:  # ping lines would go to our stdout
            sys.stdout = devnull
            async with LifespanManager(create_app()) as manager:  # manager.app adds the lifespan state
                await measure(args, manager.app, kinds)
            sys.stdout = sys.__stdout__
    finally:
        sink.terminate()
        sink.wait()


async def measure(args: argparse.Namespace, proxy: App, kinds: dict[str, tuple[str, bytes]]) -> None:
    if args.profile:
        path, body = kinds[args.profile]
        profile = cProfile.Profile()
        profile.enable()
        await cpu_per_request(proxy, path, body, args.count)
        profile.disable()
        pstats.Stats(profile, stream=sys.__stdout__).sort_stats("tottime").print_stats(30)
        return
    bare = ceiling.create_app()
    rows: dict[str, list[float]] = {name: [] for name in ("ceiling", *kinds)}
    for _ in range(args.rounds):
        rows["ceiling"].append(await cpu_per_request(bare, "/", run.PING_XML, args.count))
        for name, (path, body) in kinds.items():
            rows[name].append(await cpu_per_request(proxy, path, body, args.count))
    for label, pick in (("min", min), ("median", statistics.median)):
        print(
            f"{label:6} " + "  ".join(f"{name} {pick(values):.1f}" for name, values in rows.items()),
            file=sys.__stdout__,
        )
    print("CPU µs per request, in-process (no uvicorn, no kernel for the inbound side)", file=sys.__stdout__)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=3200, help="requests per measurement (default 3200)")
    parser.add_argument("--profile", choices=["ping", "malformed", "refused", "missing"])
    arguments = parser.parse_args()
    os.environ.update(
        PINGFORWARD_ALLOW_PRIVATE_NETWORKS="true", PINGFORWARD_ALLOWED_PORTS="*", PINGFORWARD_MAX_PER_HOST="1000"
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    uvloop.run(main(arguments))
