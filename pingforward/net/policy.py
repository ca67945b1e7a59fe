"""Where pingforward may send requests: the forward-target policy that keeps it from being an open relay.

Pure: `check_url` and `check_address` decide from values alone; the transport resolves host names
and calls them before every connection (see transport.py). Background: OWASP SSRF Prevention
Cheat Sheet; IANA IPv4/IPv6 Special-Purpose Address Registries (RFC 6890 and updates).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from pingforward.errors import Refused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS: Final = frozenset({80, 443, 8080, 8443})
MAX_CACHED_URL: Final = 2048  # as long as a forward URL may be; longer ones are checked afresh each time
SCHEME_PORTS: Final = {"http": 80, "https": 443}


def _nets(*specs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(spec) for spec in specs)


# IANA special-purpose registries, named so a refusal says which rule fired. Listed explicitly
# because `is_global` changed in 3.11.10 (CVE-2024-4032) and still calls 224/4 and ff00::/8 global.
NON_GLOBAL: Final = (
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("carrier-grade NAT", _nets("100.64.0.0/10")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    (
        "reserved",
        _nets(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "::/96",  # IPv4-compatible (deprecated), e.g. ::127.0.0.1
            "100::/64",
            "64:ff9b:1::/48",
            "2001::/23",
            "2001:db8::/32",
            "3fff::/20",
            "5f00::/16",
            "fec0::/10",
        ),
    ),
)
NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
TEREDO: Final = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 destination: a mapped address (::ffff:a.b.c.d), NAT64
    # (RFC 6052, 64:ff9b::a.b.c.d) and 6to4 (RFC 3056, 2002:AABB:CCDD::). Teredo is refused whole.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a globally routable unicast address, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in TEREDO:
            return "Teredo tunnel address"
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(inner)
            return f"{reason} (wrapped in IPv6)" if reason else None
    for name, networks in NON_GLOBAL:
        if any(ip in net for net in networks):
            return name
    return None if ip.is_global else "not globally routable"


def host_literal(host: str) -> IPAddress | None:
    """The address a numeric host stands for, including the legacy IPv4 forms resolvers accept.

    `127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` all mean 127.0.0.1 to inet_aton(3),
    which getaddrinfo uses for numeric hosts.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if host and all(ch in "0123456789abcdefxABCDEFX." for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_allowed(host: str, allowed: Collection[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules for one instance. The defaults refuse every non-global address."""

    allowed_hosts: frozenset[str] = frozenset()  # empty: any host; else exact names or "*.example.org"
    allowed_ports: frozenset[int] | None = DEFAULT_PORTS  # None: any port
    allow_private_networks: bool = False

    def check_url(self, url: str) -> None:
        """Refuse a URL by scheme, credentials, port, host allowlist or a numeric host."""
        reason = _cached_refusal(self, url) if len(url) <= MAX_CACHED_URL else _url_refusal(self, url)
        if reason is not None:
            raise Refused(reason)

    def check_addresses(self, addresses: Iterable[str]) -> None:
        """`check_address` for each of the addresses a host name resolved to, as strings."""
        if self.allow_private_networks:
            return
        for address in addresses:
            reason = _cached_address_refusal(address)
            if reason is not None:
                raise Refused(f"{reason} address {address} (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)")

    def check_address(self, ip: IPAddress) -> None:
        """Refuse an address the URL's host resolved to, unless private networks are allowed."""
        if self.allow_private_networks:
            return
        reason = address_refusal(ip)
        if reason is not None:
            raise Refused(f"{reason} address {ip} (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)")


def _url_refusal(policy: Policy, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in SCHEME_PORTS:
        return f"scheme {parts.scheme!r} is not http or https"
    if parts.username is not None or parts.password is not None:
        return "URLs with credentials are not forwarded to"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "the URL has no host"
    try:
        port = parts.port or SCHEME_PORTS[parts.scheme]
    except ValueError:
        return "the URL has an invalid port"
    # Every rule that refuses the URL is named, so that one answer lists every setting to change
    # (a receiver on http://127.0.0.1:5000/ needs two).
    reasons = []
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        reasons.append(f"port {port} is not allowed (PINGFORWARD_ALLOWED_PORTS)")
    if policy.allowed_hosts and not _host_allowed(host, policy.allowed_hosts):
        reasons.append(f"host {host} is not allowed (PINGFORWARD_ALLOWED_HOSTS)")
    if not policy.allow_private_networks and (host == "localhost" or host.endswith(".localhost")):
        # RFC 6761 §6.3: such names are loopback, whatever a resolver answers; refused before any lookup.
        reasons.append(f"{host} is a loopback name (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)")
    literal = host_literal(host)
    if literal is not None:
        try:
            policy.check_address(literal)
        except Refused as exc:
            reasons.append(exc.reason)
    return "; ".join(reasons) or None


def _address_refusal(address: str) -> str | None:
    return address_refusal(ipaddress.ip_address(address.split("%")[0]))  # without an IPv6 zone


# A worker dials the same few receivers again and again: each address is checked once.
_cached_address_refusal: Final = functools.lru_cache(maxsize=4096)(_address_refusal)

# Pings to one site all name the same forward URL, and the transport checks it again on every request.
_cached_refusal: Final = functools.lru_cache(maxsize=1024)(_url_refusal)
