"""Real servers on 127.0.0.1 for end-to-end tests: a scriptable webmention receiver, the proxy itself,
canned web pages, an app under uvicorn in a thread, and `pingforward serve`."""

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
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import uvicorn
from starlette.types import ASGIApp

ROOT = Path(__file__).parent.parent
LOCALHOST = "127.0.0.1"
# For tests whose servers all listen on 127.0.0.1 at random ports (`local_settings`, `local_env`).
LOCAL_ENV: dict[str, str] = {"PINGFORWARD_ALLOW_PRIVATE_NETWORKS": "true", "PINGFORWARD_ALLOWED_PORTS": "*"}


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
    """/ok, /created, /error/NAME, /status/N, /redirect/N/PATH, /hang, /big, /gzip-bomb, /endless, and answers
    whose status is all that can be read: /page, /stall/N, /identity-cut, /garbage, /huge-error."""

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
            case ["page"]:  # a CMS that answers with a whole HTML page
                self._raw(200, b"<!doctype html><p>" + b"thanks " * (100 * 1024 // 7), "text/html")
            case ["stall", code]:  # the head, a little of the body, then nothing
                self.send_response(int(code))
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"error": ')
                self.wfile.flush()
                receiver.stop.wait(10)
            case ["identity-cut"]:  # a body ended by closing the connection, before its end
                self.send_response(200)
                self.send_header("Transfer-Encoding", "identity")
                self.end_headers()
                self.wfile.write(b'{"result": "half')
                self.wfile.flush()
                self.close_connection = True
            case ["garbage"]:
                self._raw(202, b"\x00\xff<<not json", "application/json")
            case ["huge-error"]:
                self._raw(400, b'{"error": "no_link_found"' + b" " * (1024 * 1024) + b"}", "application/json")
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

    def _raw(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the proxy stops reading a body it does not need
            pass

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
def receiver(host: str = LOCALHOST, port: int = 0) -> Iterator[Receiver]:
    server = _Server((host, port), _Handler)
    server.receiver = Receiver(f"http://{host}:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.receiver
    finally:
        server.receiver.stop.set()
        server.shutdown()
        server.server_close()


def ping(
    base: str, forward: str, source: str = "https://blog.example/post", target: str = "https://site.example/notes/42"
) -> str | tuple[int, str]:
    """One pingback through the proxy at `base` with Python's xmlrpc.client: the answer, or (fault code, string)."""
    with xmlrpc.client.ServerProxy(f"{base}/?forward={quote(forward, safe='')}") as server:
        try:
            return str(server.pingback.ping(source, target))
        except xmlrpc.client.Fault as fault:
            return fault.faultCode, fault.faultString


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
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(procfile_command(port), port, env, Path(tmp) / "proxy.log") as p,
    ):
        yield p.base


@contextmanager
def procfile_server(tmp: Path, env: Mapping[str, str]) -> Iterator[Process]:
    """The Procfile's command on a free port of 127.0.0.1 (a real process tree with WEB_CONCURRENCY > 1)."""
    port = free_port()
    with running(procfile_command(port), port, env, tmp / f"procfile-{port}.log") as process:
        yield process


# Canned pages, an app in a thread and the CLI server (landing page, check, logs).


Answer = tuple[int, list[tuple[str, str]], bytes]
"""One canned reply: status, headers, body."""
NOT_FOUND: Answer = (404, [("Content-Type", "text/plain")], b"not found")


@dataclass(frozen=True)
class SiteRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


@dataclass
class Site:
    """A small web on 127.0.0.1: answers by (method, path with query), a log of every request.

    A route may be a function, called per request. HEAD gets the GET answer without its body."""

    port: int = 0
    host: str = LOCALHOST
    routes: dict[tuple[str, str], Answer | Callable[[], Answer]] = field(default_factory=dict)
    log: list[SiteRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def received(self, method: str, path: str) -> list[SiteRequest]:
        with self.lock:
            return [item for item in self.log if (item.method, item.path) == (method, path)]

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.log.append(SiteRequest(method, path, headers, body))
            if method == "HEAD" and (method, path) not in self.routes:
                method = "GET"
            route = self.routes.get((method, path), NOT_FOUND)
        return route() if callable(route) else route


@contextmanager
def serve_site(host: str = LOCALHOST) -> Iterator[Site]:
    """Serve a `Site` from a thread on `host` (any 127.0.0.x); its routes may be set while it runs."""
    web = Site(host=host)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, content = web.answer(method, self.path, dict(self.headers.items()), body)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(content)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    web.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def serve_app(app: ASGIApp, **options: Any) -> Iterator[str]:
    """Run `app` under uvicorn in a thread, with more `uvicorn.Config` options if given; yield its base URL."""
    config = uvicorn.Config(app, host=LOCALHOST, port=0, log_level="warning", access_log=False, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # bounded: 10 s
            if server.started:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("uvicorn did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{LOCALHOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Process:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_cli_server(tmp: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Process]:
    """`python -m pingforward serve` on a free port of 127.0.0.1, stdout and stderr to a file."""
    port = free_port()
    command = [sys.executable, "-m", "pingforward", "serve", "--host", LOCALHOST, "--port", str(port), *args]
    with running(command, port, {**LOCAL_ENV, **(env or {})}, tmp / f"serve-{port}.log") as process:
        yield process


@contextmanager
def running(command: list[str], port: int, env: Mapping[str, str], log: Path) -> Iterator[Process]:
    """Run a server with `env` as its only PINGFORWARD_* settings, from once /healthz answers until the block ends."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PINGFORWARD_")} | dict(env)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=environ)
    process = Process(f"http://{LOCALHOST}:{port}", proc, log)
    try:
        for _ in range(200):  # bounded: about 20 s
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {process.output()}")
            try:
                if httpx.get(process.base + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not answer /healthz: {process.output()}")
        yield process
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# A real redis-server for the shared windows.


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    dir: Path = field(default_factory=Path)

    def start(self) -> None:
        """Start (or start again, on the same port and with an empty state) and wait until it answers."""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", LOCALHOST, "--dir", str(self.dir)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):  # bounded: about 10 s
            try:
                with socket.create_connection((LOCALHOST, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def redis_available() -> str | None:
    """Why the Redis tests cannot run here, or None. CI sets REQUIRE_REDIS=1 so that they fail instead of skipping."""
    import shutil

    if shutil.which("redis-server"):
        return None
    if os.environ.get("REQUIRE_REDIS") == "1":
        raise RuntimeError("REQUIRE_REDIS=1 but redis-server is not on PATH")
    return "redis-server is not installed (Debian: apt-get install redis-server)"


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of its own on 127.0.0.1 at a free port, in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = RedisServer(f"redis://{LOCALHOST}:{port}/0", port, dir=Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()
