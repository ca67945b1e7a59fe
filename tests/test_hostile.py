"""Hostile input, sent to the real proxy under uvicorn: every request gets a quick, well-formed answer.

Each case must end in an XML-RPC fault (HTTP 200) or a transport-level HTTP error (408, 413); never a
500, a traceback, a hang or unbounded memory. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import gzip
import select
import socket
import time
import xmlrpc.client
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from pingforward.pingback import Fault, FaultCode, parse_call, ping_from_params
from tests.conftest import load
from tests.servers import LOCAL_ENV, Receiver, proxy, receiver

# The hostile receivers' tests are about forwarding alone: the spam checks, which would refuse their
# made-up sources, are off there, and tested end to end in test_spam.py.
NO_CHECKS = {"PINGFORWARD_SPAM_CHECKS": "off"}

# The policy refuses this forward before any DNS lookup or connection, so a request that gets that far
# is answered with fault 49 and nothing leaves the machine.
FORWARD = "/?forward=" + quote("http://127.0.0.1/webmention", safe="")
CALL_HEAD = b"<?xml version='1.0'?><methodCall><methodName>pingback.ping</methodName><params>"
CALL_TAIL = b"</params></methodCall>"


def nested(depth: int, kind: str) -> bytes:
    opening, closing = {
        "array": (b"<value><array><data>", b"</data></array></value>"),
        "struct": (b"<value><struct><member><name>a</name>", b"</member></struct></value>"),
    }[kind]
    return CALL_HEAD + b"<param>" + opening * depth + b"<value>x</value>" + closing * depth + b"</param>" + CALL_TAIL


def many_params(count: int) -> bytes:
    return CALL_HEAD + b"<param><value>https://a.example/</value></param>" * count + CALL_TAIL


CORPUS = [
    pytest.param(load("pingback/billion-laughs.xml"), FaultCode.PARSE_ERROR, id="billion-laughs"),
    pytest.param(load("pingback/quadratic-blowup.xml"), FaultCode.PARSE_ERROR, id="quadratic-blowup"),
    pytest.param(load("pingback/external-entity-file.xml"), FaultCode.PARSE_ERROR, id="xxe-file"),
    pytest.param(load("pingback/external-entity-url.xml"), FaultCode.PARSE_ERROR, id="xxe-url"),
    pytest.param(load("pingback/dtd.xml"), FaultCode.PARSE_ERROR, id="dtd"),
    pytest.param(nested(1500, "array"), FaultCode.INVALID_PARAMS, id="deep-arrays"),
    pytest.param(nested(1000, "struct"), FaultCode.INVALID_PARAMS, id="deep-structs"),
    pytest.param(nested(10_000, "array"), 413, id="10000-deep-arrays"),
    pytest.param(nested(10_000, "struct"), 413, id="10000-deep-structs"),
    pytest.param(many_params(1000), FaultCode.ACCESS_DENIED, id="1000-params"),  # extras ignored; refused forward
    pytest.param(many_params(100_000), 413, id="100000-params"),
    pytest.param(load("pingback/node.xml").replace(b"blog", b"bl\xc3\x28og"), FaultCode.PARSE_ERROR, id="bad-utf8"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbf" + load("pingback/node.xml"), FaultCode.PARSE_ERROR, id="double-bom"),
    pytest.param(load("pingback/node.xml").replace(b"blog", b"bl\x00og"), FaultCode.PARSE_ERROR, id="nul-byte"),
    pytest.param(load("pingback/node.xml") * 2, FaultCode.PARSE_ERROR, id="two-roots"),
    pytest.param(load("pingback/node.xml") + b"\x00\xff garbage", FaultCode.PARSE_ERROR, id="trailing-garbage"),
    pytest.param(gzip.compress(load("pingback/node.xml")), FaultCode.PARSE_ERROR, id="gzip-body"),
    pytest.param(
        b"<?xml version='1.0' encoding='klingon'?><methodCall/>", FaultCode.UNSUPPORTED_ENCODING, id="bogus-encoding"
    ),
    pytest.param(
        load("pingback/node.xml").replace(b'1.0"?>', b'1.0" encoding="UTF-16"?>'),
        FaultCode.PARSE_ERROR,
        id="utf16-declared-utf8-sent",
    ),
    pytest.param(
        b"<methodCall><methodName>" + b"a" * 60_000 + b"</methodName></methodCall>",
        FaultCode.METHOD_NOT_FOUND,
        id="huge-method-name",
    ),
]


@pytest.fixture(scope="module")
def hostile_proxy() -> Iterator[str]:
    with proxy({"PINGFORWARD_TIMEOUT": "1"}) as base:
        yield base


def raw_post(base: str, head: bytes, body_parts: Iterator[bytes] | list[bytes], timeout: float = 10) -> bytes:
    """Send a request byte for byte over a socket and return whatever the server answered."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered before the body was complete: stop sending
                sock.sendall(part)
        except OSError:  # the server answered and closed before we finished: fine
            pass
        answer = b""
        while not _complete(answer):
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
        return answer


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post(base: str, body: bytes, extra: bytes = b"") -> bytes:
    head = (
        f"POST {FORWARD} HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
    )
    return raw_post(base, head, [body])


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(("body", "expected"), CORPUS)
def test_hostile_request(hostile_proxy: str, body: bytes, expected: FaultCode | int) -> None:
    extra = b"Content-Encoding: gzip\r\n" if body[:2] == b"\x1f\x8b" else b""
    status, content = status_and_body(post(hostile_proxy, body, extra))
    if isinstance(expected, FaultCode):
        assert status == 200
        with pytest.raises(xmlrpc.client.Fault) as info:
            xmlrpc.client.loads(content)
        assert info.value.faultCode == expected
        assert "Traceback" not in info.value.faultString and "Error" not in info.value.faultString
    else:
        assert status == expected


