"""The Dockerfile's steps run as written, without an image builder, and the CLI installs without a clone.

The install steps (RUN) run in a fresh virtual environment inside a directory laid out as the image's
WORKDIR; the start command (CMD) and the health check then run there, as the image's numeric user when
the tests run as root. Only the host changes: 127.0.0.1 instead of the image's 0.0.0.0.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port

PIP_TIMEOUT = 120
# `make` leaves the exact pins here as wheels: pip installs from them and never asks the package registry.
WHEELS = ROOT / ".venv" / "wheels"


@dataclass(frozen=True)
class Dockerfile:
    steps: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuation lines joined

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.steps if name == instruction]

    def one(self, instruction: str) -> str:
        (args,) = self.all(instruction)
        return args

    @property
    def env(self) -> dict[str, str]:
        pairs = [pair.split("=", 1) for args in self.all("ENV") for pair in shlex.split(args)]
        return {name: value for name, value in pairs}


def dockerfile() -> Dockerfile:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    steps = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return Dockerfile([(name.upper(), args) for name, args in steps])


def procfile_web() -> str:
    return (ROOT / "Procfile").read_text().split("web:", 1)[1].strip()


def test_image_runs_the_procfile_command_as_a_user() -> None:
    image = dockerfile()
    # One start command for every platform: change the Procfile, change the Dockerfile with it.
    assert image.one("CMD") == "exec " + procfile_web()
    user = image.one("USER").split(":")[0]
    assert user not in ("root", "0")
    assert image.one("HEALTHCHECK").split(" CMD ", 1)[1].startswith("python -c ")
    assert "PORT" in image.env


def test_make_run_serves_the_procfile_command_on_port() -> None:
    # `pingforward serve` runs the Procfile's command (tests/test_cli.py); `make run` runs it on $PORT.
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")} | {"PORT": "9000"}
    done = subprocess.run(["make", "-n", "run"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == ".venv/bin/pingforward serve --host 127.0.0.1 --port 9000"


def test_dockerignore_sends_only_what_is_copied() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # nothing from the checkout (.git, .venv, .env) unless named below
    copied = {src.rstrip("/") for args in dockerfile().all("COPY") for src in args.split()[:-1]}
    assert copied == {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin"


def _offline(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with pip told to install only from the local wheels (pip reads PIP_* variables as its options)."""
    if not WHEELS.is_dir():
        pytest.skip(f"no local wheels in {WHEELS}: `make test` builds them when it installs")
    return environ | {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Path, dict[str, str], Dockerfile]]:
    """WORKDIR laid out by the COPY steps, the RUN steps done in a fresh venv: (workdir, environment, Dockerfile)."""
    with tempfile.TemporaryDirectory(prefix="pingforward-image-") as tmp:  # not under pytest's private base
        yield _build(Path(tmp))


def _build(root: Path) -> tuple[Path, dict[str, str], Dockerfile]:
    spec = dockerfile()
    workdir = root / spec.one("WORKDIR").strip("/")
    workdir.mkdir(parents=True)
    for args in spec.all("COPY"):
        *sources, target = args.split()
        for source in sources:
            destination = workdir / target / source if target.endswith("/") else workdir / target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, destination)
    bin_dir = _fresh_venv(root / "venv")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PINGFORWARD_", "VIRTUAL_ENV"))}
    environ |= spec.env | {"PATH": f"{bin_dir}{os.pathsep}{environ.get('PATH', '')}"}
    for command in spec.all("RUN"):
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=workdir,
            env=_offline(environ),
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
    # The image's files belong to root and are only read by its user.
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return workdir, environ, spec


def _as_image_user(spec: Dockerfile) -> list[str]:
    if os.geteuid() != 0:
        return []
    uid, _, gid = spec.one("USER").partition(":")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]


def _healthy(command: str, workdir: Path, environ: dict[str, str]) -> bool:
    return subprocess.run(["sh", "-c", command], cwd=workdir, env=environ, timeout=30).returncode == 0


@pytest.mark.slow
def test_image_starts_serves_and_stops(image: tuple[Path, dict[str, str], Dockerfile], tmp_path: Path) -> None:
    workdir, environ, spec = image
    port = free_port()
    environ = environ | {"PORT": str(port), "WEB_CONCURRENCY": "2"}
    command = spec.one("CMD").replace("--host 0.0.0.0", "--host 127.0.0.1")
    assert command != spec.one("CMD")
    health = spec.one("HEALTHCHECK").split(" CMD ", 1)[1]
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_as_image_user(spec), "sh", "-c", command], cwd=workdir, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(100):  # bounded: about 20 s
            assert proc.poll() is None, log.read_text()
            if _healthy(health, workdir, environ):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the health check never passed: {log.read_text()}")
        answer = httpx.post(f"http://127.0.0.1:{port}/", content=b"<methodCall>", trust_env=False, timeout=10)
        assert answer.status_code == 200 and b"<fault>" in answer.content
        for _ in range(100):  # both workers have started once each has said so
            if log.read_text().count("Started server process") == 2:
                break
            time.sleep(0.1)
        assert log.read_text().count("Started server process") == 2, log.read_text()  # WEB_CONCURRENCY=2
    finally:
        # `exec` made uvicorn the process itself: the stop signal reaches it, not a shell.
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    assert returncode == 0, log.read_text()
    assert "Closed the listening socket" in log.read_text()  # pingforward's supervisor, before the drain
    assert not _healthy(health, workdir, environ)


@pytest.mark.slow
def test_image_has_the_cli(image: tuple[Path, dict[str, str], Dockerfile]) -> None:
    workdir, environ, spec = image
    done = subprocess.run(
        ["sh", "-c", "pingforward --version"], cwd="/", env=environ, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.startswith("pingforward "), done.stderr


@pytest.mark.slow
def test_cli_installs_from_the_repository(tmp_path: Path) -> None:
    # What `pipx install git+https://github.com/pingforward/pingforward` does: the project, not a
    # checkout, into an environment of its own, its dependencies from pyproject.toml's ranges.
    bin_dir = _fresh_venv(tmp_path / "venv")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    source = tmp_path / "src"  # a copy without the checkout's build output, as a git clone has
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".*_cache")
    )
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", str(source)]
    done = subprocess.run(pip, env=_offline(environ), capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert done.returncode == 0, done.stderr
    # Run from elsewhere, so that only the installed package can answer.
    helped = subprocess.run(
        [str(bin_dir / "pingforward"), "--help"], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0, helped.stderr
    assert "check" in helped.stdout and "send" in helped.stdout
    # Installed this way there is no Makefile: the demo's last line names the command that is there.
    demo = subprocess.run(
        [str(bin_dir / "pingforward"), "demo"], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60
    )
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines()[-1].startswith("That is the whole trip. Next: `pingforward serve` (it holds")
