"""Command line: `pingforward serve` runs the proxy without a Procfile, `check` tests a site, `send` notifies links,
`demo` shows one ping all the way through."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Final, TextIO

from pingforward import __version__, sendstate
from pingforward.check import Verdict, check
from pingforward.config import PREFIX, LogFormat, Settings
from pingforward.errors import ConfigError
from pingforward.feed import Feed, parse_date
from pingforward.net.transport import make_client
from pingforward.pingback import is_http_url
from pingforward.send import (
    DEFAULT_LIMITS,
    Report,
    Result,
    SendError,
    Source,
    Status,
    feed_summary,
    problem_json,
    report_lines,
    send_feed,
    send_post,
)
from pingforward.sendstate import Change, Plan, PostRecord, State, StateError


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pingforward", description="Pingback-to-Webmention forwarding proxy.")
    parser.add_argument("--version", action="version", version=f"pingforward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy under uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1; 0.0.0.0 for all interfaces")
    serve.add_argument("--port", type=_port, default=None, help=f"default: $PORT or {DEFAULT_PORT}")
    serve.add_argument("--workers", type=_positive, default=None, help="default: $WEB_CONCURRENCY or 1")
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
    send.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="remember what was sent in FILE (JSON) and send only what changed since: new posts, edits, deletions "
        "(410), and what is worth retrying; a missing FILE means a first run",
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
    if args.command == "send" and not is_http_url(given := (args.source or args.feed).strip()):
        send.error(f"{given!r} is not an absolute http(s) URL (say https://{given.split('://')[-1].lstrip('/')})")
    environ = os.environ if environ is None else environ
    if args.command == "serve" and args.log_format is not None:
        # The app factory reads its settings from the environment, in every worker process.
        os.environ[PREFIX + "LOG_FORMAT"] = args.log_format
        environ = {**environ, PREFIX + "LOG_FORMAT": args.log_format}
    try:
        settings = Settings.from_environ(environ)
    except ConfigError as exc:
        print(f"pingforward: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        return asyncio.run(_check(settings, args.page_url, ping=args.ping, source=args.source, as_json=args.json))
    if args.command == "send" and args.feed is not None:
        return asyncio.run(_send_feed(args, settings))
    if args.command == "send":
        return asyncio.run(_send(args, settings))

    try:
        port = args.port or _port_from(environ)
    except argparse.ArgumentTypeError as exc:
        print(f"pingforward: PORT: {exc}", file=sys.stderr)
        return 2
    from pingforward import supervisor

    options = [*SERVER_OPTIONS, "--host", args.host, "--port", str(port)]
    options += [] if args.workers is None else ["--workers", str(args.workers)]
    options += ["--log-config", str(supervisor.JSON_LOG_CONFIG)] if settings.log_format is LogFormat.JSON else []
    # The Procfile's command with another host and port: one server configuration however it is started.
    supervisor.main(options)
    return 0


# uvicorn's options in the Procfile and the Dockerfile, less --host and --port (tests/test_cli.py compares them).
SERVER_OPTIONS: Final = (
    "--factory",
    "pingforward.app:create_app",
    "--loop",
    "uvloop",
    "--http",
    "pingforward.server:HttpToolsProtocol",
    "--no-proxy-headers",
    "--timeout-graceful-shutdown",
    "20",
    "--no-access-log",
)
DEFAULT_PORT: Final = 8000


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number from 1 to 65535: {text!r}")
    return value


def _port_from(environ: Mapping[str, str]) -> int:
    """$PORT, which a PaaS sets and `make run` passes on, else the default."""
    text = environ.get("PORT", "").strip()
    return _port(text) if text else DEFAULT_PORT


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


def _load_state(path: Path | None) -> State | None:
    """The state file's state, an empty one when it does not exist yet; raise `StateError` when unusable."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not path.parent.is_dir():  # found now, not when the first post's record cannot be written
            raise StateError(f"there is no directory {path.parent}") from None
        return State()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(str(exc)) from None
    return sendstate.loads(text)


def _save_state(path: Path, state: State) -> None:
    """Write the state so that a crash at any moment leaves the old file or the new one, never a mix.

    A temporary file in the same directory, flushed to disk, then renamed over the old one (rename is
    atomic within a file system, POSIX rename(2)); then the directory, so that the rename is kept too.
    """
    directory = path.parent
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:  # mkstemp makes the file private (0600); keep the mode the file had
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:
            os.chmod(temporary, 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(sendstate.dumps(state))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):  # only when writing failed
            os.unlink(temporary)
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a directory that cannot be opened (some platforms): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Remember:
    """The state of a run, written after each post when a file was given and this is no dry run."""

    def __init__(self, path: Path | None, state: State | None, dry_run: bool) -> None:
        self.path = None if dry_run else path
        self.posts = dict(state.posts) if state is not None else {}

    def __call__(self, url: str, kept: PostRecord | None) -> None:
        if kept is None:
            self.posts.pop(url, None)
        else:
            self.posts[url] = kept
        if self.path is not None:
            _save_state(self.path, State(self.posts))


def _state_or_exit(args: argparse.Namespace) -> State | None | int:
    try:
        return _load_state(args.state)
    except StateError as exc:
        print(
            f"pingforward send: cannot use the state file {args.state}: {exc}. Nothing was sent. Fix it, or remove "
            "it to start over (a missing file means a first run, which sends every link again).",
            file=sys.stderr,
        )
        return 2


def _unwritable(path: Path, exc: OSError) -> int:
    print(f"pingforward send: cannot write the state file {path}: {exc.strerror or exc}", file=sys.stderr)
    return 2


