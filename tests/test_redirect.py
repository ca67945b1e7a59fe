"""The one redirect rule (net/redirect.py), for the proxy's forward, the sender and `check`."""

from __future__ import annotations

import pytest

from pingforward.net.redirect import next_url

BASE = "https://site.example/endpoint?x=1"

CASES = [
    # The same POST goes on for 301, 302, 307 and 308; a 303 is the final answer to a POST.
    pytest.param("POST", 301, "/moved", "https://site.example/moved", id="post-301"),
    pytest.param("POST", 302, "/moved", "https://site.example/moved", id="post-302"),
    pytest.param("POST", 307, "https://other.example/wm", "https://other.example/wm", id="post-307"),
    pytest.param("POST", 308, "wm2", "https://site.example/wm2", id="post-308-relative"),
    pytest.param("POST", 303, "/status/1", None, id="post-303-processed"),
    # A GET or HEAD follows all five.
    pytest.param("GET", 301, "/a", "https://site.example/a", id="get-301"),
    pytest.param("GET", 303, "/a", "https://site.example/a", id="get-303"),
    pytest.param("HEAD", 308, "/a", "https://site.example/a", id="head-308"),
    # Not followed: no Location, a Location that is not http(s), statuses that name no single target.
    pytest.param("GET", 302, None, None, id="no-location"),
    pytest.param("POST", 307, "ftp://f.example/x", None, id="not-http"),
    pytest.param("GET", 301, "javascript:alert(1)", None, id="javascript"),
    pytest.param("GET", 301, "http://[", None, id="no-url"),
    pytest.param("GET", 300, "/a", None, id="multiple-choices"),
    pytest.param("GET", 304, "/a", None, id="not-modified"),
    pytest.param("POST", 200, "/a", None, id="not-a-redirect"),
    pytest.param("GET", 301, "  /padded  ", "https://site.example/padded", id="whitespace"),
]


@pytest.mark.parametrize(("method", "status", "location", "expected"), CASES)
def test_next_url(method: str, status: int, location: str | None, expected: str | None) -> None:
    assert next_url(method, status, BASE, location) == expected
