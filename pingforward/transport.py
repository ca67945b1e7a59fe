"""The outbound HTTP client: one per worker, shared by the proxy and the sender."""

from __future__ import annotations

import httpx

from pingforward import PROJECT_URL, __version__
from pingforward.config import Settings

USER_AGENT = f"pingforward/{__version__} (+{PROJECT_URL})"


def make_client(settings: Settings) -> httpx.AsyncClient:
    """An AsyncClient that never follows redirects by itself and ignores proxy and .netrc settings."""
    return httpx.AsyncClient(
        # No proxies or .netrc from the environment: we POST to URLs that strangers name.
        trust_env=False,
        follow_redirects=False,
        timeout=settings.timeout,
        headers={"User-Agent": USER_AGENT},
    )
