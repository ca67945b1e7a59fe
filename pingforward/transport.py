"""The outbound HTTP client: one per worker, shared by the proxy and the sender, policy enforced inside.

Every request's URL is checked against the `Policy` before it is sent (so every redirect hop is
checked too), and every new connection resolves the host once, checks every address, and
connects to a checked address; TLS still verifies the real host name. A second DNS lookup that
an attacker could answer differently (DNS rebinding) never happens. The connections themselves
are carried by pool.py (bench/README.md has the numbers behind that choice).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import partial

import httpx

from pingforward import PROJECT_URL, __version__
from pingforward.config import Settings
from pingforward.policy import Policy
from pingforward.pool import Pool

USER_AGENT = f"pingforward/{__version__} (+{PROJECT_URL})"
# RFC 9110 §7.6.3: gateways add Via. app.py refuses requests that carry it, so a forward URL
# that reaches this proxy under another name ends in an error instead of a loop.
VIA = "1.1 pingforward"


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class Client(httpx.AsyncClient):
    """An AsyncClient that keeps no cookies.

    One client serves every ping, so a cookie set by one receiver would ride along on pings from
    other blogs. Not looking for them also saves httpx building a cookiejar request and an email
    message from every answer, a fifth of the client's cost per request (bench/README.md).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


async def resolve(policy: Policy, host: str, port: int) -> list[str]:
    """The addresses `host` stands for, each checked by the policy; `Refused` if any is refused."""
    try:
        addresses = [str(ipaddress.ip_address(host))]  # a literal needs no lookup
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:  # socket.gaierror: no such host
            raise httpx.ConnectError(f"cannot resolve {host}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:  # all of them: refuse a name with any non-global answer
        policy.check_address(ipaddress.ip_address(address.split("%")[0]))
    return addresses


def make_client(settings: Settings) -> httpx.AsyncClient:
    """An AsyncClient that enforces the policy, never follows redirects by itself and ignores proxy settings."""
    policy = settings.policy

    async def check_url(request: httpx.Request) -> None:
        policy.check_url(str(request.url))

    return Client(
        transport=Pool(partial(resolve, policy)),
        # An event hook runs for every request the client sends, above the transport (and above
        # respx, which the tests put in the transport's place).
        event_hooks={"request": [check_url]},
        # No proxies or .netrc from the environment: we POST to URLs that strangers name.
        trust_env=False,
        follow_redirects=False,
        timeout=settings.timeout,
        headers={"User-Agent": USER_AGENT, "Via": VIA},
    )
