"""Real servers on 127.0.0.1 for end-to-end tests: a scriptable webmention receiver and the proxy itself."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).parent.parent


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webmention receiver whose answer is chosen by the request path (see `_Handler`)."""

    url: str
    received: list[Received] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    """/ok, /created, /error/NAME, /status/N, /redirect/N/PATH, /hang, /big, /gzip-bomb, /endless."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        receiver = self.server.receiver
        receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        parts = self.path.split("?")[0].strip("/").split("/")
        match parts:
            case ["ok"]:
                self._send(202, {"result": "Webmention accepted"})
            case ["created"]:
                self._send(201, {"summary": "Queued"}, {"Location": "/status-page/1"})
            case ["error", name]:
                self._send(400, {"error": name, "error_description": f"test {name}"})
            case ["status", code]:
                self._send(int(code), {})
            case ["redirect", code, *rest]:
                self._send(int(code), {}, {"Location": "/" + "/".join(rest)})
            case ["hang"]:
                receiver.stop.wait(10)  # bounded: the test's timeout is far shorter
                self._send(202, {})
            case ["big"]:
                self.send_response(202)
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                chunk = b"x" * 65536
                for _ in range(800):
                    if receiver.stop.is_set():
                        break
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        break
            case ["endless"]:
                self.send_response(202)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(100_000):
                    if receiver.stop.is_set():
                        break
                    try:
                        self.wfile.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
                    except OSError:
                        break
            case ["no-headers"]:
                self.wfile.write(b"HTTP/1.1 202 Accepted\r\n")
                self.wfile.flush()
                receiver.stop.wait(10)
            case ["gzip-bomb"]:
                import gzip

                bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
                self.send_response(202)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                self.wfile.write(bomb)
            case _:
                self._send(404, {"error": "not_found"})

    def _send(self, status: int, data: dict[str, str], headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@contextmanager
def receiver() -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.receiver
    finally:
        server.receiver.stop.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_command(port: int) -> list[str]:
    """The Procfile's web command, bound to 127.0.0.1 instead of 0.0.0.0 for tests."""
    line = (ROOT / "Procfile").read_text().split("web:", 1)[1].strip()
    args = shlex.split(line.replace("$PORT", str(port)))
    args[args.index("--host") + 1] = "127.0.0.1"
    return [str(Path(sys.executable).parent / args[0]), *args[1:]]


@contextmanager
def proxy(env: Mapping[str, str]) -> Iterator[str]:
    """The proxy under uvicorn, started with the Procfile's command; yields its base URL."""
    port = free_port()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PINGFORWARD_")}
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        procfile_command(port), cwd=ROOT, env={**environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(f"proxy did not start:\n{output}") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
