"""Command line: `pingforward serve` runs the proxy without a Procfile, `check` tests a site, `send` notifies links,
`demo` shows one ping all the way through."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime
from typing import TextIO

from pingforward import __version__
from pingforward.check import Verdict, check
from pingforward.config import PREFIX, LogFormat, Settings
from pingforward.errors import ConfigError
from pingforward.feed import Feed, parse_date
from pingforward.net.transport import make_client
from pingforward.pinglog import uvicorn_log_config
from pingforward.send import (
    DEFAULT_LIMITS,
    Budget,
    FeedReport,
    Report,
    Result,
    SendError,
    Status,
    fetch_source,
    notify,
    send_feed,
)


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

    send = commands.add_parser(
        "send",
        help="notify every page a post links to (Webmention, else Pingback), or do so for each post of a feed",
        description="Exit status: 0 when nothing failed (sent, skipped or discovered only), 1 when a target, "
        "an entry or the feed failed or had an error worth retrying, 2 for bad arguments or settings.",
    )
    send.add_argument("source", metavar="SOURCE_URL", nargs="?", help="the published post")
    send.add_argument(
        "--feed",
        metavar="FEED_URL",
        help="an RSS, Atom or JSON feed, an h-feed page, or a home page that names its feed: each entry is sent",
    )
    send.add_argument("--since", metavar="DATE", type=_date, help="with --feed: entries published at or after DATE")
    send.add_argument("--limit", metavar="N", type=_positive, help="with --feed: the N newest entries")
    send.add_argument(
        "--max-requests",
        metavar="N",
        type=_positive,
        default=DEFAULT_LIMITS.max_requests,
        help=f"outbound requests in all: fetches, redirects, notifications (default: {DEFAULT_LIMITS.max_requests})",
    )
    send.add_argument("--all-links", action="store_true", help="every link on the page, not only the post's")
    send.add_argument("--json", action="store_true", help="one JSON object per target on stdout")
    send.add_argument("--dry-run", action="store_true", help="discover endpoints and report, send nothing")

    args = parser.parse_args(argv)
    if args.command == "demo":  # its own settings, printed as it starts
        from pingforward.demo import run as run_demo

        return run_demo(sys.stdout, args.port)
    if args.command == "send" and (args.source is None) == (args.feed is None):
        send.error("give either SOURCE_URL or --feed FEED_URL")
    if args.command == "send" and args.source is not None and (args.since or args.limit):
        send.error("--since and --limit go with --feed")
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
    if args.command == "send" and args.feed is not None:
        return asyncio.run(_send_feed(args, settings))
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
        proxy_headers=False,  # the app reads them itself (PINGFORWARD_PROXY_HOPS)
        http="pingforward.server:HttpToolsProtocol",  # bounded request heads, as under the Procfile
        log_config=uvicorn_log_config(settings.log_format) or uvicorn.config.LOGGING_CONFIG,
    )
    return 0


def _date(text: str) -> datetime:
    when = parse_date(text)
    if when is None:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (say 2026-01-31 or 2026-01-31T12:00:00Z)")
    return when


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


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
        self.prefix = ""  # which entry of a feed

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()

    def step(self, result: Result) -> None:
        self.done += 1
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        self.show(f"{self.prefix}[{count}] {result.status} {_printable(result.target)}")

    def clear(self) -> None:
        self.show("")


async def _send(args: argparse.Namespace, settings: Settings) -> int:
    progress = _Progress(sys.stderr)
    limits = replace(DEFAULT_LIMITS, max_requests=args.max_requests)
    async with make_client(settings) as client:
        try:
            progress.show(f"fetching {_printable(args.source)}")
            budget = Budget(limits)
            source = await fetch_source(client, args.source, all_links=args.all_links, limits=limits, budget=budget)
            progress.total = len(source.targets)
            results = await notify(
                client, source, dry_run=args.dry_run, limits=limits, on_result=progress.step, budget=budget
            )
            report = Report(source.url, results)
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


def _table(results: Sequence[Result], out: TextIO, *, counts: bool = True) -> None:
    rows = [("STATUS", "VIA", "TARGET", "DETAIL")]
    # Targets and details quote what web pages and endpoints said.
    rows += [(r.status, r.protocol or "-", _printable(r.target), _printable(r.detail)) for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]), file=out)
    if counts:
        found = [f"{count} {status}" for status in Status if (count := sum(r.status == status for r in results))]
        print(", ".join(found) or "the post links to no other page", file=out)


# A feed is sent for from CI after a deploy, entry after entry: more time than one post needs.
FEED_DEADLINE = 600.0


async def _send_feed(args: argparse.Namespace, settings: Settings) -> int:
    progress = _Progress(sys.stderr)
    limits = replace(DEFAULT_LIMITS, max_requests=args.max_requests, deadline=FEED_DEADLINE)
    done: list[Report] = []
    picked = 0

    def on_feed(feed: Feed, count: int) -> None:
        nonlocal picked
        picked = count
        progress.prefix = f"entry 1/{picked} "
        progress.show(f"{feed.format} feed {_printable(feed.url)}: {count} of {len(feed.entries)} entries")

    def on_report(report: Report) -> None:
        # Each entry as it ends, so a CI log shows progress even when stderr is no terminal.
        progress.clear()
        if args.json:
            for line in _json_lines(report):
                print(json.dumps(line), flush=True)
        else:
            _entry_table(report, sys.stdout)
        done.append(report)
        progress.prefix = f"entry {len(done) + 1}/{picked} "
        progress.done = 0

    progress.show(f"fetching {_printable(args.feed)}")
    async with make_client(settings) as client:
        try:
            feed_report = await send_feed(
                client,
                args.feed,
                since=args.since,
                limit=args.limit,
                all_links=args.all_links,
                dry_run=args.dry_run,
                limits=limits,
                on_feed=on_feed,
                on_result=progress.step,
                on_report=on_report,
            )
        except SendError as exc:
            progress.clear()
            if args.json:
                print(json.dumps({"feed": args.feed, "status": exc.status, "detail": exc.detail}))
            print(f"pingforward send: {_printable(args.feed)}: {_printable(exc.detail)}", file=sys.stderr)
            return 1
    progress.clear()
    summary = _summary(feed_report)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(_summary_line(summary))
    return 0 if feed_report.ok else 1


def _json_lines(report: Report) -> list[dict[str, object]]:
    published = report.published.isoformat() if report.published else None
    if report.status is not None:
        return [
            {
                "source": report.source,
                "published": published,
                "target": None,
                "status": report.status,
                "detail": report.detail,
            }
        ]
    return [{"source": report.source, "published": published, **asdict(result)} for result in report.results]


def _entry_table(report: Report, out: TextIO) -> None:
    when = f" ({report.published:%Y-%m-%d})" if report.published else ""
    print(f"== {_printable(report.source)}{when}", file=out)
    if report.status is not None:
        print(f"{report.status}  {_printable(report.detail or '')}", file=out)
    elif report.results:
        _table(report.results, out, counts=False)
    else:
        print("the post links to no other page", file=out)
    print(file=out, flush=True)


def _summary(report: FeedReport) -> dict[str, object]:
    """Counts for the end of a run: entries, targets, and each bucket (entries whose page failed included)."""
    results = [result for entry in report.entries for result in entry.results]
    buckets = {status.value: 0 for status in Status}
    for status in [*(r.status for r in results), *(e.status for e in report.entries if e.status is not None)]:
        buckets[status] += 1
    return {
        "feed": report.url,
        "format": report.format,
        "listed": report.listed,
        "entries": len(report.entries),
        "unreadable_entries": sum(entry.status is not None for entry in report.entries),
        "targets": len(results),
        **buckets,
        "ok": report.ok,
    }


def _summary_line(summary: dict[str, object]) -> str:
    counts = ", ".join(f"{summary[status]} {status}" for status in Status if summary[status])
    unreadable = f" ({summary['unreadable_entries']} unreadable)" if summary["unreadable_entries"] else ""
    return f"{summary['entries']} of {summary['listed']} entries{unreadable}, {summary['targets']} targets" + (
        f": {counts}" if counts else ""
    )
