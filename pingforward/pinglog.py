"""One log line per ping, as `key=value` text or as a JSON object, and the formatters that write them.

Every value in a ping line may come from a stranger (source, target, User-Agent, X-Request-Id), so
text values that are not plain printable ASCII are JSON-quoted: no value can start a new line.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Final

from pingforward.config import LogFormat
from pingforward.pingback import FaultCode

MAX_FIELD: Final = 512  # long enough for a URL, short enough that one ping stays one readable line
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

    def fields(self) -> dict[str, str | int | float | None]:
        """The line's fields in a fixed order, untrusted strings cut to `MAX_FIELD`."""
        return {
            "client": self.client,
            "forward_host": self.forward_host[:MAX_FIELD],
            "source": self.source[:MAX_FIELD],
            "target": self.target[:MAX_FIELD],
            "status": self.status,
            "outcome": "ok" if self.fault is None else int(self.fault),
            "ms": round(self.ms, 1),
            "request_id": None if self.request_id is None else self.request_id[:MAX_FIELD],
            "agent": None if self.agent is None else self.agent[:MAX_FIELD],
        }

    def text(self) -> str:
        """`key=value` pairs (logfmt style); absent values are `-`, fields absent from the request are left out."""
        pairs = []
        for key, value in self.fields().items():
            if value is None and key in ("request_id", "agent"):
                continue
            pairs.append(f"{key}={_quote(value)}")
        return "ping " + " ".join(pairs)


def _quote(value: str | int | float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    if text and not _NOT_BARE.search(text):
        return text
    # ensure_ascii escapes every control and line-separator character (\n, \x85, \u2028...).
    return json.dumps(text, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`; a ping record's message is its `PingLine.text()`."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the ping's fields or the message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
        }
        ping = record.__dict__.get("ping")
        if isinstance(ping, PingLine):
            entry["event"] = "ping"
            entry.update(ping.fields())
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format is LogFormat.JSON else TextFormatter()


def log_ping(logger: logging.Logger, line: PingLine) -> None:
    """Write `line` at INFO; formatters find it on the record as `ping`."""
    logger.info("%s", line.text(), extra={"ping": line})
