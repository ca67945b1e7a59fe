"""What pingforward.server relies on in uvicorn's httptools protocol, a module that is not uvicorn's public API.

pyproject.toml pins uvicorn to one minor version; these tests fail loudly, naming what moved, when a new
uvicorn changes a method or attribute the subclass overrides, calls or reads, or the behaviour it assumes.
Two methods are re-implemented in the subclass (data_received, on_header): their source is fingerprinted, so
that any change there is read and carried over by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http import flow_control
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from pingforward.server import HttpToolsProtocol

# The methods the subclass overrides or calls, with the signatures it was written against.
SIGNATURES = [
    ("__init__", "(self, config, server_state, app_state, _loop=None)"),
    ("connection_made", "(self, transport)"),
    ("data_received", "(self, data)"),
    ("on_message_begin", "(self)"),
    ("on_header", "(self, name, value)"),
    ("on_headers_complete", "(self)"),
    ("on_message_complete", "(self)"),
    ("on_response_complete", "(self)"),
    ("pause_writing", "(self)"),
    ("resume_writing", "(self)"),
    ("_unset_keepalive_if_required", "(self)"),
    ("_should_upgrade", "(self)"),
    ("handle_websocket_upgrade", "(self)"),
    ("_unsupported_upgrade_warning", "(self)"),
]

# The re-implemented methods' source in the uvicorn version pinned (sha256 of inspect.getsource, first 16).
FINGERPRINTS = {"data_received": "010a7ae59a5d3b1a", "on_header": "65d62c044f61fdbd"}


@pytest.mark.parametrize(("name", "signature"), SIGNATURES, ids=[name for name, _ in SIGNATURES])
def test_the_methods_the_subclass_uses_keep_their_signatures(name: str, signature: str) -> None:
    method = getattr(Base, name, None)
    assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more: pingforward.server uses it"
    parameters = inspect.signature(method).parameters.values()
    found = (
        "("
        + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}" for p in parameters)
        + ")"
    )
    assert found == signature, f"uvicorn's HttpToolsProtocol.{name} is now {found}: check pingforward.server"


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_the_re_implemented_methods_are_unchanged(name: str) -> None:
    source = inspect.getsource(getattr(Base, name))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == FINGERPRINTS[name], (
        f"uvicorn's HttpToolsProtocol.{name} changed; pingforward.server re-implements it: carry the change "
        f"over by hand, then update FINGERPRINTS. The new source:\n{source}"
    )


def test_the_flow_control_names_exist() -> None:
    assert flow_control.HIGH_WATER_LIMIT > 0
    for name in ("pause_reading", "resume_reading", "read_paused", "write_paused"):
        assert hasattr(flow_control.FlowControl(_Transport()), name), name


class _Transport(asyncio.Transport):
    """Records what the protocol writes and how it pauses; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.reading = True
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4321), "sockname": ("127.0.0.1", 80)}.get(name, default)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive())["more_body"]:
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _protocol(cls: type[Base], loop: asyncio.AbstractEventLoop) -> tuple[Base, _Transport]:
    config = Config(_app, http=cls, log_level="warning")
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(20):
        loop.run_until_complete(asyncio.sleep(0))


HEAD = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: V\r\nExpect: 100-continue\r\n\r\n"


@pytest.mark.parametrize("cls", [Base, HttpToolsProtocol], ids=["uvicorn", "pingforward"])
def test_a_head_becomes_the_scope_the_subclass_reads(cls: type[Base], loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = _protocol(cls, loop)
    assert protocol in protocol.connections and protocol.loop is loop and protocol.client == ("127.0.0.1", 4321)
    protocol.data_received(HEAD[:20])
    assert protocol.url == b"/a" and isinstance(protocol.headers, list)  # set in on_message_begin, grown in on_url
    protocol.data_received(HEAD[20:])
    assert protocol.headers == [(b"host", b"x"), (b"x-mixed-case", b"V"), (b"expect", b"100-continue")]
    assert protocol.expect_100_continue is True
    assert protocol.parser.get_method() == b"GET" and protocol.parser.get_http_version() == "1.1"
    assert isinstance(protocol.cycle, RequestResponseCycle) and protocol.cycle.more_body is False
    _settle(loop)


@pytest.mark.parametrize("cls", [Base, HttpToolsProtocol], ids=["uvicorn", "pingforward"])
def test_pipelined_requests_queue_pause_reading_and_are_started_on_response_complete(
    cls: type[Base], loop: asyncio.AbstractEventLoop
) -> None:
    protocol, transport = _protocol(cls, loop)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    protocol.data_received(request * 3)
    # The first is running; the others wait in `pipeline`, the newest in `cycle`, and reading is paused.
    assert len(protocol.pipeline) == 2 and protocol.flow.read_paused and not transport.reading
    assert protocol.pipeline[0][0] is protocol.cycle
    _settle(loop)
    # Each answer calls on_response_complete, which starts the next and resumes reading; the last arms keep-alive.
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    assert not protocol.pipeline and protocol.cycle.response_complete
    assert transport.reading and protocol.timeout_keep_alive_task is not None
    protocol.timeout_keep_alive_task.cancel()


@pytest.mark.parametrize("cls", [Base, HttpToolsProtocol], ids=["uvicorn", "pingforward"])
def test_a_body_arrives_in_the_cycle_and_ends_with_more_body_false(
    cls: type[Base], loop: asyncio.AbstractEventLoop
) -> None:
    protocol, transport = _protocol(cls, loop)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    assert protocol.cycle.more_body is True and bytes(protocol.cycle.body) == b"ab"
    protocol.data_received(b"cd")
    assert protocol.cycle.more_body is False
    _settle(loop)
    assert protocol.cycle.response_complete and transport.written.startswith(b"HTTP/1.1 200 OK")
    protocol._unset_keepalive_if_required()


def test_write_pauses_reach_the_flow_control(loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = _protocol(Base, loop)
    protocol.pause_writing()
    assert protocol.flow.write_paused
    protocol.resume_writing()
    assert not protocol.flow.write_paused


def test_a_malformed_head_is_a_parser_error(loop: asyncio.AbstractEventLoop) -> None:
    # The subclass answers 400 for what httptools raises as HttpParserError, as uvicorn does.
    protocol, transport = _protocol(Base, loop)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 ") and transport.closing
