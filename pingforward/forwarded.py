"""The client address and scheme that the proxies in front of the app saw, as an ASGI middleware.

A PaaS router or a VM's TLS proxy connects to uvicorn itself and appends the address it was connected
from to X-Forwarded-For; only the last `hops` entries were written by proxies we trust (uvicorn's own
`--proxy-headers` takes the first, which the sender writes). Like uvicorn's proxy_headers.py, but
counting hops from the nearest proxy. Spec: https://www.rfc-editor.org/rfc/rfc7239#section-5.2
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send


def forwarded_client(forwarded_for: str, hops: int) -> str | None:
    """The client address that the `hops`-th proxy from us saw, from an X-Forwarded-For value.

    Each proxy appends the address it was connected from (the de-facto X-Forwarded-For rule; RFC
    7239 §5.2 for its Forwarded header), so only the last `hops` entries were written by proxies we
    trust; anything before them is the sender's own writing. None when the value is short or odd.
    """
    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if hops > len(entries):
        return None
    entry = entries[-hops]
    if entry.startswith("[") and "]" in entry:  # [2001:db8::1]:4711
        entry = entry[1 : entry.index("]")]
    elif entry.count(":") == 1:  # 192.0.2.1:4711
        entry = entry.split(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


class ForwardedMiddleware:
    """Put the client and scheme the nearest `hops` proxies saw into the scope, in place of the proxy's own."""

    def __init__(self, app: ASGIApp, hops: int) -> None:
        self.app = app
        self.hops = hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _take_forwarded(scope, self.hops)
        await self.app(scope, receive, send)


def _take_forwarded(scope: Scope, hops: int) -> None:
    """The client and scheme the proxies in front of us saw, in place of the proxy's own connection."""
    forwarded_for: list[bytes] = []
    proto = b""
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"x-forwarded-proto":
            proto = value
    if forwarded_for:
        client = forwarded_client(b",".join(forwarded_for).decode("latin-1"), hops)
        if client is not None:
            scope["client"] = (client, 0)
    # The nearest proxy sets it (a list, if several did: the last is the nearest's).
    scheme = proto.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
    if scheme in ("http", "https"):
        scope["scheme"] = scheme
