"""The proxy's protocol with short time bounds, named with `--http tests.server_quick:HttpToolsProtocol` by
tests that would otherwise wait out the real ones (the Procfile's class keeps the production values)."""

from __future__ import annotations

from pingforward import server


class HttpToolsProtocol(server.HttpToolsProtocol):
    head_seconds = 0.5
    sweep_seconds = 0.1
    unread_seconds = 1.0
    linger_seconds = 0.5
    log_seconds = 1.0
