"""pingforward.net.pool against real servers on 127.0.0.1, on asyncio's loop and on uvloop (which production runs)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trustme

from pingforward.config import DEFAULT_MAX_PER_HOST, Settings
from pingforward.errors import BrokenAnswer, ConnectFailed, OutboundError, OutboundTimeout, Refused
from pingforward.forward import forward
from pingforward.net.policy import Policy
from pingforward.net.pool import MAX_HEAD, RETRIED, RETRY_WINDOW, Pool, Slots, attempts
from pingforward.net.transport import LIMITS, PolicyTransport, make_client
from pingforward.pingback import Ping
from pingforward.pinglog import PingLine

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"
HANG = b""  # an answer that never comes


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


@dataclass
class Server:
    """Answers the n-th request with answers[n] (raw bytes) and counts connections."""

    answers: list[bytes]
    close_after: set[int] = field(default_factory=set)  # request numbers after which the server closes
    drop: set[int] = field(default_factory=set)  # request numbers read and then closed on, unanswered
    linger: float = 0.0  # seconds before such a close
    connections: int = 0
    closed: int = 0  # connections the client closed or the server ended
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                number = len(self.requests) - 1
                if number in self.drop:
                    await asyncio.sleep(self.linger)
                    break
                answer = self.answers[number] if number < len(self.answers) else OK
                if answer == HANG:
                    await asyncio.sleep(10)  # bounded; the tests' timeouts are far shorter
                writer.write(answer)
                await writer.drain()
                if number in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


@asynccontextmanager
async def serving(server: Server, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        listener.close()


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def client(pool: Pool, timeout: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=pool, timeout=timeout)


async def post(http: httpx.AsyncClient, server: Server, path: str = "/wm") -> httpx.Response:
    return await http.post(f"http://127.0.0.1:{server.port}{path}", content=b"source=a&target=b")


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving(Server([OK, OK, OK])) as server, client(Pool(loopback)) as http:
        for _ in range(3):
            response = await post(http, server)
            assert (response.status_code, response.content) == (202, b"ok")
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /wm HTTP/1.1\r\n")
        assert server.requests[0].endswith(b"\r\n\r\nsource=a&target=b")


async def test_connection_close_answer_is_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    async with serving(Server([close, OK], close_after={0})) as server, client(Pool(loopback)) as http:
        assert (await post(http, server)).content == b"hi"
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 2


async def test_server_closing_an_idle_connection_is_noticed() -> None:
    async with serving(Server([OK, OK], close_after={0})) as server, client(Pool(loopback)) as http:
        await post(http, server)
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        assert (await post(http, server)).status_code == 202
        assert server.connections == 2


async def test_idle_connections_expire() -> None:
    async with serving(Server([OK, OK])) as server, client(Pool(loopback, keepalive_expiry=0.05)) as http:
        await post(http, server)
        await asyncio.sleep(0.15)
        assert server.closed == 1  # closed by the pool's sweeper, unasked
        await post(http, server)
        assert server.connections == 2


async def test_chunked_answer_is_decoded_and_the_connection_reused() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with serving(Server([chunked, OK])) as server, client(Pool(loopback)) as http:
        assert (await post(http, server)).content == b"hello world"
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 1


async def test_body_ended_by_close() -> None:
    # RFC 9112 §6.3: no Content-Length and no chunked coding, so the body runs to the close.
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000
    async with serving(Server([answer], close_after={0})) as server, client(Pool(loopback)) as http:
        assert (await post(http, server)).content == b"x" * 100_000


async def test_body_cut_by_a_reset_is_an_error() -> None:
    # RFC 9112 §6.3 ¶8 and §8: only a close ends such a body; a reset leaves the answer incomplete.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)  # the client has the bytes; now the reset
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener, client(Pool(loopback)) as http:
        with pytest.raises(ConnectFailed):
            await http.get(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/")


async def test_big_answer_read_in_part_closes_the_connection() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 10_000_000
    async with serving(Server([big, OK])) as server, client(Pool(loopback)) as http:
        async with http.stream("POST", f"http://127.0.0.1:{server.port}/") as response:
            async for chunk in response.aiter_raw():
                assert chunk
                break  # what forward() does past MAX_ANSWER
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 2


async def test_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with serving(Server([answer, OK])) as server, client(Pool(loopback)) as http:
        response = await post(http, server)
        assert (response.status_code, response.content, "link" in response.headers) == (202, b"ok", False)
        assert (await post(http, server)).content == b"ok"


async def test_head_answer_has_no_body() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    async with serving(Server([answer, OK])) as server, client(Pool(loopback)) as http:
        response = await http.head(f"http://127.0.0.1:{server.port}/")
        assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "1234")
        assert (await post(http, server)).content == b"ok"


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "head-too-long"],
)
async def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    async with serving(Server([answer])) as server, client(Pool(loopback)) as http:
        with pytest.raises(BrokenAnswer):
            await post(http, server)


async def test_truncated_answer_is_a_protocol_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"
    async with serving(Server([answer], close_after={0})) as server, client(Pool(loopback)) as http:
        with pytest.raises(BrokenAnswer):
            await post(http, server)


async def test_data_after_the_answer_spoils_the_connection() -> None:
    async with serving(Server([OK + b"HTTP/1.1 200 OK\r\n\r\n", OK])) as server, client(Pool(loopback)) as http:
        assert (await post(http, server)).content == b"ok"
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 2


async def test_a_second_answer_in_the_same_read_is_not_merged_into_the_first() -> None:
    # E.g. a server that answers early, then takes the unread request body for a request and
    # answers that too, in one segment: only the first answer is this request's (RFC 9112 §9.3).
    second = b"HTTP/1.1 400 Bad Request\r\nX-Second: 1\r\nContent-Length: 3\r\n\r\nbad"
    async with serving(Server([OK + second, OK])) as server, client(Pool(loopback)) as http:
        response = await post(http, server)
        assert (response.status_code, response.content) == (202, b"ok")
        assert ("x-second" in response.headers, response.headers["content-length"]) == (False, "2")
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 2


async def test_bytes_after_a_head_answer_are_not_its_content() -> None:
    # RFC 9110 §9.3.2: an answer to HEAD has no content, even if the server sends some with it.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    async with serving(Server([answer, OK])) as server, client(Pool(loopback)) as http:
        response = await http.head(f"http://127.0.0.1:{server.port}/")
        assert (response.status_code, response.content) == (200, b"")
        assert (await post(http, server)).content == b"ok"


async def test_chunked_trailers_are_not_header_fields() -> None:
    # RFC 9110 §6.5.1: trailer fields are not merged into the header section.
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nLocation: /elsewhere\r\n\r\n"
    async with serving(Server([answer, OK])) as server, client(Pool(loopback)) as http:
        response = await post(http, server)
        assert (response.content, "location" in response.headers) == (b"ok", False)
        assert (await post(http, server)).content == b"ok"
        assert server.connections == 1


async def test_read_timeout() -> None:
    async with serving(Server([HANG])) as server, client(Pool(loopback), timeout=0.1) as http:
        with pytest.raises(OutboundTimeout):
            await post(http, server)


async def test_connect_timeout_covers_resolving() -> None:
    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(1)
        return ["127.0.0.1"]

    async with client(Pool(slow), timeout=0.1) as http:
        with pytest.raises(OutboundTimeout):
            await http.get("http://slow.test:9/")


async def test_connection_refused() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with client(Pool(loopback)) as http:
        with pytest.raises(ConnectFailed):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_pool_timeout_and_slots_come_back_after_cancellation() -> None:
    async with serving(Server([HANG, OK])) as server, client(Pool(loopback, max_connections=1), timeout=5) as http:
        hanging = asyncio.ensure_future(post(http, server))
        await asyncio.sleep(0.05)
        with pytest.raises(OutboundTimeout):
            await http.post(f"http://127.0.0.1:{server.port}/", timeout=httpx.Timeout(5, pool=0.05))
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert (await post(http, server)).content == b"ok"


async def test_policy_refusal_comes_before_any_connection() -> None:
    transport = PolicyTransport(Policy(allowed_ports=None), httpx.Limits(), resolver=loopback)
    async with serving(Server([OK])) as server, httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(Refused, match="loopback"):
            await http.post(f"http://receiver.test:{server.port}/wm")  # the name passes, its address does not
        assert server.connections == 0


async def test_header_injection_is_refused() -> None:
    async with serving(Server([OK])) as server, client(Pool(loopback)) as http:
        with pytest.raises(OutboundError):
            await http.post(f"http://127.0.0.1:{server.port}/", headers={"X-A": "1\r\nX-Injected: 1"})
        assert server.requests == []


async def test_close_returns_once_idle_connections_are_closed() -> None:
    server = Server([OK])
    async with serving(server):
        pool = Pool(loopback)
        async with client(pool) as http:
            await post(http, server)
            [idle] = [connection for stack in pool._idle.values() for connection in stack]
        assert idle.lost.done() and pool._idle == {}


# --- TLS: the connection goes to the checked address, the certificate must name the URL's host ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_pair(ca: trustme.CA, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server)
    client_side = ssl.create_default_context()
    ca.configure_trust(client_side)
    return server, client_side


async def test_tls_verifies_the_host_name_not_the_address(ca: trustme.CA) -> None:
    server_tls, client_tls = tls_pair(ca, "receiver.test")
    async with serving(Server([OK, OK]), server_tls) as server:
        async with client(Pool(loopback, ssl_context=client_tls)) as http:
            for _ in range(2):
                response = await http.post(f"https://receiver.test:{server.port}/wm", content=b"x")
                assert response.content == b"ok"
            assert server.connections == 1
            assert b"\r\nHost: receiver.test:" in server.requests[0]


async def test_tls_with_a_certificate_for_another_name_fails(ca: trustme.CA) -> None:
    server_tls, client_tls = tls_pair(ca, "other.test")
    async with serving(Server([OK]), server_tls) as server:
        async with client(Pool(loopback, ssl_context=client_tls)) as http:
            with pytest.raises(ConnectFailed, match="(?i)certificate"):
                await http.post(f"https://receiver.test:{server.port}/wm", content=b"x")


@contextmanager
def deaf_tls_server(tls: ssl.SSLContext, answer: bytes) -> Iterator[int]:
    """A TLS server thread that answers one request and then never reads again (no close_notify reply)."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def run() -> None:
        with listener, listener.accept()[0] as raw, tls.wrap_socket(raw, server_side=True) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(answer)
            done.wait(10)  # bounded; the test needs far less

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()


