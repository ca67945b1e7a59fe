from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import respx.mocks
from asgi_lifespan import LifespanManager

from pingforward.app import create_app
from pingforward.config import Settings
from tests.servers import LOCAL_ENV

DATA = Path(__file__).parent / "data"


def load(name: str) -> bytes:
    """A test input from tests/data/, e.g. load("pingback/wordpress.xml")."""
    return (DATA / name).read_bytes()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PoolMocker(respx.mocks.AbstractRequestMocker):
    """Lets respx answer in place of pingforward.net.pool.Pool, as it does for httpcore's pool by default.

    The layers above it (PolicyTransport's URL check, the client, redirects) still run; only sockets are mocked.
    """

    name = "pingforward-pool"
    targets = ["pingforward.net.pool.Pool"]
    target_methods = ["handle_async_request"]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        request: httpx.Request = kwargs["request"]
        return request

    @classmethod
    async def from_async_httpx_response(
        cls, httpx_response: httpx.Response, target: Any, **kwargs: Any
    ) -> httpx.Response:
        # A fresh response over the same stream: respx has read the one it hands over.
        return httpx.Response(
            httpx_response.status_code,
            headers=httpx_response.headers.raw,
            stream=httpx_response.stream,
            extensions=httpx_response.extensions,
        )


@pytest.fixture
def respx_mock(request: pytest.FixtureRequest) -> Iterator[respx.MockRouter]:
    """respx's own fixture (same defaults, same `respx` marker), mocking pool.py instead of httpcore."""
    marker = request.node.get_closest_marker("respx")
    options: dict[str, Any] = {"assert_all_called": False, **(marker.kwargs if marker else {})}
    with respx.mock(using=PoolMocker.name, **options) as mock:
        yield mock


@pytest.fixture
def settings() -> Settings:
    # The app tests through ASGI mock outbound HTTP (respx): reading each ping's made-up source, which
    # the mocks do not serve, is off here and tested against real pages in test_spam.py; the windows
    # (repeats, floods), which fetch nothing, stay on.
    return Settings(timeout=2.0, verify_source=False)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI with its lifespan running; outbound HTTP goes wherever respx sends it."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 4711))
        async with httpx.AsyncClient(transport=transport, base_url="https://proxy.test") as http:
            yield http


@pytest.fixture
def local_settings() -> Settings:
    """Settings for tests whose servers all listen on 127.0.0.1 at random ports."""
    return Settings.from_environ(LOCAL_ENV)


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`os.environ` with LOCAL_ENV as its only PINGFORWARD_* variables, restored afterwards."""
    for key in list(os.environ):
        if key.startswith("PINGFORWARD_"):
            monkeypatch.delenv(key)
    for key, value in LOCAL_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(LOCAL_ENV)
