"""Settings read once at startup from `PINGFORWARD_*` environment variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from pingforward.errors import ConfigError
from pingforward.net.policy import DEFAULT_PORTS, Policy

PREFIX: Final = "PINGFORWARD_"
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_MAX_BODY: Final = 65536
# Requests in flight to one destination per worker; more wait for a turn. At most a quarter of the bulk
# (transport.LIMITS), so that no pair of destinations can take the outbound pool.
DEFAULT_MAX_PER_HOST: Final = 1000
MAX_PER_HOST_LIMIT: Final = 1000
MIN_SEND_TOKEN: Final = 16
# The windows of the junk checks (README, "Spam"): limits' notation, "off" for none.
DEFAULT_REPEAT_WINDOW: Final = 600  # seconds
DEFAULT_FLOOD_CLIENT: Final = "60/minute;600/hour"
DEFAULT_FLOOD_SOURCE: Final = "60/minute;600/hour"
DEFAULT_FETCH_BOUND: Final = "60/minute;600/hour"
STATE_SCHEMES: Final = ("redis", "rediss", "unix")
# The copy check's threshold (verify.py explains the measure) and the time a ping's checks may take:
# a source and a receiver answering within a second each leave the ping answered well within the 3 s
# WordPress waits.
DEFAULT_COPY_SHARE: Final = 0.5
DEFAULT_VERIFY_TIMEOUT: Final = 1.5
T = TypeVar("T")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def _share(raw: str) -> float | None:
    if raw.lower() in ("off", "false", "no"):
        return None
    value = float(raw.removesuffix("%")) / (100 if raw.endswith("%") else 1)
    if not 0 < value <= 1:
        raise ValueError(raw)
    return value


def _ports(raw: str) -> frozenset[int] | None:
    if raw == "*":
        return None
    ports = frozenset(int(item) for item in raw.split(",") if item.strip())
    if not ports or not all(0 < port < 65536 for port in ports):
        raise ValueError(raw)
    return ports


def _windows(raw: str) -> str:
    if raw.lower() in ("off", "0", "none"):
        return "off"
    from limits.util import parse_many  # only when set: the app imports limits anyway, check and send need not

    items = parse_many(raw)  # ValueError for what is not limits' notation
    if not items or any(item.amount < 1 for item in items):
        raise ValueError(raw)
    return raw


def _repeat_window(raw: str) -> int:
    return 0 if raw.lower() == "off" else int(raw)


def _state_url(raw: str) -> str | None:
    if not raw:
        return None
    scheme, separator, rest = raw.partition("://")
    if scheme.lower() not in STATE_SCHEMES or not separator or not rest:
        raise ValueError(raw)
    return raw


def _hosts(raw: str) -> frozenset[str]:
    hosts = frozenset(item.strip().lower().rstrip(".") for item in raw.split(",") if item.strip())
    for host in hosts:
        name = host.removeprefix("*.")
        if not name or "*" in name or "/" in name or ":" in name or " " in name:
            raise ValueError(raw)
    return hosts


@dataclass(frozen=True, slots=True)
class Settings:
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    allowed_hosts: frozenset[str] = frozenset()
    allowed_ports: frozenset[int] | None = field(default=DEFAULT_PORTS)
    allow_private_networks: bool = False
    max_per_host: int = DEFAULT_MAX_PER_HOST
    # Proxies in front that append to X-Forwarded-For: a PaaS router, or a VM's TLS reverse proxy.
    proxy_hops: int = 1
    log_format: LogFormat = LogFormat.TEXT
    # The master switch of the junk checks (source verification, copies, repeats, floods): off forwards
    # every well-formed ping, for an operator who forwards only for trusted senders.
    spam_checks: bool = True
    # The same (source, target, forward URL) is forwarded once in this many seconds (0: every time).
    repeat_window: int = DEFAULT_REPEAT_WINDOW
    flood_client: str = DEFAULT_FLOOD_CLIENT  # pings per client address
    flood_source: str = DEFAULT_FLOOD_SOURCE  # pings per source host
    fetch_bound: str = DEFAULT_FETCH_BOUND  # verification GETs per destination host
    # Redis for the windows, shared by every worker that names it; None: each worker's own memory.
    state_url: str | None = field(default=None, repr=False)  # may carry a password
    # Under the master switch: fetch the source and refuse it unless it links to the target; refuse a
    # source carrying this share of the target's text (None: no copy check); the time both fetches get.
    verify_source: bool = True
    copy_share: float | None = DEFAULT_COPY_SHARE
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    send_token: str | None = field(default=None, repr=False)  # POST /send is off without it
    metrics_token: str | None = field(default=None, repr=False)  # GET /metrics is off without it

    @property
    def policy(self) -> Policy:
        return Policy(self.allowed_hosts, self.allowed_ports, self.allow_private_networks)

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

        def anything(value: object) -> bool:
            return True

        default_ports: frozenset[int] | None = DEFAULT_PORTS
        default_share: float | None = DEFAULT_COPY_SHARE

        return cls(
            timeout=read("timeout", float, DEFAULT_TIMEOUT, lambda v: 0 < v <= 300, "must be seconds, > 0 and <= 300"),
            max_body=read(
                "max_body", int, DEFAULT_MAX_BODY, lambda v: 1024 <= v <= 10_000_000, "must be bytes, 1024 to 10000000"
            ),
            allowed_hosts=read(
                "allowed_hosts", _hosts, frozenset(), anything, "must be a comma list of host names or *.domain"
            ),
            allowed_ports=read(
                "allowed_ports", _ports, default_ports, anything, "must be a comma list of ports 1-65535, or *"
            ),
            allow_private_networks=read("allow_private_networks", _bool, False, anything, "must be true or false"),
            max_per_host=read(
                "max_per_host",
                int,
                DEFAULT_MAX_PER_HOST,
                lambda v: 1 <= v <= MAX_PER_HOST_LIMIT,
                f"must be an integer from 1 to {MAX_PER_HOST_LIMIT}",
            ),
            proxy_hops=read("proxy_hops", int, 1, lambda v: 0 <= v <= 10, "must be an integer from 0 to 10"),
            log_format=read(
                "log_format", lambda v: LogFormat(v.lower()), LogFormat.TEXT, anything, "must be text or json"
            ),
            spam_checks=read("spam_checks", _bool, True, anything, "must be on or off"),
            repeat_window=read(
                "repeat_window",
                _repeat_window,
                DEFAULT_REPEAT_WINDOW,
                lambda v: 0 <= v <= 86400,
                "must be seconds from 0 to 86400, or off",
            ),
            flood_client=read("flood_client", _windows, DEFAULT_FLOOD_CLIENT, anything, WINDOWS_RULE),
            flood_source=read("flood_source", _windows, DEFAULT_FLOOD_SOURCE, anything, WINDOWS_RULE),
            fetch_bound=read("fetch_bound", _windows, DEFAULT_FETCH_BOUND, anything, WINDOWS_RULE),
            state_url=_state(environ),
            verify_source=read("verify_source", _bool, True, anything, "must be on or off"),
            copy_share=read(
                "copy_share", _share, default_share, anything, "must be a share above 0 and at most 1, or off"
            ),
            verify_timeout=read(
                "verify_timeout", float, DEFAULT_VERIFY_TIMEOUT, lambda v: 0 < v <= 60, "must be seconds, > 0 and <= 60"
            ),
            send_token=_token(environ, "SEND_TOKEN"),
            metrics_token=_token(environ, "METRICS_TOKEN"),
        )


WINDOWS_RULE: Final = "must be counts per window such as '60/minute;600/hour', or off"


def _state(environ: Mapping[str, str]) -> str | None:
    # Checked apart from read(): the URL may carry a password, not to be echoed into an error message.
    key = PREFIX + "STATE_URL"
    try:
        return _state_url(environ.get(key, "").strip())
    except ValueError:
        raise ConfigError(f"{key}: must be a redis://, rediss:// or unix:// URL (value not shown)") from None


def _token(environ: Mapping[str, str], name: str) -> str | None:
    # Checked apart from read(): a secret must not be echoed into an error message or a log.
    key = PREFIX + name
    token = environ.get(key, "").strip()
    if token and (len(token) < MIN_SEND_TOKEN or any(char.isspace() for char in token)):
        raise ConfigError(f"{key}: must be at least {MIN_SEND_TOKEN} characters without spaces (value not shown)")
    return token or None  # unset or empty: the route it guards is off
