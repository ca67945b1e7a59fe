"""A fast Webmention receiver for the benchmark: answers every POST with 202 Accepted.

A raw asyncio protocol on uvloop, so that the sink is never what limits the proxy (run.py measures
its own rate). `--delay` holds every answer back, like a receiver that verifies synchronously.
Keep-alive as in HTTP/1.1; no chunked request bodies (the proxy sends Content-Length).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from typing import cast

import uvloop

BODY = b'{"status":"queued","summary":"Webmention was queued for processing"}'
ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
ANSWER_CLOSE = ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Sink(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            start = head.find(b"\r\ncontent-length:")
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            answer = ANSWER_CLOSE if b"\r\nconnection: close" in head else ANSWER
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.answer, answer)
            else:
                self.answer(answer)

    def answer(self, answer: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(answer)
        if answer is ANSWER_CLOSE:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, delay: float, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Sink(delay), host, port, backlog=4096, ssl=tls)
    print(f"sink listening on {host}:{port} delay={delay} tls={tls is not None}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve https with this certificate chain")
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*args.tls)
    uvloop.run(serve(args.host, args.port, args.delay, tls))


if __name__ == "__main__":
    main()
