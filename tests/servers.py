"""Real servers on 127.0.0.1 for end-to-end tests: static pages, the app under uvicorn, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

LOCALHOST = "127.0.0.1"
# Environment for tests whose servers all listen on 127.0.0.1. Once the address policy lands,
# this is the one place where loopback gets allowed for them (`local_settings`, `local_env`).
LOCAL_ENV: dict[str, str] = {}


@asynccontextmanager
async def app_client(app: Starlette, base_url: str = "http://pf.test") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling `app` in process, with the app's lifespan running (ASGITransport runs none)."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url=base_url) as client:
            yield client


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Site:
    """Canned replies by path; `requests` records (method, path, body) of everything received."""

    replies: dict[str, Reply]
    base: str = ""
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


@contextmanager
def serve_site(replies: Mapping[str, Reply]) -> Iterator[Site]:
    """Serve canned replies from a thread; unknown paths get 404."""
    site = Site(dict(replies))

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bool) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            site.requests.append((self.command, self.path, self.rfile.read(length) if length else b""))
            reply = site.replies.get(self.path, Reply(404, b"not found"))
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if body:
                self.wfile.write(reply.body)

        def do_GET(self) -> None:
            self._reply(True)

        def do_POST(self) -> None:
            self._reply(True)

        def do_HEAD(self) -> None:
            self._reply(False)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
    site.base = f"http://{LOCALHOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve_app(app: ASGIApp) -> Iterator[str]:
    """Run `app` under uvicorn in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host=LOCALHOST, port=0, log_level="warning", access_log=False))
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
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


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
    log = tmp / f"serve-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PINGFORWARD_")}
    environ.update(LOCAL_ENV)
    environ.update(env or {})
    command = [sys.executable, "-m", "pingforward", "serve", "--host", LOCALHOST, "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ)
    process = Process(f"http://{LOCALHOST}:{port}", proc, log)
    try:
        for _ in range(150):  # bounded: about 15 s
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