async def _send(args: argparse.Namespace, settings: Settings) -> int:
    state = _state_or_exit(args)
    if isinstance(state, int):
        return state
    remember = _Remember(args.state, state, args.dry_run)
    progress = _Progress(sys.stderr)
    limits = replace(DEFAULT_LIMITS, max_requests=args.max_requests)
    url = args.source.strip()

    def on_source(source: Source, plan: Plan) -> None:
        progress.total = len(plan.notify)

    async with make_client(settings) as client:
        try:
            progress.show(f"fetching {_printable(url)}")
            report, kept = await send_post(
                client,
                url,
                remember.posts.get(url),
                all_links=args.all_links,
                dry_run=args.dry_run,
                limits=limits,
                on_source=on_source,
                on_result=progress.step,
            )
        except SendError as exc:
            progress.clear()
            if args.json:
                print(json.dumps(problem_json("source", url, exc)))
            print(f"pingforward send: {_printable(url)}: {_printable(exc.detail)}", file=sys.stderr)
            return 1
    progress.clear()
    if state is not None:
        try:
            remember(url, kept)
        except OSError as exc:
            return _unwritable(args.state, exc)
    if args.json:
        for line in report_lines(report):
            print(json.dumps(line))
    else:
        _table(report.results, sys.stdout, counts=False)
        print(_post_line(report))
    return 0 if report.ok else 1


def _table(results: Sequence[Result], out: TextIO, *, counts: bool = True) -> None:
    rows = [("STATUS", "VIA", "TARGET", "DETAIL")]
    # Targets and details quote what web pages and endpoints said.
    rows += [(r.status, r.protocol or "-", _printable(r.target), _printable(r.detail)) for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows if results else ():
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]), file=out)
    if counts:
        print(_counts(results) or "the post links to no other page", file=out)


def _counts(results: Sequence[Result], waiting: int = 0) -> str:
    """Each bucket's count; "error" is what is worth retrying later, and says so."""
    found = [
        f"{count} {'to retry later (error)' if status is Status.ERROR else status}"
        for status in Status
        if (count := sum(r.status == status for r in results))
    ]
    if waiting:
        found.append(f"{waiting} waiting for the Retry-After of its target{'' if waiting == 1 else 's'}")
    return ", ".join(found)


def _post_line(report: Report) -> str:
    """The last line for one post: its counts, or why there was nothing to send."""
    counts = _counts(report.results, len(report.waiting))
    if report.reason is Change.UNCHANGED and not report.results:
        return "nothing new: the post has not changed since the last run" + (f"; {counts}" if counts else "")
    if report.reason is Change.DELETED:
        return f"the post is gone (410): {counts or 'no target to tell'}"
    return counts or "the post links to no other page"


# A feed is sent for from CI after a deploy, entry after entry: more time than one post needs.
FEED_DEADLINE = 600.0


async def _send_feed(args: argparse.Namespace, settings: Settings) -> int:
    state = _state_or_exit(args)
    if isinstance(state, int):
        return state
    remember = _Remember(args.state, state, args.dry_run)
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
            for line in report_lines(report):
                print(json.dumps(line), flush=True)
        else:
            _entry_table(report, sys.stdout)
        done.append(report)
        progress.prefix = f"entry {len(done) + 1}/{picked} "
        progress.done = 0

    feed_url = args.feed.strip()
    progress.show(f"fetching {_printable(feed_url)}")
    async with make_client(settings) as client:
        try:
            feed_report = await send_feed(
                client,
                feed_url,
                since=args.since,
                limit=args.limit,
                all_links=args.all_links,
                dry_run=args.dry_run,
                limits=limits,
                state=state,
                on_feed=on_feed,
                on_result=progress.step,
                on_report=on_report,
                on_record=remember,
            )
        except OSError as exc:  # from writing the state file: the next run would send again what this one did
            progress.clear()
            return _unwritable(args.state, exc)
        except SendError as exc:
            progress.clear()
            if args.json:
                print(json.dumps(problem_json("feed", feed_url, exc)))
            print(f"pingforward send: {_printable(feed_url)}: {_printable(exc.detail)}", file=sys.stderr)
            return 1
    progress.clear()
    summary = feed_summary(feed_report)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(_summary_line(summary))
    return 0 if feed_report.ok else 1


def _entry_table(report: Report, out: TextIO) -> None:
    when = f" ({report.published:%Y-%m-%d})" if report.published else ""
    print(f"== {_printable(report.source)}{when}", file=out)
    if report.status is not None:
        print(f"{report.status}  {_printable(report.detail or '')}", file=out)
    else:
        _table(report.results, out, counts=False)
        print(_post_line(report), file=out)
    print(file=out, flush=True)


def _summary_line(summary: Mapping[str, object]) -> str:
    counts = [f"{summary[status]} {status}" for status in Status if summary[status] and status is not Status.ERROR]
    if summary["retry_later"]:
        counts.append(f"{summary['retry_later']} to retry later")
    unreadable = f" ({summary['unreadable_entries']} unreadable)" if summary["unreadable_entries"] else ""
    line = f"{summary['entries']} of {summary['listed']} entries{unreadable}, {summary['targets']} targets"
    if summary["deleted"]:
        line += f", {summary['deleted']} deleted"
    if not summary["targets"] and not summary["retry_later"] and not summary["unreadable_entries"]:
        return f"{line}: nothing new to send"
    return line + (f": {', '.join(counts)}" if counts else "")
