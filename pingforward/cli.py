"""Command line: `pingforward serve` runs the proxy without a Procfile."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pingforward import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pingforward", description="Pingback-to-Webmention forwarding proxy.")
    parser.add_argument("--version", action="version", version=f"pingforward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None, help="default: $WEB_CONCURRENCY or 1")
    args = parser.parse_args(argv)

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
