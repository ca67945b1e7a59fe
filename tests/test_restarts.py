"""Stops and worker deaths of the Procfile's command with two workers, as a real process tree on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest

from pingforward.supervisor import death
from tests.servers import LOCAL_ENV, Process, procfile_server, receiver

TWO_WORKERS = {**LOCAL_ENV, "WEB_CONCURRENCY": "2"}
IN_FLIGHT = 40
HANG = 3.0  # seconds without an answer that count as a hang: far longer than a refusal or a local ping takes

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, seconds: float = 15.0) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def post_ping(base: str, forward: str, timeout: float) -> tuple[str, object]:
    """One pingback on a connection of its own: ("ok", answer), ("fault", code), or how the connection failed."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = xmlrpc.client.dumps(("https://blog.example/post", "https://site.example/notes/42"), "pingback.ping")
    try:
        connection.request("POST", f"/?forward={quote(forward, safe='')}", body, {"Content-Type": "text/xml"})
        answer = connection.getresponse().read()
    except ConnectionRefusedError:
        return "refused", None
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
        return "reset", type(exc).__name__
    except TimeoutError:
        return "hang", None
    finally:
        connection.close()
    try:
        (result,), _ = xmlrpc.client.loads(answer)
    except xmlrpc.client.Fault as fault:
        return "fault", fault.faultCode
    return "ok", result


def worker_pids(server: Process) -> list[int]:
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", server.output())]


def two_workers(server: Process) -> list[int] | None:
    pids = worker_pids(server)
    return pids if len(pids) == 2 else None


def test_sigterm_refuses_new_connections_at_once_and_answers_the_accepted_pings(tmp_path: Path) -> None:
    with receiver() as slow, procfile_server(tmp_path, TWO_WORKERS) as server:
        eventually(lambda: two_workers(server), "two workers started")
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            # Held by the receiver until it is told to answer, after the checks below.
            in_flight = [pool.submit(post_ping, server.base, slow.url + "/hang", 15.0) for _ in range(IN_FLIGHT)]
            eventually(lambda: len(slow.received) == IN_FLIGHT or None, "every ping reached the receiver")
            server.proc.send_signal(signal.SIGTERM)
            probes: list[tuple[str, object]] = []
            for _ in range(200):  # bounded in count, and in time by HANG each
                probes.append(post_ping(server.base, slow.url + "/ok", HANG))
                if [kind for kind, _ in probes[-3:]] == ["refused"] * 3:
                    break
            slow.stop.set()  # the receiver answers the held pings now
            answers = [future.result(timeout=15) for future in in_flight]
        assert server.proc.wait(timeout=15) == 0, server.output()
    # Nothing hung: a probe was answered by a worker still draining, reset from the backlog as the last
    # listener closed, or refused; and the listener did close while the held pings were still in flight.
    kinds = [kind for kind, _ in probes]
    assert set(kinds) <= {"ok", "reset", "refused"}, probes
    assert kinds[-3:] == ["refused"] * 3, probes
    assert answers == [("ok", answers[0][1])] * IN_FLIGHT and "was successful" in str(answers[0][1]), answers
    # Each ping answered as delivered reached the receiver once, and no other did.
    assert len([r for r in slow.received if r.path == "/hang"]) == IN_FLIGHT
    assert len([r for r in slow.received if r.path == "/ok"]) == kinds.count("ok")
    assert "Closed the listening socket" in server.output()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_killed_worker_is_a_warning_with_its_signal(tmp_path: Path, log_format: str) -> None:
    # JSON without UVICORN_LOG_CONFIG: the supervising process takes the app's log format.
    with receiver() as sink, procfile_server(tmp_path, {**TWO_WORKERS, "PINGFORWARD_LOG_FORMAT": log_format}) as server:
        victim, survivor = eventually(lambda: two_workers(server), "two workers started")
        os.kill(victim, signal.SIGKILL)
        replacement = eventually(
            lambda: pids[2] if len(pids := worker_pids(server)) > 2 else None,
            "a worker started in the dead one's place",
        )
        assert replacement not in (victim, survivor)
        lines = [line for line in server.output().splitlines() if f"[{victim}]" in line]
        if log_format == "json":
            entries = [json.loads(line) for line in lines]
            (death_line,) = [entry for entry in entries if "SIGKILL" in entry["message"]]
            assert (death_line["level"], death_line["logger"]) == ("WARNING", "uvicorn.error"), entries
            message = death_line["message"]
        else:
            (message,) = [line for line in lines if "SIGKILL" in line]
            assert message.startswith("WARNING:"), lines
        assert f"Worker process [{victim}] was killed by SIGKILL;" in message
        assert f"Started worker process [{replacement}] in its place" in message
        assert post_ping(server.base, sink.url + "/ok", HANG)[0] == "ok"


@pytest.mark.parametrize(
    ("exitcode", "hung", "words"),
    [
        (-signal.SIGKILL, False, "was killed by SIGKILL"),
        (-signal.SIGSEGV, False, "was killed by SIGSEGV"),
        (-99, False, "was killed by signal 99"),
        (1, False, "exited with code 1"),
        (0, False, "exited with code 0"),
        (-signal.SIGKILL, True, "did not answer the health check within 5 s and was killed"),
    ],
)
def test_death_names_its_cause(exitcode: int, hung: bool, words: str) -> None:
    assert death(41, exitcode, hung=hung, healthcheck=5.0) == (
        f"Worker process [41] {words}; requests in flight on it were cut off without an answer"
    )
