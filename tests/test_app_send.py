"""POST /send gatekeeping through ASGI, and PINGFORWARD_SEND_TOKEN. The full send is in test_send_e2e.py."""

from __future__ import annotations

import httpx
import pytest

from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.errors import ConfigError

TOKEN = "s3cret-token-0123456789"


def asgi(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://pf.test")


@pytest.mark.anyio
async def test_send_is_off_without_a_token() -> None:
    async with asgi(Settings()) as client:
        response = await client.post(
            "/send", data={"source": "https://me.example/"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 404


AUTH_CASES = [
    pytest.param({}, id="missing"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="longer"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="other-scheme"),
    pytest.param({"Authorization": TOKEN}, id="no-scheme"),
    pytest.param({"Authorization": "Bearer"}, id="empty"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("headers", AUTH_CASES)
async def test_send_needs_the_bearer_token(headers: dict[str, str]) -> None:
    async with asgi(Settings(send_token=TOKEN)) as client:
        response = await client.post("/send", data={"source": "https://me.example/"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"error": "unauthorized"}


@pytest.mark.anyio
@pytest.mark.parametrize("data", [{}, {"source": ["https://a.example/", "https://b.example/"]}, {"src": "x"}])
async def test_send_needs_one_source(data: dict[str, str | list[str]]) -> None:
    async with asgi(Settings(send_token=TOKEN)) as client:
        response = await client.post("/send", data=data, headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 400
    assert "source" in response.json()["error"]


@pytest.mark.anyio
async def test_send_answers_get_with_405() -> None:
    async with asgi(Settings(send_token=TOKEN)) as client:
        response = await client.get("/send", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405


def test_send_token_setting() -> None:
    assert Settings.from_environ({}).send_token is None
    assert Settings.from_environ({"PINGFORWARD_SEND_TOKEN": ""}).send_token is None
    assert Settings.from_environ({"PINGFORWARD_SEND_TOKEN": f" {TOKEN} "}).send_token == TOKEN
    assert TOKEN not in repr(Settings(send_token=TOKEN))
    for bad in ("short", "has a space in the token value"):
        with pytest.raises(ConfigError, match="PINGFORWARD_SEND_TOKEN") as caught:
            Settings.from_environ({"PINGFORWARD_SEND_TOKEN": bad})
        assert bad not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["http://a..b/post", "http://" + "a" * 64 + ".example/", "http://localhost/post"])
async def test_an_unusable_source_is_a_json_answer_not_an_internal_error(source: str) -> None:
    from asgi_lifespan import LifespanManager

    app = create_app(Settings(send_token=TOKEN))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pf.test") as client:
            response = await client.post("/send", data={"source": source}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in (422, 502)
    assert response.json()["source"] == source and response.json()["error"]
