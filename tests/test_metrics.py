"""Metrics: counted per worker, summed over the workers, scraped with Prometheus's own text parser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse

from pingforward.app import create_app
from pingforward.config import Settings
from pingforward.endpoint import PingbackEndpoint
from pingforward.errors import ConfigError, Failure
from pingforward.forward import Outcome
from pingforward.metrics import MAX_VALUES, Bounded, Buckets, Counts, _check_private, ping_labels
from pingforward.pingback import FaultCode
from tests.servers import LOCAL_ENV, Process, free_port, ping, procfile_command, receiver, running, serve_site

TOKEN = "metrics-token-0123456789"
METRICS_ENV = {**LOCAL_ENV, "PINGFORWARD_METRICS_TOKEN": TOKEN}
BEARER = {"Authorization": f"Bearer {TOKEN}"}

LABELS = [
    pytest.param(Outcome("ok"), ("delivered", "none", "none", "none"), id="delivered"),
    pytest.param(
        Outcome("upstream: connection to a port 443 refused", FaultCode.UPSTREAM_ERROR, failure=Failure.REFUSED),
        ("fault", "50", "none", "refused"),
        id="refused-connection",
    ),
    pytest.param(Outcome("copy", FaultCode.ACCESS_DENIED, refusal="copy"), ("fault", "49", "copy", "none"), id="junk"),
    # A refusal named by a check this module does not know yet: counted, under a bounded label.
    pytest.param(Outcome("x", FaultCode.GENERIC, refusal="brand_new"), ("fault", "0", "other", "none"), id="unknown"),
]


@pytest.mark.parametrize(("outcome", "labels"), LABELS)
def test_ping_labels_are_bounded(outcome: Outcome, labels: tuple[str, str, str, str]) -> None:
    counts = Counts()
    counts.ping(outcome)
    counts.ping(outcome)
    ((key, count),) = counts.pings.items()
    assert (ping_labels(key), count) == (labels, 2)


def test_buckets_are_upper_bounds_inclusive() -> None:
    buckets = Buckets((0.1, 1.0, float("inf")))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        buckets.observe(seconds)
    assert buckets.counts == [2, 2, 1] and buckets.total == pytest.approx(8.65)


def test_counts_of_other_modules_get_bounded_labels() -> None:
    counts = {"answered": 3, "nxdomain": 1}
    bounded = Bounded(counts)
    assert bounded.read() == {"answered": 3, "nxdomain": 1}
    counts.update({"Not A Label\n": 2, **{f"name{n}": 1 for n in range(40)}})
    read = bounded.read()
    assert len(read) == MAX_VALUES + 1 and read["other"] == 2 + 40 - (MAX_VALUES - 2)
    assert read["answered"] == 3 and sum(read.values()) == sum(counts.values())


def test_metrics_token_setting() -> None:
    assert Settings.from_environ({}).metrics_token is None
    assert Settings.from_environ({"PINGFORWARD_METRICS_TOKEN": f" {TOKEN} "}).metrics_token == TOKEN
    assert TOKEN not in repr(Settings(metrics_token=TOKEN))
    for bad in ("short", "has a space in the token value"):
        with pytest.raises(ConfigError, match="PINGFORWARD_METRICS_TOKEN") as caught:
            Settings.from_environ({"PINGFORWARD_METRICS_TOKEN": bad})
        assert bad not in str(caught.value)


@contextmanager
def procfile(env: dict[str, str], workers: int = 1) -> Iterator[Process]:
    """The Procfile's command with `env` (and WEB_CONCURRENCY for several workers), as deployed."""
    port = free_port()
    concurrency = {"WEB_CONCURRENCY": str(workers)} if workers > 1 else {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(procfile_command(port), port, {**env, **concurrency}, Path(tmp) / "proxy.log") as process,
    ):
        yield process


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, read by Prometheus's own parser: (name, sorted labels) -> value."""
    response = httpx.get(base + "/metrics", headers=BEARER, trust_env=False)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def pings(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, ...], float]:
    return {
        tuple(value for _, value in labels): count
        for (name, labels), count in samples.items()
        if name == "pingforward_pings_total"
    }


TARGET = "https://site.example/notes/{}"


