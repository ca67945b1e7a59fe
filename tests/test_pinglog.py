from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
import xmlrpc.client
from pathlib import Path

import httpx
import pytest
import respx
from starlette.responses import PlainTextResponse

from pingforward.config import LogFormat, Settings
from pingforward.endpoint import PingbackEndpoint
from pingforward.pingback import FaultCode
from pingforward.pinglog import MAX_EXAMPLE, JsonFormatter, PingLine, PingLog, Rejection, uvicorn_log_config
from tests.servers import LOCAL_ENV, ROOT, free_port, procfile_command, run_cli_server, running

JSON_LOG_CONFIG = ROOT / "pingforward" / "uvicorn-json-log.json"

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


TEXT, JSON = PingLog(LogFormat.TEXT), PingLog(LogFormat.JSON)
PAIRS = re.compile(r'(\w+)=("(?:\\.|[^"\\])*"|[^ "]+)(?: |$)')


def pairs(line: str) -> dict[str, str]:
    """The fields of a text ping line, values as written; asserts that nothing else is on it."""
    body = line.removeprefix("INFO pingforward.app: ping ")
    found = PAIRS.findall(body)
    assert " ".join(f"{k}={v}" for k, v in found) == body
    return dict(found)


def test_text_line() -> None:
    assert TEXT.format(LINE) == (
        "INFO pingforward.app: ping client=203.0.113.9 forward_host=webmention.io source=https://a.example/post "
        'target=https://b.example/post status=202 outcome=ok ms=12.3 request_id=f00-ba4 agent="WordPress/6.5; '
        'https://a.example"'
    )


def test_text_line_without_optional_fields() -> None:
    line = PingLine("-", "-", "-", "-", None, FaultCode.GENERIC, 0.04)
    assert line.text() == "ping client=- forward_host=- source=- target=- status=- outcome=0 ms=0.0"


def test_json_line() -> None:
    entry = json.loads(JSON.format(LINE))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "logger": "pingforward.app",
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
        "refusal": None,
        "reason": None,
        "failure": None,
    }


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("log", [TEXT, JSON], ids=["text", "json"])
def test_untrusted_values_stay_on_one_line(value: str, log: PingLog) -> None:
    line = PingLine(
        "-",
        "x",
        value,
        value,
        None,
        FaultCode.UPSTREAM_ERROR,
        1.0,
        value,
        value,
        value,
        refusal="source_unreachable",
        failure="reset",
    )
    output = log.format(line)
    assert len(output.splitlines()) == 1 and output.isprintable()
    if log is JSON:
        assert json.loads(output)["source"] == value
    else:
        # The line still parses into exactly the fields written, each value intact.
        fields = pairs(output)
        assert list(fields) == list(line.fields())
        assert json.loads(fields["source"]) == value


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
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.post("https://wm.example/endpoint").respond(202, json={"result": "queued"})
    await client.post(
        "/?forward=https%3A%2F%2Fwm.example%2Fendpoint",
        content=ping_body(),
        headers={"X-Request-Id": "req-1", "User-Agent": "WordPress/6.5"},
    )
    await client.post("/?forward=http%3A%2F%2F10.1.2.3%2Fwm", content=ping_body("https://a.example/\nINFO forged"))
    for _ in range(3):  # no forward: the first is logged at once, and all are counted
        await client.post("/", content=ping_body())
    await client.post("/", content=xmlrpc.client.dumps((), "system.listMethods"))
    await asyncio.sleep(0)  # lines are written when the event loop comes round
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # listMethods is not a ping
    assert lines[2] == (
        "INFO pingforward.app: rejected kind=unroutable client=203.0.113.7 reason=\"Missing 'forward' parameter\" "
        'example="" (no usable forward parameter; fault 0; the next 60 s of this kind are summed up in one line)'
    )
    delivered, refused = map(pairs, lines[:2])
    assert delivered == {
        "client": "203.0.113.7",
        "forward_host": "wm.example",
        "source": "https://a.example/post",
        "target": "https://b.example/post",
        "status": "202",
        "outcome": "ok",
        "ms": delivered["ms"],
        "request_id": "req-1",
        "agent": "WordPress/6.5",
    }
    assert float(delivered["ms"]) >= 0
    assert (refused["forward_host"], refused["status"], refused["outcome"]) == ("10.1.2.3", "-", "16")
    assert "request_id" not in refused
    assert json.loads(refused["reason"]) == "The source URI is not an absolute http(s) URL."
    assert json.loads(refused["source"]) == "https://a.example/\nINFO forged"


