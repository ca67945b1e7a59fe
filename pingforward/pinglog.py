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
    failure: str | None = None  # what went wrong on the network (errors.Failure): refused, reset, timeout, dns...

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
            "failure": self.failure,
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
        if self.failure is not None:
            text += f" failure={self.failure}"
        if self.retried:
            text += " retry=1"
        return text


def _example(query: bytes) -> str:
    # A stranger's bytes: decoded byte for byte, cut, and always JSON-quoted by the caller with every
    # control and non-ASCII character escaped, so the example cannot break or forge a line.
    return query.decode("latin-1")[:MAX_EXAMPLE]


class Rejection:
    """The kinds of request answered without a ping: nothing was forwarded, nor refused on its merits.

    Plain strings, not an Enum: they key dicts on the junk path, where an Enum member's hash costs more.
    """

    UNROUTABLE: Final = "unroutable"  # no forward parameter
    INVALID_FORWARD: Final = "invalid_forward"  # a forward parameter that cannot be used
    MALFORMED: Final = "malformed"  # not an XML-RPC call the endpoint can read
    TOO_LARGE: Final = "too_large"  # a body over PINGFORWARD_MAX_BODY
    TOO_SLOW: Final = "too_slow"  # a body that did not arrive in time
    LOOP: Final = "loop"  # the proxy's own forward, come back to it


# What the sender was answered, for the log lines.
REJECTION_ANSWERS: Final = {
    Rejection.UNROUTABLE: "no usable forward parameter; fault 0",
    Rejection.INVALID_FORWARD: "unusable forward parameter; fault 0",
    Rejection.MALFORMED: "not a readable XML-RPC call; fault -32700 to -32601",
    Rejection.TOO_LARGE: "body over PINGFORWARD_MAX_BODY; HTTP 413",
    Rejection.TOO_SLOW: "body not received in time; HTTP 408",
    Rejection.LOOP: "the proxy's own forward came back; HTTP 508",
}


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
        self._window: dict[str, int] = {}  # requests rejected since the last summary, by kind
        self._examples: dict[str, bytes] = {}  # the first non-empty query string of each kind in the window
        self.rejections: dict[str, int] = {}  # every rejected request since the start, by kind (metrics)
        self._refused: Counter[str] = Counter()  # pings the proxy refused itself, by reason
        self._summary: asyncio.TimerHandle | None = None

    def rejected(self, kind: str, client: str, reason: str, query: bytes = b"") -> None:
        """Count a request answered without a ping: the first of each kind in a window is written at once,
        with the client and what was wrong; one line per kind sums them up when the window ends."""
        self.rejections[kind] = self.rejections.get(kind, 0) + 1
        count = self._window.get(kind, 0)
        self._window[kind] = count + 1
        if count:
            if query and kind not in self._examples:
                self._examples[kind] = query[: MAX_EXAMPLE * 4]  # kept short: the rest is never shown
            return  # counted; the summary at the end of the window writes it (its timer is running)
        if query:
            self._examples[kind] = query[: MAX_EXAMPLE * 4]
        self._add(self._rejected_line(kind, client, reason, query))
        self._arm()

    def _rejected_line(self, kind: str, client: str, reason: str, query: bytes) -> str:
        example = _example(query)
        if self._json:
            entry = {
                **self._head(),
                "event": "rejected",
                "kind": kind,
                "client": client,
                "reason": reason[:MAX_FIELD],
                "example": example,
            }
            return json.dumps(entry, ensure_ascii=True)
        return (
            f"INFO {self.name}: rejected kind={kind} client={_quote(client)} reason={_quote(reason[:MAX_FIELD])} "
            f"example={json.dumps(example, ensure_ascii=True)} ({REJECTION_ANSWERS[kind]}; "
            f"the next {self._summary_seconds:g} s of this kind are summed up in one line)"
        )

    def _arm(self) -> None:
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.summarize()
                return
            self._summary = loop.call_later(self._summary_seconds, self.summarize)

    def summarize(self) -> None:
        """Write the counts since the last summary, if there were any: refusals, and each kind of rejected request."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        refused, self._refused = self._refused, Counter()
        if refused:
            self._add(self._refusals(refused))
        window, self._window = self._window, {}
        examples, self._examples = self._examples, {}
        for kind, count in window.items():
            example = _example(examples.get(kind, b""))
            if self._json:
                entry = {**self._head(), "event": kind, "count": count, "example": example}
                self._add(json.dumps(entry, ensure_ascii=True))
            else:
                quoted = json.dumps(example, ensure_ascii=True)
                self._add(f"INFO {self.name}: {kind} count={count} example={quoted} ({REJECTION_ANSWERS[kind]})")

    def _head(self) -> dict[str, str]:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": "INFO", "logger": self.name}

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
