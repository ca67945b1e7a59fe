from __future__ import annotations

import pytest

from pingforward.config import ConfigError, LogFormat, Settings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("text", LogFormat.TEXT), ("json", LogFormat.JSON), (" JSON ", LogFormat.JSON), ("Text", LogFormat.TEXT)],
)
def test_log_format(raw: str, expected: LogFormat) -> None:
    assert Settings.from_environ({"PINGFORWARD_LOG_FORMAT": raw}).log_format is expected


def test_log_format_default() -> None:
    assert Settings.from_environ({}).log_format is LogFormat.TEXT


@pytest.mark.parametrize("raw", ["", "xml", "logfmt", "jsonl"])
def test_log_format_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^PINGFORWARD_LOG_FORMAT: must be text or json, got "):
        Settings.from_environ({"PINGFORWARD_LOG_FORMAT": raw})
