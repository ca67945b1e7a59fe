"""One log line per ping, as `key=value` text or as a JSON object, and the formatters that write them.

Every value in a ping line may come from a stranger (source, target, User-Agent, X-Request-Id), so
text values that are not plain printable ASCII are JSON-quoted: no value can start a new line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final, TextIO

from pingforward.config import LogFormat
from pingforward.pingback import FaultCode

MAX_FIELD: Final = 512  # long enough for a URL, short enough that one ping stays one readable line
MAX_EXAMPLE: Final = 200  # of an unusable query string: enough to see what the tag looked like
_NOT_BARE: Final = re.compile(r'[^\x21-\x7e]|["=\\]')  # not printable ASCII, or a quote, "=" or backslash


@dataclass(frozen=True, slots=True)
class PingLine:
    """What the log says about one ping. `fault` None means the ping was delivered."""

    client: str
    forward_host: str
    source: str
    target: str
    status: int | None
    fault: FaultCode | None
    ms: float
    request_id: str | None = None
    agent: str | None = None
    reason: str | None = None  # a fault's message: which rule refused the ping, or what the receiver said
    retried: bool = False  # sent twice: the receiver closed a kept-alive connection as it arrived
    refusal: str | None = None  # why the proxy itself refused it, as a short name (no_link, copy...)

    def fields(self) -> dict[str, str | int | float | None]:
        """The line's fields in a fixed order, untrusted strings cut to `MAX_FIELD`; `retry` only when it was."""
        fields: dict[str, str | int | float | None] = {
            "client": self.client,
            "forward_host": self.forward_host[:MAX_FIELD],
            "source": self.source[:MAX_FIELD],
            "target": self.target[:MAX_FIELD],
            "status": self.status,
            "outcome": "ok" if self.fault is None else int(self.fault),
            "ms": round(self.ms, 1),
            "request_id": None if self.request_id is None else self.request_id[:MAX_FIELD],
            "agent": None if self.agent is None else self.agent[:MAX_FIELD],
            "refusal": self.refusal,
            "reason": None if self.reason is None else self.reason[:MAX_FIELD],
        }
        if self.retried:
            fields["retry"] = True
        return fields

    def text(self) -> str:
        """`fields()` as `key=value` pairs (logfmt style): absent values are `-`, and fields absent
        from the request (request_id, agent) or the outcome (reason) are left out."""
        text = (
            f"ping client={_quote(self.client)} forward_host={_quote(self.forward_host[:MAX_FIELD])} "
            f"source={_quote(self.source[:MAX_FIELD])} target={_quote(self.target[:MAX_FIELD])} "
            f"status={'-' if self.status is None else self.status} "
            f"outcome={'ok' if self.fault is None else int(self.fault)} ms={self.ms:.1f}"
        )
        if self.request_id is not None:
            text += f" request_id={_quote(self.request_id[:MAX_FIELD])}"
        if self.agent is not None:
            text += f" agent={_quote(self.agent[:MAX_FIELD])}"
        if self.refusal is not None:
            text += f" refusal={self.refusal}"
        if self.reason is not None:
            text += f" reason={_quote(self.reason[:MAX_FIELD])}"
        if self.retried:
            text += " retry=1"
        return text


