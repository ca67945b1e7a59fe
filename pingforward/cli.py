"""Command line: `pingforward serve` runs the proxy without a Procfile, `check` tests a site, `send` notifies links,
`demo` shows one ping all the way through."""

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
from pingforward.check import Verdict, check
from pingforward.config import PREFIX, ConfigError, LogFormat, Settings
from pingforward.pinglog import uvicorn_log_config
from pingforward.send import Report, Result, SendError, Status, fetch_source, notify
from pingforward.transport import make_client


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pingforward", description="Pingback-to-Webmention forwarding proxy.")
    parser.add_argument("--version", action="version", version=f"pingforward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy under uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1; 0.0.0.0 for all interfaces")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--workers", type=int, default=None, help="default: $WEB_CONCURRENCY or 1")
    serve.add_argument(
        "--log-format", choices=[f.value for f in LogFormat], default=None, help=f"default: ${PREFIX}LOG_FORMAT or text"
    )

    check = commands.add_parser("check", help="check that a page advertises a working pingforward endpoint")
    check.add_argument("page_url", metavar="PAGE_URL", help="a post of your site that should receive pingbacks")
    check.add_argument("--ping", action="store_true", help="also send one real test ping through the endpoint")
    check.add_argument("--source", metavar="URL", help="the test ping's source (default: PAGE_URL itself)")
    check.add_argument("--json", action="store_true", help="one JSON object per finding on stdout")

    demo = commands.add_parser("demo", help="send one real pingback through a local proxy to a local receiver")
    demo.add_argument("--port", type=int, default=0, help="the proxy's port (default: any free port)")

    send = commands.add_parser("send", help="notify every page a post links to (Webmention, else Pingback)")
    send.add_argument("source", metavar="SOURCE_URL", help="the published post")
    send.add_argument("--all-links", action="store_true", help="every link on the page, not only the post's")
    send.add_argument("--json", action="store_true", help="one JSON object per target on stdout")
    send.add_argument("--dry-run", action="store_true", help="discover endpoints and report, send nothing")

    args = parser.parse_args(argv)
    if args.command == "demo":  # its own settings, printed as it starts
        from pingforward.demo import run as run_demo

        return run_demo(sys.stdout, args.port)
    if args.command == "serve" and args.log_format is not None:
        # The app factory reads its settings from the environment, in every worker process.
        os.environ[PREFIX + "LOG_FORMAT"] = args.log_format
    try:
        settings = Settings.from_environ(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"pingforward: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        return asyncio.run(_check(settings, args.page_url, ping=args.ping, source=args.source, as_json=args.json))
    if args.command == "send":
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
        log_config=uvicorn_log_config(settings.log_format) or uvicorn.config.LOGGING_CONFIG,
    )
    return 0


def _printable(text: str) -> str:
    # Findings quote what a web page said; keep its control characters off the terminal.
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}" for ch in text
    )


async def _check(settings: Settings, url: str, *, ping: bool, source: str | None, as_json: bool = False) -> int:
    async with make_client(settings) as client:
        analysis = await check(client, url, ping=ping, source=source)
    problems = sum(finding.verdict is Verdict.FAIL for finding in analysis.findings)
    warnings = sum(finding.verdict is Verdict.WARN for finding in analysis.findings)
    if as_json:
        for finding in analysis.findings:
            print(json.dumps({"page": url, "verdict": finding.verdict.name.lower(), "message": finding.text}))
        return 1 if problems else 0
    for finding in analysis.findings:
        print(f"{finding.verdict.value:<4}  {_printable(finding.text)}")
    summary = f"{problems} problem{'' if problems == 1 else 's'} found" if problems else "no problems found"
    if warnings:
        summary += f", {warnings} warning{'' if warnings == 1 else 's'}"
    print(summary)
    return 1 if problems else 0


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
        self.show(f"[{self.done}/{self.total}] {result.status} {_printable(result.target)}")

    def clear(self) -> None:
        self.show("")


async def _send(args: argparse.Namespace, settings: Settings) -> int:
    progress = _Progress(sys.stderr)
    async with make_client(settings) as client:
        try:
            progress.show(f"fetching {_printable(args.source)}")
            source = await fetch_source(client, args.source, all_links=args.all_links)
            progress.total = len(source.targets)
            report = Report(source.url, await notify(client, source, dry_run=args.dry_run, on_result=progress.step))
        except SendError as exc:
            progress.clear()
            if args.json:
                print(json.dumps({"source": args.source, "target": None, "status": exc.status, "detail": exc.detail}))
            print(f"pingforward send: {_printable(args.source)}: {_printable(exc.detail)}", file=sys.stderr)
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
    # Targets and details quote what web pages and endpoints said.
    rows += [(r.status, r.protocol or "-", _printable(r.target), _printable(r.detail)) for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]), file=out)
    counts = [f"{count} {status}" for status in Status if (count := sum(r.status == status for r in results))]
    print(", ".join(counts) or "the post links to no other page", file=out)