async def test_dropping_a_tls_connection_does_not_wait_for_the_peer(ca: trustme.CA) -> None:
    # asyncio's TLS close() waits up to 30 s (ssl_shutdown_timeout) for the peer's close_notify;
    # a receiver that stops reading must not turn a 0.2 s read timeout into that wait.
    server_tls, client_tls = tls_pair(ca, "receiver.test")
    with deaf_tls_server(server_tls, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort") as port:
        async with client(Pool(loopback, ssl_context=client_tls), timeout=0.2) as http:
            async with asyncio.timeout(10):  # a hang guard, far above 0.2 s and far below 30 s
                with pytest.raises(OutboundTimeout):
                    await http.post(f"https://receiver.test:{port}/wm", content=b"x")


# --- make_client: the pool as the proxy uses it ---


async def test_client_keeps_no_cookies() -> None:
    # One client serves every blog: a receiver's cookie must not come back on the next ping.
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 2\r\n\r\nok"
    settings = Settings(allow_private_networks=True, allowed_ports=None)
    async with serving(Server([answer, OK])) as server, make_client(settings) as http:
        await post(http, server)
        await post(http, server)
        assert b"cookie" not in server.requests[1].lower()
        assert server.connections == 1


async def test_client_checks_every_url_before_connecting() -> None:
    async with serving(Server([OK])) as server, make_client(Settings(allow_private_networks=True)) as http:
        with pytest.raises(Refused, match="port"):
            await post(http, server)  # a random port is outside the default allowed ports
        assert server.connections == 0


async def test_a_post_on_a_reused_connection_closed_unanswered_goes_out_again() -> None:
    # The receiver closes a kept-alive connection as the ping arrives on it, before a byte of answer
    # (a server closing idle connections at the moment of reuse): it goes out again, on a new connection.
    async with serving(Server([OK], drop={1})) as server, client(Pool(loopback)) as http:
        assert RETRIED not in (await post(http, server)).extensions
        response = await post(http, server)
        assert (response.content, response.extensions[RETRIED]) == (b"ok", True)
        assert (server.connections, len(server.requests)) == (2, 3)


async def test_a_post_that_a_receiver_worked_on_before_closing_is_not_sent_again() -> None:
    # Closed a while after the write: not the reuse race, and the receiver may have taken the ping.
    async with serving(Server([OK], drop={1}, linger=RETRY_WINDOW + 0.3)) as server, client(Pool(loopback)) as http:
        await post(http, server)
        with pytest.raises(BrokenAnswer):
            await post(http, server)
        assert len(server.requests) == 2


async def test_a_post_is_not_sent_again_once_an_answer_began() -> None:
    cut = b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nok"  # then the server closes
    async with serving(Server([OK, cut], close_after={1})) as server, client(Pool(loopback)) as http:
        await post(http, server)
        with pytest.raises(BrokenAnswer):
            await (
                await http.send(http.build_request("POST", f"http://127.0.0.1:{server.port}/wm"), stream=True)
            ).aread()
        assert len(server.requests) == 2


@dataclass
class Gate:
    """A receiver that holds every request until `opened`, and records how many it held at once."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    most: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) if b"length:" in head else 0
                await reader.readexactly(length)
                self.held += 1
                self.most = max(self.most, self.held)
                await asyncio.wait_for(self.opened.wait(), 10)  # bounded; the tests open it far sooner
                self.held -= 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def gated(host: str = "127.0.0.1") -> AsyncIterator[Gate]:
    gate = Gate()
    listener = await asyncio.start_server(gate.handle, host, 0)
    gate.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield gate
        gate.opened.set()
        listener.close()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # bounded: 5 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def test_a_busy_destination_waits_its_turn_instead_of_failing() -> None:
    async with gated() as gate, client(Pool(loopback, max_per_destination=2)) as http:
        url = f"http://127.0.0.1:{gate.port}/wm"
        pings = [asyncio.ensure_future(http.post(url, content=b"x", timeout=10)) for _ in range(10)]
        await until(lambda: gate.held == 2)
        await asyncio.sleep(0.05)  # time for a third to get through, were the limit not kept
        assert gate.held == 2 and not any(ping.done() for ping in pings)
        gate.opened.set()
        assert [(await ping).status_code for ping in pings] == [202] * 10
        assert gate.most == 2


async def test_the_limit_counts_where_a_connection_goes_not_how_it_is_spelled() -> None:
    names = {"a.test": "127.0.0.1", "b.test": "127.0.0.1", "c.test": "127.0.0.2"}

    async def table(host: str, port: int) -> list[str]:
        return [names[host]]

    pool = Pool(table, max_connections=2000, max_per_destination=1)
    async with gated() as hanging, gated("127.0.0.2") as other, client(pool) as http:
        first = asyncio.ensure_future(http.post(f"http://a.test:{hanging.port}/", content=b"x", timeout=10))
        await until(lambda: hanging.held == 1)
        # Another name for the same address waits behind it, up to the pool timeout...
        with pytest.raises(OutboundTimeout):
            await http.post(f"http://b.test:{hanging.port}/", content=b"x", timeout=httpx.Timeout(10, pool=0.1))
        # ...while another address goes ahead at once.
        other.opened.set()
        assert (await http.post(f"http://c.test:{other.port}/", content=b"x", timeout=10)).status_code == 202
        hanging.opened.set()
        assert (await first).status_code == 202
        # The slots came back: the timed-out waiter left no trace in its line.
        assert (await http.post(f"http://b.test:{hanging.port}/", content=b"x", timeout=10)).status_code == 202
        assert not pool.slots._lines and (pool.slots.in_use, pool.slots.waiting) == (0, 0)


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    pool = Pool(loopback, max_connections=1000, max_per_destination=1)
    async with gated() as gate, client(pool) as http:
        url = f"http://127.0.0.1:{gate.port}/"
        holder = asyncio.ensure_future(http.post(url, content=b"x", timeout=10))
        await until(lambda: gate.held == 1)
        waiter = asyncio.ensure_future(http.post(url, content=b"x", timeout=10))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.opened.set()
        assert (await holder).status_code == 202
        assert (await http.post(url, content=b"x", timeout=10)).status_code == 202
        assert not pool.slots._lines and (pool.slots.in_use, pool.slots.waiting) == (0, 0)


async def test_a_post_a_receiver_worked_on_briefly_before_closing_is_not_sent_again() -> None:
    # A receiver replaced while it works on a ping (50 ms answers): it may have taken it, so the close
    # that comes well after the connection's round trip is no keep-alive race.
    async with serving(Server([OK], drop={1}, linger=0.06)) as server, client(Pool(loopback)) as http:
        await post(http, server)
        with pytest.raises(BrokenAnswer):
            await post(http, server)
        assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("addresses", "tried"),
    [
        (["1.0.0.1"], ["1.0.0.1"]),
        ([f"1.0.0.{n}" for n in range(1, 200)], ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4"]),
        (
            ["2001:db8::1", "2001:db8::2", "2001:db8::3", "1.0.0.1"],
            ["2001:db8::1", "1.0.0.1", "2001:db8::2", "2001:db8::3"],
        ),
        (["1.0.0.1", "1.0.0.2", "2001:db8::1", "2001:db8::2"], ["1.0.0.1", "2001:db8::1", "1.0.0.2", "2001:db8::2"]),
        (
            [*(f"2001:db8::{n}" for n in range(1, 100)), "1.0.0.1"],
            ["2001:db8::1", "1.0.0.1", "2001:db8::2", "2001:db8::3"],
        ),
    ],
    ids=["one", "many", "ipv6-first", "ipv4-first", "many-ipv6-one-ipv4"],
)
def test_a_new_connection_tries_a_handful_of_addresses_families_taking_turns(
    addresses: list[str], tried: list[str]
) -> None:
    assert attempts(addresses) == tried


async def test_a_name_with_many_addresses_costs_a_handful_of_attempts() -> None:
    # 50 addresses where nothing listens, then the receiver: the connection gives up after a handful.
    async def many(host: str, port: int) -> list[str]:
        return [f"127.0.1.{n}" for n in range(1, 51)] + ["127.0.0.1"]

    async with serving(Server([OK])) as server, client(Pool(many)) as http:
        with pytest.raises(ConnectFailed, match="refused"):
            await post(http, server)
        assert server.connections == 0


async def test_a_slot_counts_against_the_address_dialled() -> None:
    # Names answering [an address that refuses at once, the victim]: the connection falls through to
    # the victim, so each ping must count against the victim, not against the refusing address.
    async def refusing_first(host: str, port: int) -> list[str]:
        return ["127.0.1.1", "127.0.0.1"] if host.endswith(".test") else ["127.0.0.1"]

    pool = Pool(refusing_first, max_per_destination=2)
    async with gated() as victim, client(pool) as http:
        pings = [
            asyncio.ensure_future(http.post(f"http://n{n}.test:{victim.port}/", content=b"x", timeout=10))
            for n in range(6)
        ]
        await until(lambda: victim.held == 2)
        await asyncio.sleep(0.05)  # time for a third to arrive, were the slots counted against 127.0.1.1
        assert (victim.held, pool.slots.in_use, pool.slots.waiting) == (2, 2, 4)
        victim.opened.set()
        assert [(await ping).status_code for ping in pings] == [202] * 6
        assert victim.most == 2
        assert not pool.slots._lines and (pool.slots.in_use, pool.slots.waiting) == (0, 0)


async def test_idle_connections_are_closed_least_recently_used_first() -> None:
    # At the cap of idle connections, the one idle longest goes, never the one just handed back: a busy
    # receiver keeps its kept-alive connection however many other origins have one idle.
    async with (
        serving(Server([])) as old,
        serving(Server([])) as other,
        serving(Server([])) as busy,
        client(Pool(loopback, max_idle=2)) as http,
    ):
        await post(http, old)
        await post(http, other)
        for _ in range(5):
            await post(http, busy)
        await until(lambda: old.closed == 1)
        assert (old.connections, other.connections, busy.connections) == (1, 1, 1)
        assert (other.closed, busy.closed) == (0, 0)
        await post(http, other)  # still kept
        assert other.connections == 1


# --- Slots: a guaranteed share per destination, and a shared bulk ---


async def hold(slots: Slots, destination: str, count: int) -> list[asyncio.Task[bool]]:
    """`count` requests for slots to `destination`, started in order; those not yet granted are pending."""
    tasks = [asyncio.ensure_future(slots.acquire(destination, None)) for _ in range(count)]
    await asyncio.sleep(0)
    return tasks


async def test_two_hanging_destinations_cannot_take_the_pool_on_the_defaults() -> None:
    slots = Slots(LIMITS.max_connections or 0, DEFAULT_MAX_PER_HOST)
    hanging = [*await hold(slots, "11.22.33.45", 1100), *await hold(slots, "11.22.33.46", 1100)]
    assert (sum(task.done() for task in hanging), slots.waiting) == (2000, 200)
    # A third destination gets a burst of 1,000 at once, no turn to wait for.
    honest = await hold(slots, "11.22.33.44", 1000)
    assert all(task.done() for task in honest) and slots.in_use == 3000
    for task in hanging:
        task.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)


async def test_a_bulk_taken_whole_leaves_every_destination_its_share() -> None:
    slots = Slots(bulk=4, per_destination=5, share=2)
    first = await hold(slots, "a", 4)  # 2 of its share, 2 of the bulk
    second = await hold(slots, "b", 5)  # 2 of its share, 2 of the bulk: the bulk is gone; 1 waits
    third = await hold(slots, "c", 3)  # its share, and 1 waits for the bulk, behind b's
    assert [task.done() for task in second + third] == [True] * 4 + [False] + [True] * 2 + [False]
    assert (slots.in_use, slots.bulk_in_use, slots.waiting) == (10, 4, 2)
    # A bulk slot handed back goes to the line that has waited longest for the bulk: b's, then c's.
    slots.release("a", first[3].result())
    await asyncio.sleep(0)
    assert (second[4].done(), third[2].done()) == (True, False)
    slots.release("a", first[2].result())
    await asyncio.sleep(0)
    assert third[2].done() and third[2].result() is True
    # A share slot handed back goes to its own line only.
    slots.release("a", first[0].result())
    assert (slots.in_use, slots.bulk_in_use) == (9, 4)
    for name, tasks in (("a", first[1:2]), ("b", second), ("c", third)):
        for task in tasks:
            slots.release(name, task.result())
    assert (slots.in_use, slots.bulk_in_use, slots.waiting, slots._lines) == (0, 0, 0, {})


async def test_a_waiter_for_the_bulk_takes_its_own_share_when_one_comes_back() -> None:
    slots = Slots(bulk=1, per_destination=10, share=2)
    await hold(slots, "b", 3)  # b takes the bulk's one slot
    mine = await hold(slots, "a", 3)
    assert [task.done() for task in mine] == [True, True, False]
    slots.release("a", mine[0].result())  # a share slot of its own: the waiter need not wait for the bulk
    await asyncio.sleep(0)
    assert mine[2].done() and mine[2].result() is False


async def test_waiters_that_give_up_leave_no_trace() -> None:
    slots = Slots(bulk=1, per_destination=2, share=1)
    held = await hold(slots, "a", 2)
    with pytest.raises(OutboundTimeout, match="no free connection to a"):
        await slots.acquire("a", 0.01)
    cancelled = await hold(slots, "a", 3)
    for task in cancelled:
        task.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    assert slots.waiting == 0
    for task in held:
        slots.release("a", task.result())
    assert (slots.in_use, slots.bulk_in_use, slots.waiting, slots._lines) == (0, 0, 0, {})


async def test_a_retry_is_marked_on_the_outcome_and_the_ping_line() -> None:
    ping = Ping("https://a.example/post", "https://b.example/page")
    async with serving(Server([OK], drop={1})) as server:
        pool = Pool(loopback)
        url = f"http://127.0.0.1:{server.port}/wm"
        first = await forward(pool, ping, url, client_ip="192.0.2.1", timeout=5)
        second = await forward(pool, ping, url, client_ip="192.0.2.1", timeout=5)
        await pool.aclose()
    assert (first.fault, first.retried, second.fault, second.retried) == (None, False, None, True)
    line = PingLine("192.0.2.1", "127.0.0.1", ping.source, ping.target, 202, None, 1.0, retried=second.retried)
    assert line.text().endswith(" retry=1") and line.fields()["retry"] is True
    assert "retry" not in PingLine("192.0.2.1", "127.0.0.1", "s", "t", 202, None, 1.0).fields()
