from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
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


@pytest.fixture
def settings() -> Settings:
    return Settings(timeout=2.0)


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
