from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pingforward import __version__, supervisor
from pingforward.cli import main
from tests.servers import LOCAL_ENV, ROOT, free_port, running


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


def procfile_options() -> list[str]:
    """The Procfile's uvicorn options, after `python -m pingforward.supervisor`."""
    command = shlex.split((ROOT / "Procfile").read_text().split("web:", 1)[1])
    assert command[:3] == ["python", "-m", "pingforward.supervisor"]
    return command[3:]


def with_address(options: list[str], host: str, port: str) -> list[str]:
    options = list(options)
    options[options.index("--host") + 1] = host
    options[options.index("--port") + 1] = port
    return options


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The uvicorn options of each `serve`, which is otherwise tested through real processes (tests/servers.py)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(supervisor, "main", lambda argv: calls.append(list(argv)))
    monkeypatch.setenv("PINGFORWARD_LOG_FORMAT", "text")  # restored after main() overwrites it
    return calls


def test_serve_runs_the_procfile_command(served: list[list[str]], local_env: dict[str, str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "3"]) == 0
    assert served[-1] == [*with_address(procfile_options(), "0.0.0.0", "9001"), "--workers", "3"]
    assert main(["serve", "--log-format", "json"], environ=local_env) == 0
    assert os.environ["PINGFORWARD_LOG_FORMAT"] == "json"  # how worker processes learn it
    assert served[-1][-2:] == ["--log-config", str(supervisor.JSON_LOG_CONFIG)]


@pytest.mark.parametrize(
    ("argv", "port", "expected"),
    [
        ([], None, "8000"),
        ([], "9000", "9000"),
        ([], " 9000 ", "9000"),
        ([], "", "8000"),
        (["--port", "9001"], "9000", "9001"),
        (["--port", "65535"], None, "65535"),
    ],
    ids=["default", "PORT", "PORT-spaces", "PORT-empty", "option-wins", "highest"],
)
def test_serve_port(
    served: list[list[str]], local_env: dict[str, str], argv: list[str], port: str | None, expected: str
) -> None:
    environ = local_env if port is None else {**local_env, "PORT": port}
    assert main(["serve", *argv], environ=environ) == 0
    assert served[-1] == with_address(procfile_options(), "127.0.0.1", expected)


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http", "80.5"])
def test_serve_refuses_a_port_that_is_not_one(
    served: list[list[str]], capsys: pytest.CaptureFixture[str], local_env: dict[str, str], port: str
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--port", port], environ=local_env)
    assert exit.value.code == 2
    assert f"argument --port: not a port number from 1 to 65535: '{port}'" in capsys.readouterr().err
    assert main(["serve"], environ={**local_env, "PORT": port}) == 2
    assert capsys.readouterr().err == f"pingforward: PORT: not a port number from 1 to 65535: '{port}'\n"
    assert served == []


def test_serve_listens_on_port_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "pingforward", "serve"]
    with running(command, port, {**LOCAL_ENV, "PORT": str(port)}, tmp_path / "serve.log") as server:
        assert f"Uvicorn running on http://127.0.0.1:{port} " in server.output()


def test_bad_setting_stops_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], local_env: dict[str, str]
) -> None:
    monkeypatch.setattr(supervisor, "main", lambda *args, **kwargs: pytest.fail("must not serve"))
    monkeypatch.setenv("PINGFORWARD_TIMEOUT", "soon")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.startswith("pingforward: PINGFORWARD_TIMEOUT: ")


def test_bad_log_format_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--log-format", "xml"])
    assert exit.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