def _quote(text: str) -> str:
    if text and not _NOT_BARE.search(text):
        return text
    # ensure_ascii escapes every control and line-separator character (\n, \x85, \u2028...).
    return json.dumps(text, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`, as `PingLog` writes ping lines."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and message, as `PingLog` writes ping lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format is LogFormat.JSON else TextFormatter()


UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.access")  # the ones uvicorn gives handlers; uvicorn.error propagates


def json_for_uvicorn() -> None:
    """Give uvicorn's handlers (set up before the app is loaded) the JSON formatter, so that every line is JSON."""
    for name in UVICORN_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())


def uvicorn_log_config(log_format: LogFormat) -> dict[str, object] | None:
    """uvicorn's own logging configuration with `log_format` (None: uvicorn's default, for text).

    For `pingforward serve`: with several workers, uvicorn's supervising process logs without ever
    loading the app, so only its configuration can make those lines JSON.
    """
    if log_format is not LogFormat.JSON:
        return None
    from uvicorn.config import LOGGING_CONFIG

    as_json = {"()": f"{__name__}.JsonFormatter"}
    return {**LOGGING_CONFIG, "formatters": {"default": as_json, "access": as_json}}


class PingLog:
    """Writes ping lines to standard output (or `stream`), in the same formats as the formatters above.

    Ping lines bypass `logging`: a line through a `logging` record cost two to three times as much as
    one formatted and written here (bench/README.md). Lines are collected, then formatted and written in
    one write(2) when the event loop finishes its current turn: the pings answered in one turn cost
    one system call even with PYTHONUNBUFFERED (which Heroku's Python buildpack sets), no line waits
    for the next ping, and formatting happens after the ping's answer has gone out, not before.
    Other messages (errors) still go through `logging`, to the same stdout.
    """

    name: Final = "pingforward.app"  # the logger name the lines carry, as records of that logger would

    def __init__(self, log_format: LogFormat, stream: TextIO | None = None, summary_seconds: float = 60.0) -> None:
        self._json = log_format is LogFormat.JSON
        self._stream = stream
        self._pending: list[PingLine | str] = []  # formatted when written
        self._summary_seconds = summary_seconds
        self._unroutable = 0
        self._example = b""  # the first unusable query string of the window
        self._refused: Counter[str] = Counter()  # pings the proxy refused itself, by reason
        self._summary: asyncio.TimerHandle | None = None

    def unroutable(self, query: bytes = b"") -> None:
        """Count a request without a usable `forward` parameter; one line sums them up per minute,
        with the first one's query string as an example of what such tags look like."""
        if not self._unroutable:
            self._example = query[: MAX_EXAMPLE * 4]  # kept short: the rest is never shown
        self._unroutable += 1
        self._arm()

    def _arm(self) -> None:
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.summarize()
                return
            self._summary = loop.call_later(self._summary_seconds, self.summarize)

    def summarize(self) -> None:
        """Write the counts since the last summary, if there were any: unroutable requests, and refusals."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        refused, self._refused = self._refused, Counter()
        if refused:
            self._add(self._refusals(refused))
        count, self._unroutable = self._unroutable, 0
        if not count:
            return
        # A stranger's bytes: decoded byte for byte, cut, and always JSON-quoted with every
        # control and non-ASCII character escaped, so the example cannot break or forge a line.
        example = self._example.decode("latin-1")[:MAX_EXAMPLE]
        if self._json:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "level": "INFO",
                "logger": self.name,
                "event": "unroutable",
                "count": count,
                "example": example,
            }
            self._add(json.dumps(entry, ensure_ascii=True))
        else:
            quoted = json.dumps(example, ensure_ascii=True)
            self._add(
                f"INFO {self.name}: unroutable count={count} example={quoted} (no usable forward parameter; fault 0)"
            )

    def _refusals(self, refused: Counter[str]) -> str:
        counts = dict(sorted(refused.items()))
        if self._json:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "level": "INFO",
                "logger": self.name,
                "event": "refused",
                "count": sum(counts.values()),
                "reasons": counts,
            }
            return json.dumps(entry, ensure_ascii=True)
        by_reason = " ".join(f"{name}={count}" for name, count in counts.items())
        return f"INFO {self.name}: refused count={sum(counts.values())} {by_reason} (spam checks; not forwarded)"

    def format(self, line: PingLine) -> str:
        if not self._json:
            return f"INFO {self.name}: {line.text()}"
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "level": "INFO",
            "logger": self.name,
            "event": "ping",
            **line.fields(),
        }
        return json.dumps(entry, ensure_ascii=True)

    def write(self, line: PingLine) -> None:
        """Write a ping line (at the end of the event loop's turn); a refusal is also counted for the summary."""
        self._add(line)
        if line.refusal is not None:
            self._refused[line.refusal] += 1
            self._arm()

    def _add(self, line: PingLine | str) -> None:
        self._pending.append(line)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop running: nothing to batch with
                self.flush()

    def flush(self) -> None:
        """Write the pending lines now (also called at shutdown)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        text = "".join(f"{line if isinstance(line, str) else self.format(line)}\n" for line in pending)
        stream = sys.stdout if self._stream is None else self._stream
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError, AttributeError):  # stdout closed or gone: the pings' answers matter more
            pass


def configure_logging(log_format: LogFormat) -> None:
    """Give pingforward's loggers (and uvicorn's, for JSON) the format of the ping lines."""
    # uvicorn configures only its own loggers; give ours a stdout handler once.
    package = logging.getLogger("pingforward")
    if not package.handlers:
        package.addHandler(logging.StreamHandler(sys.stdout))
        package.setLevel(logging.INFO)
    for handler in package.handlers:
        handler.setFormatter(formatter(log_format))
    if log_format is LogFormat.JSON:
        json_for_uvicorn()
    # Logging HOWTO, "Optimization": neither format uses the thread or process, so do not
    # collect them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
