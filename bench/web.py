"""The web the spam checks read, for the benchmark: the site owner's post, honest blogs, and junk sources.

Listeners on loopback addresses, so that each is a destination of its own for the proxy:
127.0.0.1 serves the target post (a WordPress theme's page), 127.0.1.1 to 127.0.1.50 honest replies that
link to it (/honest/N, any N), 127.0.0.3 the junk: /nolink/N, /gone/N (404), /copy/N (a scraper's copy of the
target) and /hang/N (answers after 5 s). A raw asyncio protocol on uvloop, like sink.py, so that the
pages are never what limits the proxy. Prints one line with the three ports once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import cast

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import pages  # noqa: E402

HANG_SECONDS = 5.0
HONEST_HOSTS = 50  # honest blogs, each a host of its own: the windows count pings per source host


def answer(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


class Web(asyncio.Protocol):
    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes = routes
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # GETs only: no bodies
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            path = head.split(b" ", 2)[1].decode("latin-1")
            kind = path.strip("/").split("/")[0]
            reply = self.routes.get(kind, NOT_FOUND)
            if kind == "hang":
                asyncio.get_running_loop().call_later(HANG_SECONDS, self.write, reply)
            else:
                self.write(reply)

    def write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


NOT_FOUND = answer(b"404 Not Found", b"<p>Not found</p>")


async def serve(ports: tuple[int, int, int]) -> None:
    loop = asyncio.get_running_loop()
    target = f"http://127.0.0.1:{ports[0]}/target"
    honest = {"honest": answer(b"200 OK", pages.block_theme_reply(target))}
    sites = [
        ("127.0.0.1", {"target": answer(b"200 OK", pages.wordpress_post())}),
        *((f"127.0.1.{n}", honest) for n in range(1, HONEST_HOSTS + 1)),
        (
            "127.0.0.3",
            {
                "nolink": answer(b"200 OK", pages.block_theme_reply(target, link=False)),
                "copy": answer(b"200 OK", pages.scraper_copy(target)),
                "hang": answer(b"200 OK", pages.block_theme_reply(target)),
            },
        ),
    ]
    # The honest blogs share one port, each on its own address.
    port_of = {"127.0.0.1": ports[0], "127.0.0.3": ports[2]}
    servers = [
        await loop.create_server(lambda routes=routes: Web(routes), host, port_of.get(host, ports[1]), backlog=4096)  # type: ignore[misc]
        for host, routes in sites
    ]
    print(f"web listening on {ports}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", type=int, nargs=3, required=True, metavar=("TARGET", "HONEST", "JUNK"))
    args = parser.parse_args()
    uvloop.run(serve(tuple(args.ports)))


if __name__ == "__main__":
    main()