@pytest.mark.anyio
async def test_a_refused_ping_names_the_rule(client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]) -> None:
    await client.post("/?forward=http%3A%2F%2F10.1.2.3%3A5000%2Fwm", content=ping_body())
    await asyncio.sleep(0)
    (line,) = capsys.readouterr().out.splitlines()
    fields = pairs(line)
    assert fields["outcome"] == "49"
    assert json.loads(fields["reason"]) == (
        "forward refused: port 5000 is not allowed (PINGFORWARD_ALLOWED_PORTS); "
        "private address 10.1.2.3 (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("log", ["text", "json"])
async def test_refusals_are_named_per_ping_and_counted_by_reason_per_window(log: str) -> None:
    stream = Stream()
    ping_log = PingLog(LogFormat(log), stream, summary_seconds=0.05)
    for refusal, code in [("no_link", FaultCode.NO_LINK), ("copy", FaultCode.ACCESS_DENIED), ("no_link", 17)]:
        ping_log.write(PingLine("-", "wm.example", "s", "t", None, FaultCode(code), 1.0, refusal=refusal))
    ping_log.write(PingLine("-", "wm.example", "s", "t", 202, None, 1.0))  # forwarded: not counted
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    if log == "json":
        assert [json.loads(line)["refusal"] for line in lines] == ["no_link", "copy", "no_link", None]
    else:
        assert [line.split(" refusal=")[1] if " refusal=" in line else None for line in lines] == [
            "no_link",
            "copy",
            "no_link",
            None,
        ]
    await asyncio.sleep(0.2)  # the window closes: one line counts them
    summary = stream.getvalue().splitlines()[4:]
    if log == "json":
        (entry,) = map(json.loads, summary)
        assert (entry["event"], entry["count"], entry["reasons"]) == ("refused", 3, {"copy": 1, "no_link": 2})
    else:
        assert summary == ["INFO pingforward.app: refused count=3 copy=1 no_link=2 (spam checks; not forwarded)"]
    ping_log.summarize()  # nothing new: nothing written
    await asyncio.sleep(0)
    assert len(stream.getvalue().splitlines()) == 5


@pytest.mark.anyio
@pytest.mark.parametrize("log", ["text", "json"])
async def test_rejected_requests_first_one_at_once_then_summed_up_per_window(log: str) -> None:
    stream = Stream()
    ping_log = PingLog(LogFormat(log), stream, summary_seconds=0.05)
    # The first non-empty query of the window is the example: escaped, and cut to MAX_EXAMPLE characters.
    first = b'forward=webmention.io%2Fx&"\n\xe9' + b"a" * 1000
    for query in (b"", first, b"forward=second"):
        ping_log.rejected(Rejection.UNROUTABLE, "203.0.113.9", "Missing 'forward' parameter", query)
    ping_log.rejected(Rejection.TOO_LARGE, "198.51.100.7", "body over 65536 bytes (PINGFORWARD_MAX_BODY)")
    await asyncio.sleep(0)
    # At once: the first of each kind, with the client and what was wrong.
    at_once = stream.getvalue().splitlines()
    if log == "json":
        entries = [json.loads(line) for line in at_once]
        assert [(e["event"], e["kind"], e["client"], e["example"]) for e in entries] == [
            ("rejected", "unroutable", "203.0.113.9", ""),
            ("rejected", "too_large", "198.51.100.7", ""),
        ]
        assert entries[1]["reason"] == "body over 65536 bytes (PINGFORWARD_MAX_BODY)"
    else:
        assert at_once == [
            "INFO pingforward.app: rejected kind=unroutable client=203.0.113.9 reason=\"Missing 'forward' parameter\" "
            'example="" (no usable forward parameter; fault 0; the next 0.05 s of this kind are summed up in one line)',
            'INFO pingforward.app: rejected kind=too_large client=198.51.100.7 reason="body over 65536 bytes '
            '(PINGFORWARD_MAX_BODY)" example="" (body over PINGFORWARD_MAX_BODY; HTTP 413; the next 0.05 s of this '
            "kind are summed up in one line)",
        ]
    await asyncio.sleep(0.2)  # the window closes: one line per kind
    summaries = stream.getvalue().splitlines()[2:]
    assert len(summaries) == 2
    if log == "json":
        entry = json.loads(summaries[0])
        assert (entry["event"], entry["count"], entry["logger"]) == ("unroutable", 3, "pingforward.app")
        example = entry["example"]
        assert (json.loads(summaries[1])["event"], json.loads(summaries[1])["count"]) == ("too_large", 1)
    else:
        start, end = "INFO pingforward.app: unroutable count=3 example=", " (no usable forward parameter; fault 0)"
        assert summaries[0].startswith(start) and summaries[0].endswith(end) and summaries[0].isascii()
        example = json.loads(summaries[0].removeprefix(start).removesuffix(end))
        assert summaries[1] == (
            'INFO pingforward.app: too_large count=1 example="" (body over PINGFORWARD_MAX_BODY; HTTP 413)'
        )
    assert example == first.decode("latin-1")[:MAX_EXAMPLE]
    assert ping_log.rejections == {Rejection.UNROUTABLE: 3, Rejection.TOO_LARGE: 1}  # for the metrics: never reset
    ping_log.summarize()  # nothing new: nothing written
    ping_log.rejected(Rejection.UNROUTABLE, "203.0.113.9", "Missing 'forward' parameter")
    await asyncio.sleep(0)
    assert len(stream.getvalue().splitlines()) == 5  # a new window: its first is written at once again


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


@pytest.mark.anyio
async def test_lines_are_written_once_per_event_loop_turn() -> None:
    stream = Stream()
    log = PingLog(LogFormat.TEXT, stream)
    for _ in range(3):
        log.write(LINE)
    assert stream.writes == 0
    await asyncio.sleep(0)  # the loop comes round: one write and one flush for all three
    assert stream.getvalue() == (TEXT.format(LINE) + "\n") * 3
    assert (stream.writes, stream.flushes) == (1, 1)
    log.write(LINE)
    await asyncio.sleep(0)
    assert (stream.writes, stream.flushes) == (2, 2)
    log.flush()  # nothing pending: nothing written
    assert stream.writes == 2


def test_without_an_event_loop_each_line_is_flushed() -> None:
    stream = Stream()
    PingLog(LogFormat.JSON, stream).write(LINE)
    assert stream.flushes == 1 and json.loads(stream.getvalue())["source"] == LINE.source


def test_a_closed_stdout_does_not_fail_the_ping() -> None:
    stream = Stream()
    stream.close()
    PingLog(LogFormat.TEXT, stream).write(LINE)  # no exception: the sender still gets its answer


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
    # A real server process. A source that is not a URL is refused (fault 16) before anything is sent;
    # a request without `forward` is only counted, in one line at shutdown.
    with run_cli_server(tmp_path, *args, env=env) as server:
        faults = []
        for path in ("/webmention?forward=http%3A%2F%2F127.0.0.1%3A9%2Fwm", "/webmention"):
            response = httpx.post(
                server.base + path,
                content=ping_body("https://a.example/\nINFO forged"),
                headers={"Content-Type": "text/xml", "X-Request-Id": "req-42"},
                trust_env=False,
            )
            with pytest.raises(xmlrpc.client.Fault) as fault:
                xmlrpc.client.loads(response.content)
            faults.append(fault.value.faultCode)
        assert faults == [FaultCode.SOURCE_NOT_FOUND, FaultCode.GENERIC]
    output = server.output().splitlines()
    lines = [line for line in output if "req-42" in line]
    assert len(lines) == 1, server.output()
    assert not any(line.startswith("INFO forged") for line in output)
    summaries = [line for line in output if "unroutable" in line and "rejected" not in line]
    (at_once,) = [line for line in output if "rejected" in line and "unroutable" in line]
    if log_format is LogFormat.JSON:
        assert (json.loads(at_once)["kind"], json.loads(at_once)["client"]) == ("unroutable", "127.0.0.1")
        entry = json.loads(lines[0])
        assert (entry["event"], entry["outcome"], entry["status"], entry["forward_host"]) == (
            "ping",
            16,
            None,
            "127.0.0.1",
        )
        assert entry["source"] == "https://a.example/\nINFO forged"
        assert [json.loads(line)["count"] for line in summaries] == [1]
    else:
        assert at_once.startswith("INFO pingforward.app: rejected kind=unroutable client=127.0.0.1 reason=")
        assert lines[0].startswith("INFO pingforward.app: ping client=127.0.0.1 forward_host=127.0.0.1 ")
        assert 'source="https://a.example/\\nINFO forged"' in lines[0] and " outcome=16 " in lines[0]
        assert summaries == [
            'INFO pingforward.app: unroutable count=1 example="" (no usable forward parameter; fault 0)'
        ]


def test_the_shipped_uvicorn_log_config_is_the_json_one() -> None:
    assert json.loads(JSON_LOG_CONFIG.read_text()) == uvicorn_log_config(LogFormat.JSON)


@pytest.mark.parametrize("how", ["procfile", "procfile-two-workers", "serve-two-workers"])
def test_every_line_is_json(tmp_path: Path, how: str) -> None:
    # uvicorn's own lines (start, stop, its supervising process with two workers) included.
    env = {**LOCAL_ENV, "PINGFORWARD_LOG_FORMAT": "json"}
    if how == "procfile-two-workers":  # the supervisor never loads the app: the README's UVICORN_LOG_CONFIG
        env |= {"WEB_CONCURRENCY": "2", "UVICORN_LOG_CONFIG": str(JSON_LOG_CONFIG)}
    if how.startswith("procfile"):
        port = free_port()
        started = running(procfile_command(port), port, env, tmp_path / "procfile.log")
    else:
        started = run_cli_server(tmp_path, "--workers", "2", env=env)
    with started as server:
        httpx.post(server.base + "/?forward=http%3A%2F%2F127.0.0.1%3A9%2Fwm", content=ping_body(), trust_env=False)
    lines = server.output().splitlines()
    entries = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    loggers = {entry["logger"] for entry in entries}
    assert "uvicorn.error" in loggers and "pingforward.app" in loggers, lines
    assert any(entry["message"].startswith("Started server process") for entry in entries if "message" in entry)


@pytest.mark.anyio
async def test_bodies_too_slow_too_large_and_loops_are_logged_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    # The body's time limit is the forward's, when that is shorter than 5 s: short here, not waited out.
    endpoint = PingbackEndpoint(Settings(timeout=0.05, max_body=1024), page=PlainTextResponse("page"))
    statuses: list[int] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    async def never() -> object:
        await asyncio.sleep(5)  # bounded; the endpoint gives up long before
        return {"type": "http.disconnect"}

    async def large() -> object:
        return {"type": "http.request", "body": b" " * 2048, "more_body": False}

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
        query = b"forward=https%3A%2F%2Fsite.example%2Fwm"
        return {"type": "http", "method": "POST", "headers": list(headers), "query_string": query,
                "client": ("198.51.100.4", 5555), "scheme": "http", "state": {}}  # fmt: skip

    await endpoint(scope(), never, send)  # type: ignore[arg-type]
    await endpoint(scope(), large, send)  # type: ignore[arg-type]
    await endpoint(scope((b"via", b"1.1 pingforward")), large, send)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert statuses == [408, 413, 508]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" reason=")[0] for line in lines] == [
        f"INFO pingforward.app: rejected kind={kind} client=198.51.100.4" for kind in ("too_slow", "too_large", "loop")
    ]
    assert 'reason="no whole body within 0.05 s"' in lines[0]
    assert 'reason="body over 1024 bytes (PINGFORWARD_MAX_BODY)"' in lines[1]
    endpoint.ping_log.summarize()
    assert endpoint.ping_log.rejections == {"too_slow": 1, "too_large": 1, "loop": 1}
