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

# These tests are about processes and signals: many identical pings from one client to one slow receiver,
# which the junk checks (repeats, floods, source verification) would rightly stop; they have their own tests.
TWO_WORKERS = {**LOCAL_ENV, "WEB_CONCURRENCY": "2", "PINGFORWARD_SPAM_CHECKS": "off"}
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


@pytest.mark.slow
@pytest.mark.parametrize("to", ["supervisor", "every-process"])
def test_sigterm_refuses_new_connections_at_once_and_answers_the_accepted_pings(tmp_path: Path, to: str) -> None:
    # `docker stop` signals the container's first process; Heroku signals every process of the dyno.
    with receiver() as slow, procfile_server(tmp_path, TWO_WORKERS) as server:
        workers = eventually(lambda: two_workers(server), "two workers started")
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            # Held by the receiver until it is told to answer, after the checks below.
            in_flight = [pool.submit(post_ping, server.base, slow.url + "/hang", 15.0) for _ in range(IN_FLIGHT)]
            eventually(lambda: len(slow.received) == IN_FLIGHT or None, "every ping reached the receiver")
            server.proc.send_signal(signal.SIGTERM)
            for pid in workers if to == "every-process" else []:
                os.kill(pid, signal.SIGTERM)
            probes: list[tuple[str, object]] = []
            deadline = time.monotonic() + 10
            for _ in range(200):  # bounded in count and in time
                probes.append(post_ping(server.base, slow.url + "/ok", HANG))
                kinds = [kind for kind, _ in probes]
                if kinds[-3:] == ["refused"] * 3 or "hang" in kinds or time.monotonic() > deadline:
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


@pytest.mark.slow
def test_a_killed_worker_is_a_warning_with_its_signal_and_its_requests(tmp_path: Path) -> None:
    held = 12
    with receiver() as slow, procfile_server(tmp_path, TWO_WORKERS) as server:
        victim, survivor = eventually(lambda: two_workers(server), "two workers started")
        with ThreadPoolExecutor(held) as pool:
            pings = [pool.submit(post_ping, server.base, slow.url + "/hang", 15.0) for _ in range(held)]
            eventually(lambda: len(slow.received) == held or None, "every ping reached the receiver")
            time.sleep(2)  # the supervisor asks every worker every 0.5 s: its count is now the current one
            os.kill(victim, signal.SIGKILL)
            replacement = eventually(
                lambda: pids[2] if len(pids := worker_pids(server)) > 2 else None, "a worker in the dead one's place"
            )
            slow.stop.set()  # the survivor's pings are answered now
            outcomes = [ping.result(timeout=15) for ping in pings]
        assert replacement not in (victim, survivor)
        assert post_ping(server.base, slow.url + "/ok", HANG)[0] == "ok"
    kinds = [kind for kind, _ in outcomes]
    cut = kinds.count("reset")  # the victim's, however the kernel spread the connections over the two workers
    assert kinds.count("ok") == held - cut, outcomes
    (line,) = [line for line in server.output().splitlines() if f"Worker process [{victim}]" in line]
    words = death(victim, -signal.SIGKILL, hung=False, healthcheck=5, in_flight=cut)
    assert line == f"WARNING:  {words}. Started worker process [{replacement}] in its place."
    assert "was killed by SIGKILL" in words


def test_the_supervisor_writes_json_with_the_app(tmp_path: Path) -> None:
    # It never loads the app, and no UVICORN_LOG_CONFIG is set: it reads PINGFORWARD_LOG_FORMAT itself.
    with procfile_server(tmp_path, {**TWO_WORKERS, "PINGFORWARD_LOG_FORMAT": "json"}) as server:
        eventually(lambda: two_workers(server), "two workers started")
    entries = [json.loads(line) for line in server.output().splitlines()]  # fails on a line that is not JSON
    messages = [entry["message"] for entry in entries if entry["logger"] == "uvicorn.error"]
    assert any(message.startswith("Started parent process") for message in messages), messages
    assert any(message.startswith("Closed the listening socket") for message in messages), messages


@pytest.mark.parametrize(
    ("exitcode", "hung", "in_flight", "words"),
    [
        (-signal.SIGKILL, False, 48, "was killed by SIGKILL; 48 requests in flight at its last health check end"),
        (-signal.SIGSEGV, False, 1, "was killed by SIGSEGV; 1 request in flight at its last health check ends"),
        (-99, False, 0, "was killed by signal 99; no requests were in flight at its last health check"),
        (1, False, 2, "exited with code 1; 2 requests in flight at its last health check end"),
        (0, False, None, "exited with code 0"),
        (-signal.SIGKILL, True, 3, "did not answer the health check within 5 s and was killed; 3 requests in"),
    ],
)
def test_death_names_its_cause_and_its_requests(exitcode: int, hung: bool, in_flight: int | None, words: str) -> None:
    said = death(41, exitcode, hung=hung, healthcheck=5.0, in_flight=in_flight)
    assert said.startswith(f"Worker process [41] {words}")
    assert said.endswith(" without an answer") == bool(in_flight)