def test_fifty_megabytes_with_content_length(hostile_proxy: str) -> None:
    head = f"POST {FORWARD} HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
    answer = raw_post(hostile_proxy, head, (b"<" * 65536 for _ in range(800)))
    assert status_and_body(answer)[0] == 413


def test_fifty_megabytes_chunked(hostile_proxy: str) -> None:
    head = f"POST {FORWARD} HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"10000\r\n" + b"<" * 65536 + b"\r\n"
    answer = raw_post(hostile_proxy, head, (chunk for _ in range(800)))
    assert status_and_body(answer)[0] == 413


def test_slow_drip_body_is_cut_off(hostile_proxy: str) -> None:
    body = load("pingback/node.xml")
    head = f"POST {FORWARD} HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def drip() -> Iterator[bytes]:
        for byte in body[:20]:  # bounded: 20 bytes, 0.2 s apart, far past the 1 s read limit
            yield bytes([byte])
            time.sleep(0.2)

    assert status_and_body(raw_post(hostile_proxy, head, drip()))[0] == 408


def test_memory_stays_bounded_after_the_corpus(hostile_proxy: str) -> None:
    port = hostile_proxy.rsplit(":", 1)[1]
    for _ in range(3):
        for case in CORPUS:
            post(hostile_proxy, case.values[0])  # type: ignore[arg-type]
    # The uvicorn process listening on our port: its peak resident memory.
    import subprocess

    pids = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()
    peaks = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as file:
                status = file.read()
        except OSError:
            continue
        peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    assert peaks and max(peaks) < 150 * 1024, peaks  # kB


@pytest.mark.parametrize("depth", [10_000])
def test_deep_nesting_in_the_codec_itself(depth: int) -> None:
    # Past the body cap the server never parses these, but the codec must cope on its own too.
    for kind in ("array", "struct"):
        with pytest.raises(Fault) as info:
            ping_from_params(parse_call(nested(depth, kind)).params)
        assert info.value.code is FaultCode.INVALID_PARAMS
    with pytest.raises(Fault) as info:
        ping_from_params(parse_call(many_params(100_000)).params[:1])
    assert info.value.code is FaultCode.INVALID_PARAMS


# Receiver-side hostility: the proxy ends each ping inside its time budget, and once a status line has
# arrived, that status decides, whatever the body does (Webmention §3.1.3: any 2xx is a success).

DELIVERED = "Pingback from https://blog.example/post to https://site.example/ was successful!"


@pytest.fixture(scope="module")
def hostile_receiver() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[str]:
    with proxy({**LOCAL_ENV, **NO_CHECKS, "PINGFORWARD_TIMEOUT": "1"}) as base:
        yield base


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/no-headers", "no answer from 127.0.0.1 port"),
        ("/hang", "no answer from 127.0.0.1 port"),
        ("/redirect/302/redirect/302/redirect/302/redirect/302/ok", "more than 3 redirects"),
        ("/stall/500", "upstream: HTTP 500"),  # the status picks the fault when the body will not come
    ],
)
def test_hostile_receiver(open_proxy: str, hostile_receiver: Receiver, path: str, words: str) -> None:
    server = xmlrpc.client.ServerProxy(f"{open_proxy}/?forward={quote(hostile_receiver.url + path, safe='')}")
    with server, pytest.raises(xmlrpc.client.Fault) as info:
        server.pingback.ping("https://blog.example/post", "https://site.example/")
    assert info.value.faultCode == FaultCode.UPSTREAM_ERROR
    assert words in info.value.faultString


@pytest.mark.parametrize(
    "path",
    [
        "/page",  # 100 KiB of HTML: more than is read, still accepted
        "/big",  # 50 MiB announced
        "/endless",  # chunks without end
        "/stall/202",  # the head, then a body that never ends
        "/identity-cut",  # a close-delimited body cut short
        "/garbage",
    ],
)
def test_a_2xx_is_delivered_whatever_its_body_does(open_proxy: str, hostile_receiver: Receiver, path: str) -> None:
    server = xmlrpc.client.ServerProxy(f"{open_proxy}/?forward={quote(hostile_receiver.url + path, safe='')}")
    with server:
        assert server.pingback.ping("https://blog.example/post", "https://site.example/") == DELIVERED


def test_an_error_body_too_large_to_read_leaves_the_status_to_decide(
    open_proxy: str, hostile_receiver: Receiver
) -> None:
    server = xmlrpc.client.ServerProxy(f"{open_proxy}/?forward={quote(hostile_receiver.url + '/huge-error', safe='')}")
    with server, pytest.raises(xmlrpc.client.Fault) as info:
        server.pingback.ping("https://blog.example/post", "https://site.example/")
    assert (info.value.faultCode, info.value.faultString) == (FaultCode.GENERIC, "HTTP 400")


def test_gzip_bomb_answer_is_never_inflated(open_proxy: str, hostile_receiver: Receiver) -> None:
    # 20 MiB of zeros gzip to ~20 KiB: under the byte cap, so the status decides and the body is ignored.
    server = xmlrpc.client.ServerProxy(f"{open_proxy}/?forward={quote(hostile_receiver.url + '/gzip-bomb', safe='')}")
    with server:
        answer = server.pingback.ping("https://blog.example/post", "https://site.example/")
    assert answer == "Pingback from https://blog.example/post to https://site.example/ was successful!"
