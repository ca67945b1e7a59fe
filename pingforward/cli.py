"""Command line: `pingforward serve` runs the proxy without a Procfile; `pingforward send` notifies a post's links."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TextIO

from pingforward import __version__
from pingforward.config import ConfigError, Settings
from pingforward.send import Report, Result, SendError, Status, fetch_source, notify
from pingforward.transport import make_client


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pingforward", description="Pingback-to-Webmention forwarding proxy.")
    parser.add_argument("--version", action="version", version=f"pingforward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None, help="default: $WEB_CONCURRENCY or 1")
    send = commands.add_parser("send", help="notify every page a post links to (Webmention, else Pingback)")
    send.add_argument("source", metavar="SOURCE_URL", help="the published post")
    send.add_argument("--all-links", action="store_true", help="every link on the page, not only the post's")
    send.add_argument("--json", action="store_true", help="one JSON object per target on stdout")
    send.add_argument("--dry-run", action="store_true", help="discover endpoints and report, send nothing")
    args = parser.parse_args(argv)

    if args.command == "send":
        try:
            settings = Settings.from_environ(os.environ if environ is None else environ)
        except ConfigError as exc:
            print(f"pingforward: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(_send(args, settings))

    import uvicorn

    uvicorn.run(
        "pingforward.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_graceful_shutdown=20,
        access_log=False,
    )
    return 0


class _Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.done = self.total = 0

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()

    def step(self, result: Result) -> None:
        self.done += 1
        self.show(f"[{self.done}/{self.total}] {result.status} {result.target}")

    def clear(self) -> None:
        self.show("")


async def _send(args: argparse.Namespace, settings: Settings) -> int:
    progress = _Progress(sys.stderr)
    async with make_client(settings) as client:
        try:
            progress.show(f"fetching {args.source}")
            source = await fetch_source(client, args.source, all_links=args.all_links)
            progress.total = len(source.targets)
            report = Report(source.url, await notify(client, source, dry_run=args.dry_run, on_result=progress.step))
        except SendError as exc:
            progress.clear()
            if args.json:
                print(json.dumps({"source": args.source, "target": None, "status": exc.status, "detail": exc.detail}))
            print(f"pingforward send: {args.source}: {exc.detail}", file=sys.stderr)
            return 1
    progress.clear()
    if args.json:
        for result in report.results:
            print(json.dumps({"source": report.source, **asdict(result)}))
    else:
        _table(report.results, sys.stdout)
    return 0 if report.ok else 1


def _table(results: Sequence[Result], out: TextIO) -> None:
    rows = [("STATUS", "VIA", "TARGET", "DETAIL")]
    rows += [(r.status, r.protocol or "-", r.target, r.detail) for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]), file=out)
    counts = [f"{count} {status}" for status in Status if (count := sum(r.status == status for r in results))]
    print(", ".join(counts) or "the post links to no other page", file=out)
