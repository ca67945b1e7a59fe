"""Local use: `make demo` sends one real ping through, `make run` takes a port and logs one line per ping."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from urllib.parse import quote

import pytest

from pingforward.cli import main
from pingforward.demo import SOURCE_PATH, TARGET_PATH
from tests.servers import LOCAL_ENV, ROOT, free_port, receiver, running, serve_site


def make_dry_run(*args: str) -> list[str]:
    """The commands `make` would run, without running them."""
    # Also when the tests run under `make test`: not as a sub-make, which would print directories.
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    command = ["make", "-n", "--no-print-directory", *args]
    done = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


def test_demo_shows_one_ping_all_the_way(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"], environ={}) == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line[:2] in {f"{n}." for n in range(1, 7)}]
    assert [line[0] for line in steps] == list("123456")
    assert "PINGFORWARD_ALLOW_PRIVATE_NETWORKS=true" in steps[1] and "PINGFORWARD_ALLOWED_PORTS=" in steps[1]
    assert f"{SOURCE_PATH}, target=http://127.0.0.1:" in steps[4] and steps[4].endswith(TARGET_PATH)
    assert steps[5] == "6. The blog was told: success: 'Webmention accepted by the demo receiver'"
    (log,) = [line for line in out.splitlines() if " ping client=" in line]  # the proxy's own line
    assert "status=202 outcome=ok" in log
    assert out.splitlines()[-1].startswith("That is the whole trip. Next: `make run` (it holds the terminal")


def test_the_demo_names_the_command_of_how_it_was_installed(tmp_path: Path) -> None:
    from pingforward import demo

    clone = tmp_path / "clone"
    (clone / "pingforward").mkdir(parents=True)
    (clone / "Makefile").write_text("run:\n")
    (clone / "pyproject.toml").write_text("")
    assert demo.serve_command(clone / "pingforward") == "make run"
    # pipx and pip put the package in a site-packages directory, with no Makefile beside it.
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages" / "pingforward"
    site.mkdir(parents=True)
    assert demo.serve_command(site) == "pingforward serve"


def test_make_demo_runs_the_demo() -> None:
    assert make_dry_run("demo")[-1] == ".venv/bin/pingforward demo"


def test_make_run_takes_a_port_and_logs_one_line_per_ping(tmp_path: Path) -> None:
    port = free_port()
    command = shlex.split(make_dry_run("run", f"PORT={port}")[-1])
    assert command[-2:] == ["--port", str(port)]
    target = "https://site.example/2024/05/a-post"
    with receiver() as wm, serve_site() as blog, running(command, port, LOCAL_ENV, tmp_path / "run.log") as server:
        blog.routes[("GET", "/reply")] = (200, [], f'<a href="{target}">a post</a>'.encode())
        with xmlrpc.client.ServerProxy(f"{server.base}/?forward={quote(wm.url + '/ok', safe='')}") as proxy:
            assert proxy.pingback.ping(blog.url("/reply"), target) == "Webmention accepted"
        for _ in range(50):  # the line is written at the end of the event loop's turn
            if " ping client=" in server.output():
                break
            time.sleep(0.1)
        lines = [line for line in server.output().splitlines() if "/?forward=" in line or " ping " in line]
    # uvicorn's access log would add a second line ("POST /?forward=... HTTP/1.1" 200) for the same ping.
    assert len(lines) == 1 and "outcome=ok" in lines[0], server.output()
