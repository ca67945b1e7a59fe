"""Send exactly N pings at once, one connection each, and report when each was answered.

wrk cannot send an exact number of requests, so the slow-receiver burst uses this raw asyncio client.
Prints one JSON line: answered (HTTP 200, no fault), faults, errors, stuck (no answer by --deadline),
and the seconds from the start until the last answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop


async def ping(port: int, request: bytes) -> tuple[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await reader.read()  # the request says Connection: close, so EOF ends the answer
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/1.1 200 "):
        return "error", time.perf_counter()
    return ("fault" if b"<fault>" in answer else "answered"), time.perf_counter()


async def burst(port: int, path: str, body: bytes, count: int, deadline: float) -> dict[str, float]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    tasks = [asyncio.create_task(ping(port, request)) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    result = {"answered": 0, "fault": 0, "error": 0, "stuck": len(pending), "last_s": 0.0}
    for task in done:
        if task.exception() is not None:
            result["error"] += 1
            continue
        kind, finished = task.result()
        result[kind] += 1
        result["last_s"] = max(result["last_s"], finished - started)
    if pending:
        await asyncio.wait(pending)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", required=True, help="file with the pingback.ping body")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=15.0)
    args = parser.parse_args()
    with open(args.body, "rb") as file:
        body = file.read()
    print(json.dumps(uvloop.run(burst(args.port, args.path, body, args.count, args.deadline))), flush=True)


if __name__ == "__main__":
    main()
