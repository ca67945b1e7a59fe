"""Command line: `pingforward serve` runs the proxy without a Procfile, `pingforward check` tests a site."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from pingforward import __version__
from pingforward.check import Verdict, check
from pingforward.config import PREFIX, ConfigError, LogFormat, Settings
from pingforward.transport import make_client


def main(argv: Sequence[str] | None = None) -> int:
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

    args = parser.parse_args(argv)
    if args.command == "serve" and args.log_format is not None:
        # The app factory reads its settings from the environment, in every worker process.
        os.environ[PREFIX + "LOG_FORMAT"] = args.log_format
    try:
        settings = Settings.from_environ(os.environ)
    except ConfigError as exc:
        print(f"pingforward: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        return asyncio.run(_check(settings, args.page_url, ping=args.ping, source=args.source))

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


def _printable(text: str) -> str:
    # Findings quote what a web page said; keep its control characters off the terminal.
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}" for ch in text
    )


async def _check(settings: Settings, url: str, *, ping: bool, source: str | None) -> int:
    async with make_client(settings) as client:
        analysis = await check(client, url, ping=ping, source=source)
    for finding in analysis.findings:
        print(f"{finding.verdict.value:<4}  {_printable(finding.text)}")
    problems = sum(finding.verdict is Verdict.FAIL for finding in analysis.findings)
    print(f"{problems} problem{'' if problems == 1 else 's'} found" if problems else "no problems found")
    return 1 if problems else 0
