"""Settings read once at startup from `PINGFORWARD_*` environment variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

PREFIX: Final = "PINGFORWARD_"
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_MAX_BODY: Final = 65536
MIN_SEND_TOKEN: Final = 16
T = TypeVar("T")


class ConfigError(ValueError):
    """A `PINGFORWARD_*` variable has a value we cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    send_token: str | None = field(default=None, repr=False)  # POST /send is off without it

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
            send_token=_send_token(environ),
        )


def _send_token(environ: Mapping[str, str]) -> str | None:
    # Checked apart from read(): a secret must not be echoed into an error message or a log.
    key = PREFIX + "SEND_TOKEN"
    token = environ.get(key, "").strip()
    if token and (len(token) < MIN_SEND_TOKEN or any(char.isspace() for char in token)):
        raise ConfigError(f"{key}: must be at least {MIN_SEND_TOKEN} characters without spaces (value not shown)")
    return token or None  # unset or empty: POST /send is off
