"""The latency floor of any proxy on this topology: a relay that does no HTTP work at all.

It answers every request on `--port` with a fixed XML-RPC success after relaying one fixed
Webmention to the sink on `--sink`, over one kept-alive connection per incoming connection, and
parses nothing but the ends of the messages. What it adds at c=1 over posting straight to the
sink is what the extra hop costs between the cores, not what any proxy's code costs (bench/README.md,
"Latency at one connection"). For example, with `bench/sink.py --port 9101` running on core 1:

    taskset -c 0 .venv/bin/python bench/floor.py --port 9102 --sink 9101
    taskset -c 1 wrk -t1 -c1 -d5s -s bench/ping.lua http://127.0.0.1:9102 -- ok / ping.xml
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

WEBMENTION = (
    b"POST /webmention HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 17\r\n\r\nsource=a&target=b"
)
SUCCESS = (
    b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><string>ok</string></value>\n"
    b"</param>\n</params>\n</methodResponse>\n"
)
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: %d\r\n\r\n%s" % (len(SUCCESS), SUCCESS)


class Upstream(asyncio.Protocol):
    """A connection to the sink for one downstream connection; the sink's JSON answer ends in "}"."""

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"}"):
            self.received = b""
            self.downstream.answer()


class Downstream(asyncio.Protocol):
    """One connection from wrk, with its own connection to the sink; a request ends with its XML-RPC body."""

    def __init__(self, sink: int) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.received = b""
        self.pending = 0  # requests received before the connection to the sink was there

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connecting = asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", self.sink)
        for _ in range(self.pending):
            self.upstream.write(WEBMENTION)

    def data_received(self, data: bytes) -> None:
        self.received += data
        while b"</methodCall>" in self.received:
            self.received = self.received.split(b"</methodCall>", 1)[1]
            if self.upstream is None:
                self.pending += 1
            else:
                self.upstream.write(WEBMENTION)

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ANSWER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, sink: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Downstream(sink), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sink", type=int, required=True, help="port of bench/sink.py on 127.0.0.1")
    arguments = parser.parse_args()
    uvloop.run(main(arguments.port, arguments.sink))
