from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from pingforward import __version__
from pingforward.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"pingforward {__version__}\n"


def test_module_and_script_agree() -> None:
    script = Path(sys.executable).with_name("pingforward")
    as_module = subprocess.run([sys.executable, "-m", "pingforward", "--version"], capture_output=True, timeout=30)
    as_script = subprocess.run([str(script), "--version"], capture_output=True, timeout=30)
    assert as_module.returncode == as_script.returncode == 0
    assert as_module.stdout == as_script.stdout == f"pingforward {__version__}\n".encode()


def test_serve_options(monkeypatch: pytest.MonkeyPatch, local_env: dict[str, str]) -> None:
    # Serving itself is tested through real processes (tests/servers.py); this checks the wiring.
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    monkeypatch.setenv("PINGFORWARD_LOG_FORMAT", "text")  # restored after main() overwrites it
    argv = ["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "3", "--log-format", "json"]
    assert main(argv) == 0
    (call,) = calls
    assert call["app"] == "pingforward.app:create_app" and call["factory"] is True
    assert (call["host"], call["port"], call["workers"]) == ("0.0.0.0", 9001, 3)
    assert os.environ["PINGFORWARD_LOG_FORMAT"] == "json"  # how worker processes learn it

    assert main(["serve"]) == 0
    assert (calls[1]["host"], calls[1]["port"], calls[1]["workers"]) == ("127.0.0.1", 8000, None)


def test_bad_setting_stops_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], local_env: dict[str, str]
) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("must not serve"))
    monkeypatch.setenv("PINGFORWARD_TIMEOUT", "soon")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.startswith("pingforward: PINGFORWARD_TIMEOUT: ")


def test_bad_log_format_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--log-format", "xml"])
    assert exit.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
