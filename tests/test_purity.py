"""The protocol modules stay pure: importing them pulls in no I/O library."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "pingforward.pingback",
        "pingforward.net.policy",
        "pingforward.webmention",
        "pingforward.markup",
        "pingforward.errors",
        "pingforward.sendstate",
        "pingforward.net.redirect",
        "pingforward.verify",
    ],
)
def test_pure_module_imports_no_io_library(module: str) -> None:
    io = ("httpx", "httpcore", "starlette", "asyncio", "anyio")
    code = f"import sys, {module}; print(sorted(m for m in {io!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
