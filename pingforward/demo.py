"""`pingforward demo`: one real pingback through the proxy to a Webmention receiver, all on this machine.

A small server (the blog's post, your post and your receiver) and the proxy run on 127.0.0.1 in this
process; Python's `xmlrpc.client` sends `pingback.ping` as a blog would, and each step is printed.
Nothing leaves the machine: the proxy forwards only to the receiver's host and port (the settings it
runs with are printed as step 2).
"""

from __future__ import annotations

import json
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import parse_qs, quote

import uvicorn

from pingforward.config import PREFIX, Settings

LOCALHOST: Final = "127.0.0.1"
# The demo's one small server plays the blog (its post, the ping's source), your site (your post, the
# target) and your Webmention receiver. The proxy reads the source before it forwards: it must link.
SOURCE_PATH: Final = "/blog/2024/05/a-reply"
TARGET_PATH: Final = "/your-site/2024/05/a-post"
PAGES: Final = {
    TARGET_PATH: "<!doctype html><title>A post</title><article><p>Your post.</p></article>",
    SOURCE_PATH: '<!doctype html><title>A reply</title><article><p>A reply to <a href="{target}">a post</a>.</p>'
    "</article>",
}
PACKAGE: Final = Path(__file__).resolve().parent


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True
    received: list[dict[str, list[str]]]


class _Webmention(BaseHTTPRequestHandler):
    """Accepts every Webmention as webmention.io does: 202 and a JSON `result`; serves the two posts."""

    server: _Receiver

    def do_GET(self) -> None:
        page = PAGES.get(self.path)
        target = f"http://{LOCALHOST}:{self.server.server_address[1]}{TARGET_PATH}"
        body = (page or "not found").format(target=target).encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.received.append(parse_qs(self.rfile.read(length).decode("utf-8", "replace")))
        body = json.dumps({"result": "Webmention accepted by the demo receiver"}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _receiver() -> Iterator[_Receiver]:
    server = _Receiver((LOCALHOST, 0), _Webmention)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _proxy(settings: Settings, port: int) -> Iterator[str]:
    from pingforward.app import create_app

    config = uvicorn.Config(
        create_app(settings), host=LOCALHOST, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # 10 s at most
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        if not server.started:
            raise OSError(f"the proxy could not listen on {LOCALHOST}:{port}")
        yield f"http://{LOCALHOST}:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=25)


def local_settings(receiver_port: int) -> dict[str, str]:
    """The settings that let the proxy forward to a receiver on this machine, and nowhere else."""
    return {
        PREFIX + "ALLOW_PRIVATE_NETWORKS": "true",  # the receiver is on 127.0.0.1
        PREFIX + "ALLOWED_PORTS": str(receiver_port),  # on a port other than 80, 443, 8080 or 8443
        PREFIX + "ALLOWED_HOSTS": LOCALHOST,  # and only there
    }


def run(out: TextIO, port: int = 0) -> int:
    """Start a receiver and the proxy, send one pingback through, print each step; 0 if it arrived."""
    with _receiver() as receiver:
        here = f"http://{LOCALHOST}:{receiver.server_address[1]}"
        endpoint, source, target = here + "/webmention", here + SOURCE_PATH, here + TARGET_PATH
        print(f"1. A Webmention receiver (your site's endpoint) listens at {endpoint}", file=out)
        environ = local_settings(receiver.server_address[1])
        settings = Settings.from_environ(environ)
        with _proxy(settings, port) as base:
            shown = " ".join(f"{name}={value}" for name, value in environ.items())
            print(f"2. pingforward listens at {base}/ with {shown}", file=out)
            pingback_url = f"{base}/?forward={quote(endpoint, safe='')}"
            print(f'3. Your post would advertise it: <link rel="pingback" href="{pingback_url}">', file=out)
            print(
                f"4. A blog sends pingback.ping({source!r}, {target!r}) to it with xmlrpc.client; the proxy "
                "reads the source and forwards the ping because the source links to the target",
                file=out,
            )
            out.flush()  # the proxy's own log line for the ping comes next, on stdout
            with xmlrpc.client.ServerProxy(pingback_url) as proxy:
                try:
                    answer = f"success: {proxy.pingback.ping(source, target)!r}"
                except xmlrpc.client.Fault as fault:
                    answer = f"fault {fault.faultCode}: {fault.faultString!r}"
        for form in receiver.received:
            fields = ", ".join(f"{name}={values[0]}" for name, values in form.items())
            print(f"5. The receiver got a Webmention POST: {fields}", file=out)
        if not receiver.received:
            print("5. The receiver got nothing", file=out)
        print(f"6. The blog was told: {answer}", file=out)
    if not receiver.received:
        return 1
    print(
        f"\nThat is the whole trip. Next: `{serve_command()}` (it holds the terminal; Ctrl-C stops it) and the tag "
        "builder at http://127.0.0.1:8000/; to forward to a receiver on this machine, start it with the settings of "
        "step 2.",
        file=out,
    )
    return 0


def serve_command(package: Path = PACKAGE) -> str:
    """How to start the proxy, as it was installed: `make run` in a clone (an editable install beside the
    Makefile that `make demo` uses), else `pingforward serve` (pipx, pip)."""
    clone = package.parent
    if (clone / "Makefile").is_file() and (clone / "pyproject.toml").is_file():
        return "make run"
    return "pingforward serve"
