"""The address policy, classified purely: nothing here opens a connection."""

from __future__ import annotations

import ipaddress

import pytest

from pingforward.errors import Refused
from pingforward.net.policy import Policy, address_refusal, host_literal

# Address -> the rule that refuses it (None: globally routable, allowed).
ADDRESS_CASES = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fd00::1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("::127.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback (wrapped in IPv6)"),
    ("::ffff:169.254.169.254", "link-local (wrapped in IPv6)"),
    ("64:ff9b::7f00:1", "loopback (wrapped in IPv6)"),  # NAT64
    ("64:ff9b::a00:1", "private (wrapped in IPv6)"),
    ("2002:7f00:1::", "loopback (wrapped in IPv6)"),  # 6to4
    ("2002:a9fe:a9fe::1", "link-local (wrapped in IPv6)"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel address"),
    ("64:ff9b:1::1", "reserved"),
    ("8.8.8.8", None),
    ("93.184.215.14", None),
    ("172.32.0.1", None),
    ("100.128.0.1", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None),
]


@pytest.mark.parametrize(("address", "reason"), ADDRESS_CASES)
def test_address_refusal(address: str, reason: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("169.254.169.254", "169.254.169.254"),
        ("example.org", None),
        ("deadbeef.example", None),
        ("cafe", None),
        ("1e100", None),
    ],
)
def test_host_literal(host: str, address: str | None) -> None:
    assert host_literal(host) == (ipaddress.ip_address(address) if address else None)


DEFAULT = Policy()

# URL -> the words of the refusal, or None when the URL-level rules allow it.
URL_CASES = [
    (DEFAULT, "https://site.example/webmention", None),
    (DEFAULT, "http://site.example:8080/wm", None),
    (DEFAULT, "https://site.example:8443/wm", None),
    (DEFAULT, "https://site.example:22/wm", "port 22 is not allowed"),
    (DEFAULT, "http://site.example:6379/", "port 6379 is not allowed"),
    (DEFAULT, "ftp://site.example/", "scheme 'ftp'"),
    (DEFAULT, "gopher://127.0.0.1:6379/_", "scheme 'gopher'"),
    (DEFAULT, "https://user:pw@site.example/", "credentials"),
    (DEFAULT, "http://127.0.0.1/", "loopback address 127.0.0.1"),
    (DEFAULT, "http://127.1/", "loopback address 127.0.0.1"),
    (DEFAULT, "http://2130706433/", "loopback address 127.0.0.1"),
    (DEFAULT, "http://0x7f000001/", "loopback address 127.0.0.1"),
    (DEFAULT, "http://[::1]/", "loopback address ::1"),
    (DEFAULT, "http://[::ffff:127.0.0.1]/", "loopback (wrapped in IPv6)"),
    (DEFAULT, "http://169.254.169.254/latest/meta-data/", "link-local"),
    # RFC 6761 §6.3: loopback by name, refused before any lookup.
    (DEFAULT, "http://localhost/", "localhost is a loopback name (PINGFORWARD_ALLOW_PRIVATE_NETWORKS)"),
    (DEFAULT, "http://LocalHost.:8080/", "localhost is a loopback name"),
    (DEFAULT, "http://wm.site.localhost/", "wm.site.localhost is a loopback name"),
    (DEFAULT, "http://localhost.site.example/", None),
    (DEFAULT, "http://notlocalhost/", None),
    (Policy(allow_private_networks=True), "http://localhost:8080/", None),
    (DEFAULT, "http://0.0.0.0/", "unspecified"),
    (DEFAULT, "http://10.0.0.1:8080/", "private"),
    (DEFAULT, "http://site.example:99999/", "invalid port"),
    (DEFAULT, "https:///path", "no host"),
    (Policy(allowed_ports=None), "https://site.example:22/", None),
    (Policy(allowed_ports=frozenset({9000})), "https://site.example/", "port 443 is not allowed"),
    (Policy(allow_private_networks=True), "http://127.0.0.1:8080/", None),
    (Policy(allow_private_networks=True), "http://127.0.0.1:5000/", "port 5000"),
    (
        DEFAULT,
        "http://127.0.0.1:5000/",
        "port 5000 is not allowed (PINGFORWARD_ALLOWED_PORTS); loopback address 127.0.0.1 "
        "(PINGFORWARD_ALLOW_PRIVATE_NETWORKS)",
    ),
    (
        Policy(allowed_hosts=frozenset({"site.example"})),
        "http://10.0.0.1:5000/",
        "PINGFORWARD_ALLOWED_PORTS); host 10.0.0.1 is not allowed (PINGFORWARD_ALLOWED_HOSTS); private",
    ),
    (Policy(allowed_hosts=frozenset({"site.example"})), "https://site.example/wm", None),
    (Policy(allowed_hosts=frozenset({"site.example"})), "https://SITE.example./wm", None),
    (
        Policy(allowed_hosts=frozenset({"site.example"})),
        "https://other.example/wm",
        "host other.example is not allowed",
    ),
    (Policy(allowed_hosts=frozenset({"site.example"})), "https://evil-site.example/", "not allowed"),
    (Policy(allowed_hosts=frozenset({"*.site.example"})), "https://a.b.site.example/", None),
    (Policy(allowed_hosts=frozenset({"*.site.example"})), "https://site.example/", "not allowed"),
    (Policy(allowed_hosts=frozenset({"*.site.example"})), "https://evilsite.example/", "not allowed"),
]


@pytest.mark.parametrize(("policy", "url", "refusal"), URL_CASES)
def test_check_url(policy: Policy, url: str, refusal: str | None) -> None:
    if refusal is None:
        policy.check_url(url)
    else:
        with pytest.raises(Refused, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            policy.check_url(url)


def test_private_networks_switch_lifts_only_the_address_rule() -> None:
    Policy(allow_private_networks=True).check_address(ipaddress.ip_address("10.0.0.1"))
    with pytest.raises(Refused, match="PINGFORWARD_ALLOW_PRIVATE_NETWORKS"):
        DEFAULT.check_address(ipaddress.ip_address("10.0.0.1"))
