"""Every exception pingforward raises on purpose, under one root.

Pure: no I/O library is imported here, so protocol modules can raise these too. The tree, with the
module that raises each one:

    PingforwardError
    ├── ConfigError            config.py     a PINGFORWARD_* variable has a value we cannot use
    ├── Fault                  pingback.py   an XML-RPC fault: a FaultCode and a message
    ├── ForwardError           forward.py    the `forward` query parameter is missing or unusable (fault 0)
    ├── FeedError              feed.py       a document is no feed, or is refused
    ├── EndpointError          landing.py    what a site owner typed is no usable Webmention endpoint
    ├── SendError              send.py       a page or endpoint the sender needs cannot be used
    ├── StateError             sendstate.py  the sender's state file cannot be read as one
    └── OutboundError          net/          a request of ours could not be made or answered
        ├── Refused            net/policy.py   the address policy refuses the URL or an address (fault 49)
        ├── ResolveError       net/resolver.py the host name has no usable address
        ├── ConnectFailed      net/pool.py     no connection: refused, reset, unreachable, TLS
        ├── OutboundTimeout    net/pool.py     no connection, turn or answer in time
        └── BrokenAnswer       net/pool.py     the peer's answer is not HTTP/1.1 we can read

The network layer raises only `OutboundError`s: callers (the forward, the sender, `check`) catch that one
family and read its `failure` for the precise kind. Nothing from httpx's or the socket's exception trees
escapes it. Only app.py turns these into HTTP answers and pingback faults.
"""

from __future__ import annotations

from enum import StrEnum


class PingforwardError(Exception):
    """The root of every exception pingforward raises on purpose."""


class ConfigError(PingforwardError, ValueError):
    """A `PINGFORWARD_*` variable has a value we cannot use; the message names it."""


class ForwardError(PingforwardError, ValueError):
    """The `forward` query parameter is missing or unusable (pingback fault 0); the message says which."""


class FeedError(PingforwardError, ValueError):
    """The document is no feed, names none, or is refused (such as XML with entity declarations)."""


class EndpointError(PingforwardError, ValueError):
    """What was typed into the landing page's form is no usable Webmention endpoint; the message says why."""


class Failure(StrEnum):
    """What kind of trouble an outbound request met: for logs, metrics and the words of fault 50."""

    POLICY = "policy"  # refused by the address policy before any packet
    DNS = "dns"  # no such name, no address, or no DNS answer in time
    REFUSED = "refused"  # the peer refused the connection (nothing listens there)
    RESET = "reset"  # the connection was reset or cut
    UNREACHABLE = "unreachable"  # no route to the address
    TLS = "tls"  # the TLS handshake or the certificate failed
    TIMEOUT = "timeout"  # no connection, no turn or no answer in time
    PROTOCOL = "protocol"  # the answer is not HTTP we can read
    BUSY = "busy"  # no outbound slot in time
    URL = "url"  # the URL cannot be requested at all: its scheme, or bytes a request head cannot carry


class OutboundError(PingforwardError):
    """An outbound request could not be made or answered; `reason` says why in words, `failure` what kind."""

    failure: Failure = Failure.PROTOCOL

    def __init__(self, reason: str, failure: Failure | None = None) -> None:
        self.reason = reason
        if failure is not None:
            self.failure = failure
        super().__init__(reason)


class Refused(OutboundError):
    """The policy refuses a URL or an address; `reason` names the rule and its setting (pingback fault 49)."""

    failure = Failure.POLICY


class ResolveError(OutboundError):
    """A name could not be resolved; the message says why, in words for the ping's fault string.

    `no_such_name`: the DNS answered that the name does not exist or has no address, as opposed to a
    lookup that failed for now (no answer in time, a server failure).
    """

    failure = Failure.DNS

    def __init__(self, reason: str, failure: Failure | None = None, *, no_such_name: bool = False) -> None:
        super().__init__(reason, failure)
        self.no_such_name = no_such_name


class ConnectFailed(OutboundError):
    """No connection could be made or kept: refused, reset, unreachable, or a failed TLS handshake."""

    failure = Failure.REFUSED


class OutboundTimeout(OutboundError):
    """No address, connection, outbound slot or answer within the time allowed."""

    failure = Failure.TIMEOUT


class BrokenAnswer(OutboundError):
    """The peer answered with what is not HTTP/1.1 we can read, or closed without a whole answer."""

    failure = Failure.PROTOCOL
