from __future__ import annotations

import os

import pytest

from pingforward.config import Settings
from tests.servers import LOCAL_ENV


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def local_settings() -> Settings:
    return Settings.from_environ(LOCAL_ENV)


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`os.environ` without PINGFORWARD_* variables other than LOCAL_ENV's, restored afterwards."""
    for key in list(os.environ):
        if key.startswith("PINGFORWARD_"):
            monkeypatch.delenv(key)
    for key, value in LOCAL_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(LOCAL_ENV)