@contextmanager
def source_page(links: int = 200) -> Iterator[str]:
    """A real source post that links to TARGET.format(n) for n below `links`, as the junk checks want it."""
    with serve_site() as site:
        anchors = "".join(f'<a href="{TARGET.format(n)}">note {n}</a> ' for n in range(links))
        html = f"<!doctype html><title>A post</title><article><p>About these: {anchors}</p></article>"
        site.routes[("GET", "/post")] = (200, [("Content-Type", "text/html; charset=utf-8")], html.encode())
        yield site.url("/post")


def post(base: str, query: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{base}/{query}", content=body, headers={"Content-Type": "text/xml"}, trust_env=False)


def test_metrics_count_real_pings_through_the_procfile_command() -> None:
    call = xmlrpc.client.dumps(("https://blog.example/post", "https://site.example/notes/42"), "pingback.ping").encode()
    closed = free_port()  # nothing listens there: the connection is refused
    with source_page() as source, receiver() as wm, procfile(METRICS_ENV) as server:
        assert ping(server.base, wm.url + "/ok", source, TARGET.format(0)) == "Webmention accepted"
        assert ping(server.base, wm.url + "/ok", source, TARGET.format(1)) == "Webmention accepted"
        # The same ping again: the proxy refuses it itself, as a repeat.
        assert ping(server.base, wm.url + "/ok", source, TARGET.format(1))[0] == FaultCode.ALREADY_REGISTERED
        assert ping(server.base, wm.url + "/error/no_link_found", source, TARGET.format(2))[0] == FaultCode.NO_LINK
        assert ping(server.base, f"http://127.0.0.1:{closed}/wm", source, TARGET.format(3))[0] == 50
        post(server.base, "", call)  # no forward parameter
        post(server.base, "?forward=%2F%2Fsite.example%2Fwm", call)  # no scheme
        post(server.base, "?forward=https%3A%2F%2Fsite.example%2F", b"<methodCall><oops")  # malformed
        post(server.base, "?forward=https%3A%2F%2Fsite.example%2F", b"x" * 70_000)  # 413
        samples = scrape(server.base)
        time.sleep(0.2)  # lines are written when the event loop comes round
        log = server.output().splitlines()
    # The log: the refused connection's kind on its ping line, and each kind of refused request at once,
    # with what was wrong and who sent it.
    (refused_connection,) = [line for line in log if f"port {closed} refused" in line]
    assert refused_connection.endswith(" failure=refused") and " outcome=50 " in refused_connection
    at_once = {line.split(" kind=")[1].split(" ")[0]: line for line in log if " rejected kind=" in line}
    assert set(at_once) == {"unroutable", "invalid_forward", "malformed", "too_large"}
    assert all(" client=127.0.0.1 " in line for line in at_once.values())
    assert (
        "reason=\"Invalid 'forward' parameter: no scheme: write https://host/..., not //host/...\""
        in (at_once["invalid_forward"])
    )
    assert 'example="forward=%2F%2Fsite.example%2Fwm"' in at_once["invalid_forward"]
    assert 'reason="parse error. not well formed"' in at_once["malformed"]
    assert "(PINGFORWARD_MAX_BODY)" in at_once["too_large"]
    assert pings(samples) == {
        ("refused", "50", "fault", "none"): 1,  # labels in alphabetical order: failure, fault, outcome, refusal
        ("none", "17", "fault", "none"): 1,
        ("none", "none", "delivered", "none"): 2,
        ("none", "48", "fault", "repeat"): 1,
    }
    refused = {
        (dict(labels)["layer"], dict(labels)["reason"]): n
        for (name, labels), n in samples.items()
        if name == "pingforward_requests_rejected_total"
    }
    assert refused == {
        ("app", "unroutable"): 1,
        ("app", "invalid_forward"): 1,
        ("app", "malformed"): 1,
        ("app", "too_large"): 1,
    }
    # Three forwards answered by the receiver and one refused connection: each timed once.
    assert samples[("pingforward_forward_seconds_count", ())] == 4
    assert samples[("pingforward_forward_seconds_bucket", (("le", "+Inf"),))] == 4
    assert 0 < samples[("pingforward_forward_seconds_sum", ())] < 4 * 10
    # Every ping that passed the windows had its source verified (once fetched, then from the cache).
    assert samples[("pingforward_verification_seconds_count", ())] == 4


def test_metrics_need_the_token_and_are_off_by_default() -> None:
    with procfile(LOCAL_ENV) as plain, procfile(METRICS_ENV) as metered:
        # Off: as if there were no such route, whatever the request carries.
        absent = httpx.get(plain.base + "/no-such-page", trust_env=False)
        for headers in ({}, BEARER):
            off = httpx.get(plain.base + "/metrics", headers=headers, trust_env=False)
            assert (off.status_code, off.content) == (404, absent.content)
        # On: nothing without the token.
        for authorization in (None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
            headers = {} if authorization is None else {"Authorization": authorization}
            refused = httpx.get(metered.base + "/metrics", headers=headers, trust_env=False)
            assert refused.status_code == 401, authorization
            assert "pingforward" not in refused.text and refused.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(metered.base + "/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def worker_counts(directory: Path) -> dict[int, float]:
    """Pings counted by each worker, from the files they share: pid -> count."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        counts[int(path.stem.split("_")[1])] = sum(
            sample.value for family in families for sample in family.samples if sample.name == "pingforward_pings_total"
        )
    return counts


@pytest.mark.slow
def test_metrics_sum_the_workers_of_one_server() -> None:
    with source_page() as source, receiver() as wm, procfile(METRICS_ENV, workers=2) as server:
        (directory,) = Path(tempfile.gettempdir()).glob(f"pingforward-metrics-{os.getuid()}-{server.proc.pid}-*")
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # Each ping on a connection of its own, several at once, until both workers served some. Bounded,
            # and under the default flood limits (60 a minute from one client, per worker).
            for _ in range(3):
                targets = [TARGET.format(n) for n in range(sent, sent + 20)]
                answers = list(pool.map(lambda target: ping(server.base, wm.url + "/ok", source, target), targets))
                assert answers == ["Webmention accepted"] * 20
                sent += 20
                time.sleep(1.5)  # each worker writes its counts once a second
                if len(worker_counts(directory)) == 2 and all(worker_counts(directory).values()):
                    break
        per_worker = worker_counts(directory)
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        assert sum(per_worker.values()) == sent
        # Whichever worker answers the scrape, it counts every ping of both.
        for _ in range(6):
            assert pings(scrape(server.base)) == {("none", "none", "delivered", "none"): sent}
    # The next server removes the directory of this one, which has ended.
    with procfile(METRICS_ENV) as later:
        assert pings(scrape(later.base)) == {}
    assert not directory.exists()


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_dead_workers_counts_stay_and_its_gauges_go() -> None:
    with source_page() as source, receiver() as wm, procfile(METRICS_ENV, workers=2) as server:
        (directory,) = Path(tempfile.gettempdir()).glob(f"pingforward-metrics-{os.getuid()}-{server.proc.pid}-*")
        targets = [TARGET.format(n) for n in range(40)]
        with ThreadPoolExecutor(8) as pool:
            answers = set(pool.map(lambda target: ping(server.base, wm.url + "/ok", source, target), targets))
            assert answers == {"Webmention accepted"}
        time.sleep(1.5)  # each worker writes its counts once a second
        per_worker = worker_counts(directory)
        victim = max(per_worker, key=lambda pid: per_worker[pid])  # one that served pings
        assert victim in children(server.proc.pid), per_worker
        os.kill(victim, signal.SIGKILL)
        for _ in range(150):  # uvicorn's supervisor starts a new worker (bounded: 15 s)
            alive = children(server.proc.pid) - {victim}
            if len([pid for pid in alive if (directory / f"gauge_livesum_{pid}.db").exists()]) == 2:
                break
            time.sleep(0.1)
        samples = scrape(server.base)
        assert samples[("pingforward_workers", ())] == 2  # not 3: the dead worker's gauge is gone
        assert not (directory / f"gauge_livesum_{victim}.db").exists()
        assert pings(samples) == {("none", "none", "delivered", "none"): 40}  # its pings are still counted


def test_a_directory_others_could_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    _check_private(shared)  # ours, and only ours: fine
    shared.chmod(0o777)
    with pytest.raises(OSError, match="not a private directory"):
        _check_private(shared)


def test_the_operators_directory_is_used_as_given(tmp_path: Path) -> None:
    # PROMETHEUS_MULTIPROC_DIR, prometheus-client's own variable: the workers write there, nowhere else.
    environ = {**METRICS_ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with source_page() as source, receiver() as wm, procfile(environ) as server:
        assert ping(server.base, wm.url + "/ok", source, TARGET.format(0)) == "Webmention accepted"
        assert pings(scrape(server.base)) == {("none", "none", "delivered", "none"): 1}
        assert list(worker_counts(tmp_path).values()) == [1]
        assert not list(Path(tempfile.gettempdir()).glob(f"pingforward-metrics-{os.getuid()}-{server.proc.pid}-*"))


def test_without_a_directory_to_count_in_pings_go_on_and_metrics_say_so(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    environ = {**METRICS_ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a-file" / "metrics")}
    with source_page() as source, receiver() as wm, procfile(environ) as server:
        assert ping(server.base, wm.url + "/ok", source, TARGET.format(0)) == "Webmention accepted"
        response = httpx.get(server.base + "/metrics", headers=BEARER, trust_env=False)
        assert (response.status_code, response.text) == (503, "metrics are off: see the log")
        assert "ERROR pingforward.app: metrics are off: " in server.output()


def test_with_metrics_off_nothing_of_them_is_loaded() -> None:
    # A fresh interpreter: the app built on the defaults loads neither prometheus-client nor the metrics module.
    code = (
        "import sys; from pingforward.app import create_app; from pingforward.config import Settings; "
        "app = create_app(Settings()); print(sorted(m for m in sys.modules if 'prometheus' in m or 'metrics' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert create_app(Settings()).routes and PingbackEndpoint(Settings(), PlainTextResponse("")).counts is None


def test_requests_the_server_refuses_before_the_app_are_counted() -> None:
    with procfile(METRICS_ENV) as server:
        host, port = server.base.removeprefix("http://").split(":")
        for head in (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(head)
                assert raw.recv(100).startswith(b"HTTP/1.1 4")
        samples = scrape(server.base)
    refused = {
        dict(labels)["reason"]: n
        for (name, labels), n in samples.items()
        if name == "pingforward_requests_rejected_total" and dict(labels)["layer"] == "server"
    }
    assert refused == {"414": 1, "400-malformed": 1}


def test_lookups_and_slots_of_the_forwards() -> None:
    with source_page() as source, receiver() as wm, procfile(METRICS_ENV) as server:
        named = wm.url.replace("127.0.0.1", "localhost")  # a name: looked up, then cached
        assert ping(server.base, named + "/ok", source, TARGET.format(0)) == "Webmention accepted"
        assert ping(server.base, named + "/ok", source, TARGET.format(1)) == "Webmention accepted"
        # A request line over the server's bound: refused before the app (414).
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(ping, server.base, wm.url + "/hang", source, TARGET.format(2 + n)) for n in range(3)]
            for _ in range(100):  # bounded: 10 s
                if len([r for r in wm.received if r.path == "/hang"]) == 3:
                    break
                time.sleep(0.1)
            during = scrape(server.base)
            wm.stop.set()  # the receiver answers the held pings now
            assert all("was successful" in str(future.result(timeout=15)) for future in held)
        after = scrape(server.base)
    assert during[("pingforward_outbound_slots", (("state", "in_use"),))] == 3
    assert during[("pingforward_outbound_slots", (("state", "waiting"),))] == 0
    assert after[("pingforward_outbound_slots", (("state", "in_use"),))] == 0
    lookups = {
        dict(labels)["result"]: n for (name, labels), n in after.items() if name == "pingforward_dns_lookups_total"
    }
    # localhost looked up once, then taken from the cache (other names the checks looked up count apart)
    assert (lookups["answered"], lookups["cached"]) == (1, 1)


@pytest.mark.anyio
async def test_in_process_the_exporter_renders_what_was_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prometheus-client reads its directory from the environment only; restored after the test, so that no
    # server a later test starts inherits it.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    async with (
        LifespanManager(create_app(Settings(metrics_token=TOKEN))) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://proxy.test") as client,
    ):
        await client.post("/", content=b"<methodCall/>")  # no forward parameter
        await client.post("/?forward=ftp%3A%2F%2Fx", content=b"<methodCall/>")
        assert (await client.get("/metrics")).status_code == 401
        response = await client.get("/metrics", headers=BEARER)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    # The app's own (the server's counter is the process's, which other tests in this process may have counted in).
    rejected = {
        dict(labels)["reason"]: n
        for (name, labels), n in samples.items()
        if name == "pingforward_requests_rejected_total" and ("layer", "app") in labels
    }
    assert rejected == {"unroutable": 1, "invalid_forward": 1}
    assert samples[("pingforward_workers", ())] == 1
    assert samples[("pingforward_outbound_slots", (("state", "in_use"),))] == 0
