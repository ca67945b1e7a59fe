"""Settings read once at startup from `PINGFORWARD_*` environment variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

PREFIX: Final = "PINGFORWARD_"
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_MAX_BODY: Final = 65536
T = TypeVar("T")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class ConfigError(ValueError):
    """A `PINGFORWARD_*` variable has a value we cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    log_format: LogFormat = LogFormat.TEXT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from a mapping such as `os.environ`, naming any bad variable."""
        known = {PREFIX + name.upper() for name in cls.__dataclass_fields__}
        unknown = sorted(key for key in environ if key.startswith(PREFIX) and key not in known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")

        def read(name: str, cast: Callable[[str], T], default: T, valid: Callable[[T], bool], rule: str) -> T:
            key = PREFIX + name.upper()
            if key not in environ:
                return default
            raw = environ[key]
            try:
                value = cast(raw.strip())
            except ValueError:
                raise ConfigError(f"{key}: {rule}, got {raw!r}") from None
            if not valid(value):
                raise ConfigError(f"{key}: {rule}, got {raw!r}")
            return value

        return cls(
            timeout=read("timeout", float, DEFAULT_TIMEOUT, lambda v: 0 < v <= 300, "must be seconds, > 0 and <= 300"),
            max_body=read(
                "max_body", int, DEFAULT_MAX_BODY, lambda v: 1024 <= v <= 10_000_000, "must be bytes, 1024 to 10000000"
            ),
            log_format=read(
                "log_format", lambda v: LogFormat(v.lower()), LogFormat.TEXT, lambda v: True, "must be text or json"
            ),
        )
