from __future__ import annotations

import json
import logging
import re
import sys
import xmlrpc.client
from pathlib import Path

import httpx
import pytest
import respx

from pingforward.config import LogFormat
from pingforward.pingback import FaultCode
from pingforward.pinglog import JsonFormatter, PingLine, TextFormatter, log_ping
from tests.servers import run_cli_server

LINE = PingLine(
    client="203.0.113.9",
    forward_host="webmention.io",
    source="https://a.example/post",
    target="https://b.example/post",
    status=202,
    fault=None,
    ms=12.345,
    request_id="f00-ba4",
    agent="WordPress/6.5; https://a.example",
)
HOSTILE = [
    "https://a.example/\ninfo forged line",
    "https://a.example/\r\nx",
    "https://a.example/\x85next",
    "https://a.example/\u2028next",
    "https://a.example/\u2029next",
    "https://a.example/\x1b[31mred",
    'https://a.example/" outcome=ok',
    "https://a.example/\\",
]


def record(line: PingLine) -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("tests.pinglog")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Keep()
    logger.addHandler(handler)
    try:
        log_ping(logger, line)
    finally:
        logger.removeHandler(handler)
    (only,) = captured
    return only


def test_text_line() -> None:
    assert TextFormatter().format(record(LINE)) == (
        "INFO tests.pinglog: ping client=203.0.113.9 forward_host=webmention.io source=https://a.example/post "
        'target=https://b.example/post status=202 outcome=ok ms=12.3 request_id=f00-ba4 agent="WordPress/6.5; '
        'https://a.example"'
    )


def test_text_line_without_optional_fields() -> None:
    line = PingLine("-", "-", "-", "-", None, FaultCode.GENERIC, 0.04)
    assert line.text() == "ping client=- forward_host=- source=- target=- status=- outcome=0 ms=0.0"


def test_json_line() -> None:
    entry = json.loads(JsonFormatter().format(record(LINE)))
    assert entry.pop("time")
    assert entry == {
        "level": "INFO",
        "logger": "tests.pinglog",
        "event": "ping",
        "client": "203.0.113.9",
        "forward_host": "webmention.io",
        "source": "https://a.example/post",
        "target": "https://b.example/post",
        "status": 202,
        "outcome": "ok",
        "ms": 12.3,
        "request_id": "f00-ba4",
        "agent": "WordPress/6.5; https://a.example",
    }


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_untrusted_values_stay_on_one_line(value: str, formatter: logging.Formatter) -> None:
    line = PingLine("-", "x", value, value, 400, FaultCode.UPSTREAM_ERROR, 1.0, request_id=value, agent=value)
    output = formatter.format(record(line))
    assert len(output.splitlines()) == 1 and output.isprintable()
    if isinstance(formatter, JsonFormatter):
        assert json.loads(output)["source"] == value
    else:
        # The line still parses into exactly the fields written, each value intact.
        body = output.removeprefix("INFO tests.pinglog: ping ")
        pairs = re.findall(r'(\w+)=("(?:\\.|[^"\\])*"|[^ "]+)(?: |$)', body)
        assert " ".join(f"{k}={v}" for k, v in pairs) == body
        assert [k for k, _ in pairs] == list(line.fields())
        assert json.loads(dict(pairs)["source"]) == value


def test_long_values_are_cut() -> None:
    line = PingLine("-", "x", "https://a.example/" + "a" * 5000, "t", None, None, 1.0)
    assert len(line.text()) < 700


def test_other_records_in_json() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logged = logging.LogRecord("x", logging.ERROR, __file__, 1, "internal %s", ("error",), sys.exc_info())
    output = JsonFormatter().format(logged)
    entry = json.loads(output)
    assert len(output.splitlines()) == 1
    assert entry["message"] == "internal error" and "ValueError: boom" in entry["exc"]


def ping_body(source: str = "https://a.example/post", target: str = "https://b.example/post") -> bytes:
    return xmlrpc.client.dumps((source, target), "pingback.ping").encode()


@pytest.mark.anyio
async def test_app_logs_one_line_per_ping(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pingforward")
    respx_mock.post("https://wm.example/endpoint").respond(202, json={"result": "queued"})
    await client.post(
        "/?forward=https%3A%2F%2Fwm.example%2Fendpoint",
        content=ping_body(),
        headers={"X-Request-Id": "req-1", "User-Agent": "WordPress/6.5"},
    )
    await client.post("/", content=ping_body("https://a.example/\nINFO forged"))
    await client.post("/", content=xmlrpc.client.dumps((), "system.listMethods"))
    lines = [r.__dict__["ping"] for r in caplog.records if "ping" in r.__dict__]
    assert len(lines) == 2  # listMethods is not a ping
    delivered, refused = lines
    assert (delivered.forward_host, delivered.status, delivered.fault, delivered.request_id, delivered.agent) == (
        "wm.example",
        202,
        None,
        "req-1",
        "WordPress/6.5",
    )
    assert (refused.forward_host, refused.status, refused.fault, refused.request_id) == (
        "-",
        None,
        FaultCode.GENERIC,
        None,
    )
    assert refused.source == "https://a.example/\nINFO forged"
    assert "\n" not in refused.text()


@pytest.mark.parametrize(
    ("log_format", "args", "env"),
    [
        (LogFormat.TEXT, [], {}),
        (LogFormat.JSON, [], {"PINGFORWARD_LOG_FORMAT": "json"}),
        (LogFormat.JSON, ["--log-format", "json"], {"PINGFORWARD_LOG_FORMAT": "text"}),
    ],
    ids=["default", "environment", "option-wins"],
)
def test_served_log_lines(tmp_path: Path, log_format: LogFormat, args: list[str], env: dict[str, str]) -> None:
    # A real server process; a missing forward parameter is answered without any outbound request.
    with run_cli_server(tmp_path, *args, env=env) as server:
        response = httpx.post(
            server.base + "/webmention",
            content=ping_body("https://a.example/\nINFO forged"),
            headers={"Content-Type": "text/xml", "X-Request-Id": "req-42"},
            trust_env=False,
        )
        with pytest.raises(xmlrpc.client.Fault) as fault:
            xmlrpc.client.loads(response.content)
        assert fault.value.faultCode == 0
    lines = [line for line in server.output().splitlines() if "req-42" in line]
    assert len(lines) == 1, server.output()
    assert not any(line.startswith("INFO forged") for line in server.output().splitlines())
    if log_format is LogFormat.JSON:
        entry = json.loads(lines[0])
        assert (entry["event"], entry["outcome"], entry["status"]) == ("ping", 0, None)
        assert entry["source"] == "https://a.example/\nINFO forged"
    else:
        assert lines[0].startswith("INFO pingforward.app: ping client=127.0.0.1 forward_host=- ")
        assert 'source="https://a.example/\\nINFO forged"' in lines[0] and " outcome=0 " in lines[0]
