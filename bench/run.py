"""The pingforward benchmark: `make bench`, or `.venv/bin/python bench/run.py --help`.

Starts, on 127.0.0.1 only, a fast Webmention sink, a slow one (1 s), a second fast one on the proxy's
core (for the direct latency), the ceiling app and the proxy (both with the Procfile's uvicorn
command), drives them with wrk and bench/burst.py, and prints one table of medians with the ratios
that the project sets as goals. Linux only (/proc, taskset).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
PROXY_APP = "pingforward.app:create_app"
CEILING_APP = "ceiling:create_app"  # bench/ceiling.py, found through --app-dir
TICKS = os.sysconf("SC_CLK_TCK")

# What a WordPress blog sends (WordPress's IXR client: always <string>-typed).
PING_XML = b"""<?xml version="1.0"?>
<methodCall>
<methodName>pingback.ping</methodName>
<params>

<param><value><string>https://source.example/2026/11/21/a-post-that-links/</string></value></param>
<param><value><string>https://target.example/2026/11/20/the-post-it-links-to/</string></value></param>
</params></methodCall>
"""
WEBMENTION_FORM = (
    b"source=https%3A%2F%2Fsource.example%2F2026%2F11%2F21%2Fa-post-that-links%2F"
    b"&target=https%3A%2F%2Ftarget.example%2F2026%2F11%2F20%2Fthe-post-it-links-to%2F"
)
MALFORMED_XML = b'<?xml version="1.0"?>\n<methodCall><methodName>pingback.ping</methodName><params><param>'

# Issue 3's goals.
GOAL_THROUGHPUT = 0.25  # x ceiling
GOAL_CPU_US = 220.0
GOAL_ADDED_P50_MS = 0.35
GOAL_BURST_LAST_S = 1.5
GOAL_BURST_RSS_MIB = 90.0
GOAL_JUNK = 0.7  # x ceiling
GOAL_COLD_MS = 300.0
# Issue 11's goals.
GOAL_HTTPS = 0.8  # x the same proxy's throughput to a plain-HTTP sink
GOAL_DNS_DELIVERED = 0.99
GOAL_DNS_P99_ADDED_S = 0.5
GOAL_HANGING_P99 = 1.25  # x the same traffic's p99 without the hanging receiver, or +2 ms, whichever is more
HANGING_P99_SLACK_MS = 2.0
GOAL_TWO_HUNG_P99_S = 0.5  # honest pings while two receivers hang with 1,000 pings each
GOAL_BLIP_FAULTS = 5  # pings a 0.3 s DNS failure may cost a name already known ("a handful")
GOAL_BUSY_CONNECTIONS = 10  # new connections for 200 pings, 4 at a time, while 110 other origins are idle
GOAL_MANY_RSS_MIB = 150.0  # after 500 names of 4,090 addresses each
# Issue 17's goals: honest pings in a spam mix.
GOAL_SPAM_DELIVERED = 0.99
GOAL_SPAM_P99_S = 2.5


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    proxy_core: int | None
    load_core: int | None
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    load_averages: list[str] = field(default_factory=list)  # a busy machine makes every number worse

    def pinned(self, command: Sequence[str], core: int | None) -> list[str]:
        return ["taskset", "-c", str(core), *command] if core is not None else list(command)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def procfile_command(port: int, app: str, extra: Sequence[str] = ()) -> list[str]:
    """The Procfile's `web:` command for `app` on 127.0.0.1:`port` (it binds 0.0.0.0 in production)."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    command = shlex.split(line.removeprefix("web:").replace("$PORT", str(port)))
    for i, arg in enumerate(command):
        if arg == "--host":
            command[i + 1] = "127.0.0.1"
        elif arg.startswith("--host="):
            command[i] = "--host=127.0.0.1"
        elif arg == PROXY_APP and app != PROXY_APP:
            command[i : i + 1] = ["--app-dir", str(BENCH), app]
    if "127.0.0.1" not in " ".join(command):
        sys.exit("bench: the Procfile's web command has no --host to point at 127.0.0.1")
    return [*command, *extra]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (proc(5) fields 14, 15)


def memory_mib(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MiB."""
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match[1]) / 1024 if match else float("nan")


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"bench: {process.args!r} exited with {process.returncode}; see {RESULTS}/*.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"bench: nothing listens on port {port} after {seconds} s")


@contextmanager
def started(
    bench: Bench, name: str, command: list[str], core: int | None, port: int, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Run `command` (pinned to `core`) until the block ends; yields its pid once `port` answers."""
    log = open(RESULTS / f"{name}.log", "wb")  # noqa: SIM115 -- closed below
    process = subprocess.Popen(bench.pinned(command, core), cwd=ROOT, env=env or bench.env, stdout=log, stderr=log)
    try:
        wait_for_port(port, process)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wrk(
    bench: Bench, port: int, expect: str, requests: list[tuple[str, Path]], connections: int, seconds: int
) -> dict[str, float]:
    pairs = [str(item) for request in requests for item in request]
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "-s",
        str(BENCH / "ping.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        expect,
        *pairs,
    ]
    out = subprocess.run(bench.pinned(command, bench.load_core), capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        sys.exit(f"bench: {shlex.join(command)} failed: {out.stderr.strip()}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["rate"] = result["good"] / (result["duration_us"] / 1e6)
    if result["bad"] or result["socket_errors"]:
        bench.notes.append(
            f"wrk {expect} on :{port} c={connections}: "
            f"{result['bad']} wrong answers, {result['socket_errors']} socket errors"
        )
    return result


def wrk_cpu(
    bench: Bench, pid: int, port: int, expect: str, requests: list[tuple[str, Path]], connections: int, seconds: int
) -> dict[str, float]:
    """wrk, plus the CPU time `pid` spent per good answer, in µs."""
    before = cpu_seconds(pid)
    result = wrk(bench, port, expect, requests, connections, seconds)
    result["cpu_us"] = (cpu_seconds(pid) - before) / max(result["good"], 1) * 1e6
    return result


def ping_once(port: int, path: str, body: bytes, timeout: float = 5.0) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "text/xml"})
        response = connection.getresponse()
        return response.status == 200 and b"<fault>" not in response.read()
    finally:
        connection.close()


def answers(port: int, path: str) -> bool:
    """Whether the proxy forwards one more ping within 5 s (after the burst: nothing stuck)."""
    try:
        return ping_once(port, path, PING_XML)
    except OSError:
        return False


def cold_start(bench: Bench, path: str) -> float:
    """Milliseconds from starting the proxy to its first answered ping."""
    port = free_port()
    log = open(RESULTS / "proxy-cold.log", "wb")  # noqa: SIM115
    started_at = time.perf_counter()
    process = subprocess.Popen(
        bench.pinned(procfile_command(port, bench.args.app, bench.args.uvicorn), bench.proxy_core),
        cwd=ROOT,
        env=bench.env,
        stdout=log,
        stderr=log,
    )
    try:
        while time.perf_counter() - started_at < 20:
            try:
                if ping_once(port, path, PING_XML):
                    return (time.perf_counter() - started_at) * 1000
            except OSError:
                time.sleep(0.002)
            if process.poll() is not None:
                break
        sys.exit(f"bench: the proxy never answered a ping; see {RESULTS}/proxy-cold.log")
    finally:
        process.terminate()
        process.wait(timeout=25)
        log.close()


def burst(bench: Bench, port: int, path: str) -> dict[str, float]:
    command = [
        PYTHON,
        str(BENCH / "burst.py"),
        "--port",
        str(port),
        "--path",
        path,
        "--body",
        str(bench.tmp / "ping.xml"),
        "--count",
        str(bench.args.burst),
        "--deadline",
        "15",
    ]
    out = subprocess.run(bench.pinned(command, bench.load_core), capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


SCENARIOS = ("load", "burst", "cold", "https", "edges", "inbound", "spam")


def run(bench: Bench) -> dict[str, object]:
    args = bench.args
    tmp = bench.tmp
    for name, body in (("ping.xml", PING_XML), ("webmention.form", WEBMENTION_FORM), ("malformed.xml", MALFORMED_XML)):
        (tmp / name).write_bytes(body)
    sink_port, slow_port = free_port(), free_port()
    path = "/?forward=" + quote(f"http://127.0.0.1:{sink_port}/webmention", safe="")
    slow_path = "/?forward=" + quote(f"http://127.0.0.1:{slow_port}/webmention", safe="")
    sink = [PYTHON, str(BENCH / "sink.py"), "--port"]
    results: dict[str, object] = {}
    with started(bench, "sink", [*sink, str(sink_port)], bench.load_core, sink_port):
        if "load" in args.only:
            direct_port = free_port()
            with started(bench, "sink-direct", [*sink, str(direct_port)], bench.proxy_core, direct_port):
                results.update(load(bench, sink_port, direct_port, path))
        if "burst" in args.only:
            with started(bench, "slow-sink", [*sink, str(slow_port), "--delay", "1"], bench.load_core, slow_port):
                results["bursts"] = [burst_round(bench, i, path, slow_path) for i in range(args.rounds)]
        if "cold" in args.only:
            progress("cold starts")
            results["cold_ms"] = [cold_start(bench, path) for _ in range(args.rounds)]
        if "https" in args.only:
            results["https"] = https(bench, path)
        if "spam" in args.only:
            results["spam"] = spam(bench, path)
    if "edges" in args.only:
        results["edges"] = edges(bench)
    if "inbound" in args.only:
        import inbound  # bench/inbound.py

        progress("inbound: heads of 13,000 fields, clients that never read; about 30 s")
        results["inbound"] = inbound.measure(bench)
    return results


def https(bench: Bench, path: str) -> list[dict[str, float]]:
    """Proxy throughput to an HTTPS sink (a test CA) against the same proxy's to the plain sink, in turns."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(bench.tmp / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(bench.tmp / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(bench.tmp / "cert.pem"))
    tls_port, proxy_port = free_port(), free_port()
    tls_path = "/?forward=" + quote(f"https://127.0.0.1:{tls_port}/webmention", safe="")
    sink = [PYTHON, str(BENCH / "sink.py"), "--port", str(tls_port), "--tls"]
    env = {**bench.env, "SSL_CERT_FILE": str(bench.tmp / "ca.pem")}  # httpx's TLS context reads it
    ping = bench.tmp / "ping.xml"
    rounds = []
    with (
        started(
            bench,
            "sink-tls",
            [*sink, str(bench.tmp / "cert.pem"), str(bench.tmp / "key.pem")],
            bench.load_core,
            tls_port,
        ),
        started(
            bench,
            "proxy-https",
            procfile_command(proxy_port, bench.args.app, bench.args.uvicorn),
            bench.proxy_core,
            proxy_port,
            env,
        ) as pid,
    ):
        if not ping_once(proxy_port, tls_path, PING_XML):
            sys.exit(f"bench: the proxy does not forward a ping to the https sink; see {RESULTS}/proxy-https.log")
        wrk(bench, proxy_port, "ok", [(tls_path, ping)], 64, 2)
        for i in range(bench.args.rounds):
            progress(f"https round {i + 1} of {bench.args.rounds}: plain, then https, kept-alive, c=64")
            plain = wrk_cpu(bench, pid, proxy_port, "ok", [(path, ping)], 64, bench.args.seconds)
            tls = wrk_cpu(bench, pid, proxy_port, "ok", [(tls_path, ping)], 64, bench.args.seconds)
            rounds.append(
                {
                    "plain_rate": plain["rate"],
                    "https_rate": tls["rate"],
                    "ratio": tls["rate"] / plain["rate"],
                    "plain_cpu_us": plain["cpu_us"],
                    "https_cpu_us": tls["cpu_us"],
                }
            )
    return rounds


def spam_driver(
    bench: Bench, mode: str, port: int, path: str, web: tuple[str, str, str], *extra: str
) -> dict[str, Any]:
    target, honest_port, junk = web
    command = [
        PYTHON, str(BENCH / "spam.py"), mode, "--port", str(port), "--path", path,
        "--target", target, "--honest-port", honest_port, "--junk", junk, "--closed-port", str(free_port()), *extra,
    ]  # fmt: skip
    out = subprocess.run(bench.pinned(command, bench.load_core), capture_output=True, text=True, timeout=120)
    if out.returncode:
        sys.exit(f"bench: bench/spam.py failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def spam(bench: Bench, path: str) -> dict[str, object]:
    """Verified honest pings against unverified forwarding (the spam checks off), both proxies started
    side by side and taking turns, then a spam mix against a third on every check's default."""
    ports = (free_port(), free_port(), free_port())
    web = (f"http://127.0.0.1:{ports[0]}/target", str(ports[1]), f"http://127.0.0.3:{ports[2]}")
    checked_port, unchecked_port, defaults_port = free_port(), free_port(), free_port()
    defaults_env = {k: v for k, v in bench.env.items() if k != "PINGFORWARD_SPAM_CHECKS"}  # every check's default
    # Reading sources against forwarding alone: the windows off, which would count the driver's pings
    # (at most 60 a minute per client and per source host) and are measured in the mix.
    windows_off = ("REPEAT_WINDOW", "FLOOD_CLIENT", "FLOOD_SOURCE", "FETCH_BOUND")
    checked_env = {**defaults_env, **{f"PINGFORWARD_{name}": "off" for name in windows_off}}
    command = [PYTHON, str(BENCH / "web.py"), "--ports", *map(str, ports)]
    seconds = str(bench.args.seconds)
    rounds: list[dict[str, float]] = []
    mixes: list[dict[str, Any]] = []  # on every check's default: the windows answer most junk 429
    read_all: list[dict[str, Any]] = []  # the windows off: every junk ping's source is read
    with (
        started(bench, "web", command, bench.load_core, ports[0]),
        started(
            bench,
            "proxy-checked",
            procfile_command(checked_port, bench.args.app, bench.args.uvicorn),
            bench.proxy_core,
            checked_port,
            checked_env,
        ) as cpid,
        started(
            bench,
            "proxy-unchecked",
            procfile_command(unchecked_port, bench.args.app, bench.args.uvicorn),
            bench.proxy_core,
            unchecked_port,
        ) as upid,
        started(
            bench,
            "proxy-defaults",
            procfile_command(defaults_port, bench.args.app, bench.args.uvicorn),
            bench.proxy_core,
            defaults_port,
            defaults_env,
        ),
    ):
        for port in (checked_port, unchecked_port):  # warm: connections, the target page in the cache
            spam_driver(bench, "closed", port, path, web, "--seconds", "1", "--offset", "900000000")
        for i in range(bench.args.rounds):
            progress(f"spam round {i + 1} of {bench.args.rounds}: unverified, verified (new, cached), c=1, mix")
            offset = str((i + 1) * 10_000_000)
            off = cpu_run(bench, upid, "closed", unchecked_port, path, web, "--seconds", seconds, "--offset", offset)
            new = cpu_run(bench, cpid, "closed", checked_port, path, web, "--seconds", seconds, "--offset", offset)
            cached = spam_driver(bench, "closed", checked_port, path, web, "--seconds", seconds, "--same")
            one = ("--connections", "1", "--seconds", seconds, "--offset", str(int(offset) + 5_000_000))
            off1 = spam_driver(bench, "closed", unchecked_port, path, web, *one)
            new1 = spam_driver(bench, "closed", checked_port, path, web, *one)
            rounds.append(
                {
                    "off_rate": off["rate"],
                    "new_rate": new["rate"],
                    "cached_rate": cached["rate"],
                    "new_ratio": new["rate"] / off["rate"],
                    "cached_ratio": cached["rate"] / off["rate"],
                    "off_cpu_us": off["cpu_us"],
                    "new_cpu_us": new["cpu_us"],
                    "off_p50_ms": off1["p50_ms"],
                    "new_p50_ms": new1["p50_ms"],
                    "added_p50_ms": new1["p50_ms"] - off1["p50_ms"],
                    "latency_ratio": new1["p50_ms"] / off1["p50_ms"],
                    "bad": off["bad"] + new["bad"] + cached["bad"] + off1["bad"] + new1["bad"],
                }
            )
            for port, into, offset_in_round in ((defaults_port, mixes, 8), (checked_port, read_all, 9)):
                mix = ("--rate", str(bench.args.spam_rate), "--seconds", str(max(bench.args.seconds, 5)))
                offset = str((i + 1) * 10_000_000 + offset_in_round * 1_000_000)
                into.append(spam_driver(bench, "mix", port, path, web, *mix, "--offset", offset))
    return {"rounds": rounds, "mixes": mixes, "read_all": read_all}


def cpu_run(bench: Bench, pid: int, *args: Any) -> dict[str, Any]:
    """spam_driver, plus the CPU time `pid` spent per delivered ping, in µs."""
    before = cpu_seconds(pid)
    result = spam_driver(bench, *args)
    result["cpu_us"] = (cpu_seconds(pid) - before) / max(result["good"], 1) * 1e6
    return result


def edges(bench: Bench) -> dict[str, object]:
    """bench/edges.py in a private network namespace: names, a silent DNS attacker, a hanging receiver."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        bench.notes.append("edges: skipped (needs root and unshare for a private network namespace)")
        return {}
    progress("edges: in a private network namespace (DNS attacker, hanging receiver); about a minute")
    command = [
        "unshare", "--net", "--mount", "--", PYTHON, str(BENCH / "edges.py"),
        "--seconds", str(max(bench.args.seconds, 4)),
        "--proxy-core", str(bench.proxy_core if bench.proxy_core is not None else -1),
        "--load-core", str(bench.load_core if bench.load_core is not None else -1),
        "--uvicorn", shlex.join(bench.args.uvicorn), "--app", bench.args.app,
    ]  # fmt: skip
    env = {k: v for k, v in bench.env.items() if not k.startswith("PINGFORWARD_")}  # the defaults, all of them
    env["PINGFORWARD_SPAM_CHECKS"] = "off"  # but for the junk checks, as above: the same ping, again and again
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    (RESULTS / "edges.log").write_text(out.stderr)
    if out.returncode:
        sys.exit(f"bench: bench/edges.py failed; see {RESULTS}/edges.log")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def load(bench: Bench, sink_port: int, direct_port: int, path: str) -> dict[str, object]:
    """Throughput, CPU, junk and latency rounds; ceiling and proxy take turns, so drift hits both.

    Latency: a ping through the proxy crosses between the cores twice each way (wrk to the proxy, the
    proxy to its sink on wrk's core, and back); posting directly is measured against a sink on the
    proxy's core, so that it crosses once each way, as a post to another machine would. The added
    latency is then what the proxy adds: the one hop more that any proxy puts in the way, and its
    own work. The same-core direct post (no hop at all) is printed for comparison.
    """
    args, tmp = bench.args, bench.tmp
    ping, form = tmp / "ping.xml", tmp / "webmention.form"
    junk = [("/", tmp / "malformed.xml"), ("/?forward=ftp%3A%2F%2Fx", ping), ("/", ping)]
    seconds = args.seconds
    ceiling_port, proxy_port = free_port(), free_port()
    with (
        started(
            bench,
            "ceiling",
            procfile_command(ceiling_port, CEILING_APP, bench.args.uvicorn),
            bench.proxy_core,
            ceiling_port,
        ) as cpid,
        started(
            bench, "proxy", procfile_command(proxy_port, args.app, bench.args.uvicorn), bench.proxy_core, proxy_port
        ) as ppid,
    ):
        if not ping_once(proxy_port, path, PING_XML):
            sys.exit(f"bench: the proxy does not forward a ping to the sink; see {RESULTS}/proxy.log")
        progress("warming up")
        wrk(bench, ceiling_port, "ok", [("/", ping)], 64, 2)
        wrk(bench, proxy_port, "ok", [(path, ping)], 64, 2)
        rounds: list[dict[str, float]] = []
        for i in range(args.rounds):
            progress(f"round {i + 1} of {args.rounds}: sink, ceiling, proxy, junk, latency")
            sink_rate = wrk(bench, sink_port, "accepted", [("/webmention", form)], 64, min(seconds, 3))
            ceiling = wrk_cpu(bench, cpid, ceiling_port, "ok", [("/", ping)], 64, seconds)
            proxy = wrk_cpu(bench, ppid, proxy_port, "ok", [(path, ping)], 64, seconds)
            junk_run = wrk_cpu(bench, ppid, proxy_port, "fault", junk, 64, seconds)
            direct = wrk(bench, direct_port, "accepted", [("/webmention", form)], 1, seconds)
            near = wrk(bench, sink_port, "accepted", [("/webmention", form)], 1, seconds)
            single = wrk(bench, proxy_port, "ok", [(path, ping)], 1, seconds)
            rounds.append(
                {
                    "sink_rate": sink_rate["rate"],
                    "ceiling_rate": ceiling["rate"],
                    "ceiling_cpu_us": ceiling["cpu_us"],
                    "proxy_rate": proxy["rate"],
                    "proxy_ratio": proxy["rate"] / ceiling["rate"],
                    "proxy_cpu_us": proxy["cpu_us"],
                    "proxy_cpu_ratio": proxy["cpu_us"] / ceiling["cpu_us"],
                    "proxy_p99_ms": proxy["p99_us"] / 1000,
                    "junk_rate": junk_run["rate"],
                    "junk_ratio": junk_run["rate"] / ceiling["rate"],
                    "junk_cpu_us": junk_run["cpu_us"],
                    "direct_p50_ms": direct["p50_us"] / 1000,
                    "near_p50_ms": near["p50_us"] / 1000,
                    "proxy_p50_ms": single["p50_us"] / 1000,
                    "added_p50_ms": (single["p50_us"] - direct["p50_us"]) / 1000,
                    "added_near_p50_ms": (single["p50_us"] - near["p50_us"]) / 1000,
                }
            )
        return {
            "rounds": rounds,
            "proxy_rss_mib": memory_mib(ppid, "VmRSS"),
            "proxy_hwm_mib": memory_mib(ppid, "VmHWM"),
            "ceiling_rss_mib": memory_mib(cpid, "VmRSS"),
        }


def burst_round(bench: Bench, i: int, path: str, slow_path: str) -> dict[str, float]:
    """One burst against a freshly started proxy that has forwarded one ping (a warm worker)."""
    progress(f"burst {i + 1} of {bench.args.rounds}: {bench.args.burst} pings at once, receiver takes 1 s")
    port = free_port()
    with started(
        bench, "proxy-burst", procfile_command(port, bench.args.app, bench.args.uvicorn), bench.proxy_core, port
    ) as pid:
        ping_once(port, path, PING_XML)
        result = burst(bench, port, slow_path)
        result["peak_rss_mib"] = memory_mib(pid, "VmHWM")
        result["healthy_after"] = float(answers(port, path))
        return result


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


Row = tuple[str, str, str, str]


def load_rows(rounds: list[dict[str, float]], results: dict[str, object]) -> list[Row]:
    def m(key: str) -> float:
        return median(rounds, key)

    throughput, junk = m("proxy_ratio"), m("junk_ratio")
    return [
        (
            "sink, wrk c=64 (must be far above the proxy)",
            f"{m('sink_rate'):,.0f}/s",
            f"{m('sink_rate') / m('proxy_rate'):.1f}x proxy",
            "",
        ),
        ("ceiling: bare Starlette, c=64", f"{m('ceiling_rate'):,.0f}/s", "1.00", ""),
        ("ceiling CPU per request", f"{m('ceiling_cpu_us'):,.0f} µs", "", ""),
        (
            "proxy throughput, c=64",
            f"{m('proxy_rate'):,.0f}/s",
            f"{throughput:.3f}x ceiling",
            f">= {GOAL_THROUGHPUT}x: {verdict(throughput >= GOAL_THROUGHPUT)}",
        ),
        (
            "proxy CPU per ping",
            f"{m('proxy_cpu_us'):,.0f} µs",
            f"{m('proxy_cpu_ratio'):.2f}x ceiling's",
            f"<= {GOAL_CPU_US:.0f} µs: {verdict(m('proxy_cpu_us') <= GOAL_CPU_US)}",
        ),
        ("proxy p99 at c=64", f"{m('proxy_p99_ms'):.2f} ms", "", ""),
        ("latency p50 at c=1, direct (sink on the proxy's core)", f"{m('direct_p50_ms'):.3f} ms", "", ""),
        ("latency p50 at c=1, through proxy (sink on wrk's)", f"{m('proxy_p50_ms'):.3f} ms", "", ""),
        (
            "added latency p50",
            f"+{m('added_p50_ms'):.3f} ms",
            "",
            f"<= {GOAL_ADDED_P50_MS} ms: {verdict(m('added_p50_ms') <= GOAL_ADDED_P50_MS)}",
        ),
        (
            "  vs direct to a sink on wrk's own core (no hop)",
            f"{m('near_p50_ms'):.3f} ms",
            f"added +{m('added_near_p50_ms'):.3f} ms",
            "",
        ),
        (
            "junk (malformed, refused, missing forward), c=64",
            f"{m('junk_rate'):,.0f}/s",
            f"{junk:.3f}x ceiling",
            f">= {GOAL_JUNK}x: {verdict(junk >= GOAL_JUNK)}",
        ),
        ("junk CPU per request", f"{m('junk_cpu_us'):,.0f} µs", "", ""),
        (
            "proxy RSS after the load (VmRSS / VmHWM)",
            f"{results['proxy_rss_mib']:.1f} / {results['proxy_hwm_mib']:.1f} MiB",
            f"ceiling {results['ceiling_rss_mib']:.1f} MiB",
            "",
        ),
    ]


def burst_rows(bursts: list[dict[str, float]], count: int) -> list[Row]:
    def b(key: str) -> float:
        return median(bursts, key)

    every = all(r["answered"] == count and not r["stuck"] and r["healthy_after"] for r in bursts)
    return [
        (
            f"burst: {count} pings, receiver takes 1 s",
            f"{b('answered'):.0f} answered",
            f"faults {b('fault'):.0f}, errors {b('error'):.0f}, stuck {b('stuck'):.0f}",
            f"all answered in every run: {verdict(every)}",
        ),
        (
            "burst: proxy forwards a ping right after",
            f"{sum(r['healthy_after'] for r in bursts):.0f} of {len(bursts)} runs",
            "",
            "",
        ),
        (
            "burst: last answer",
            f"{b('last_s'):.2f} s",
            "",
            f"<= {GOAL_BURST_LAST_S} s: {verdict(b('last_s') <= GOAL_BURST_LAST_S)}",
        ),
        (
            "burst: peak RSS of the proxy",
            f"{b('peak_rss_mib'):.1f} MiB",
            "",
            f"<= {GOAL_BURST_RSS_MIB:.0f} MiB: {verdict(b('peak_rss_mib') <= GOAL_BURST_RSS_MIB)}",
        ),
    ]


def https_rows(rounds: list[dict[str, float]]) -> list[Row]:
    ratio = median(rounds, "ratio")
    return [
        (
            "https sink (test CA), kept-alive, c=64",
            f"{median(rounds, 'https_rate'):,.0f}/s",
            f"{ratio:.3f}x plain http ({median(rounds, 'plain_rate'):,.0f}/s)",
            f">= {GOAL_HTTPS}x: {verdict(ratio >= GOAL_HTTPS)}",
        ),
        (
            "  proxy CPU per ping, https / plain",
            f"{median(rounds, 'https_cpu_us'):,.0f} / {median(rounds, 'plain_cpu_us'):,.0f} µs",
            "",
            "",
        ),
    ]


def edge_rows(edge: dict[str, Any]) -> list[Row]:
    quiet, attacked = edge["dns_quiet"], edge["dns_attacked"]
    added = attacked["p99_s"] - quiet["p99_s"]
    calm, hung = edge["steady_calm"], edge["steady_hung"]
    allowed = max(calm["p99_s"] * GOAL_HANGING_P99, calm["p99_s"] + HANGING_P99_SLACK_MS / 1000)
    return [
        (
            f"names: {quiet['sent']} honest pings, each a new name and connection",
            f"{quiet['delivered'] / quiet['sent']:.1%} delivered",
            f"p99 {quiet['p99_s'] * 1000:.1f} ms",
            "",
        ),
        (
            f"  ... with {edge['attack_rate']:.0f}/s pings naming silent hosts ({attacked['attacks']} sent)",
            f"{attacked['delivered'] / attacked['sent']:.1%} delivered",
            f"p99 {attacked['p99_s'] * 1000:.1f} ms ({added * 1000:+.1f} ms)",
            f">= {GOAL_DNS_DELIVERED:.0%} and <= +{GOAL_DNS_P99_ADDED_S} s: "
            + verdict(attacked["delivered"] / attacked["sent"] >= GOAL_DNS_DELIVERED and added <= GOAL_DNS_P99_ADDED_S),
        ),
        (
            f"steady pings to one receiver, {edge['steady_rate']:.0f}/s",
            f"p99 {calm['p99_s'] * 1000:.1f} ms",
            f"{calm['delivered']} of {calm['sent']} delivered",
            "",
        ),
        (
            f"  ... while another hangs with {edge['hanging']} pings held",
            f"p99 {hung['p99_s'] * 1000:.1f} ms",
            f"{hung['delivered']} of {hung['sent']} delivered; {edge['held']} held at the hanging one",
            f"<= {GOAL_HANGING_P99}x or +{HANGING_P99_SLACK_MS:.0f} ms: "
            + verdict(hung["p99_s"] <= allowed and hung["delivered"] == hung["sent"]),
        ),
        *round_two_rows(edge),
    ]


def round_two_rows(edge: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    two = edge.get("steady_two_hung")
    if two:
        rows.append(
            (
                f"  ... while two hang with {edge['hanging']} pings each",
                f"p99 {two['p99_s'] * 1000:.1f} ms",
                f"{two['delivered']} of {two['sent']} delivered; {edge['two_held']} held at the hanging ones",
                f"<= {GOAL_TWO_HUNG_P99_S} s, all delivered: "
                + verdict(two["p99_s"] <= GOAL_TWO_HUNG_P99_S and two["delivered"] == two["sent"]),
            )
        )
    blip = edge.get("dns_blip")
    if blip:
        for kind, words in (("servfail", "a 0.3 s SERVFAIL"), ("unreachable", "0.3 s without a DNS server")):
            phase = blip[kind]
            lost = phase["sent"] - phase["delivered"]
            rows.append(
                (
                    f"a known name's answer expires during {words}",
                    f"{lost} of {phase['sent']} pings lost",
                    f"p99 {phase['p99_s'] * 1000:.1f} ms",
                    f"<= {GOAL_BLIP_FAULTS} lost: {verdict(lost <= GOAL_BLIP_FAULTS)}",
                )
            )
    idle = edge.get("idle_origins")
    if idle:
        rows.append(
            (
                f"a busy receiver while {idle['origins']} other origins keep idle connections",
                f"{idle['connections']} new connections for {idle['pings']} pings (4 at a time)",
                f"{idle['delivered']} of {idle['pings']} delivered",
                f"<= {GOAL_BUSY_CONNECTIONS}: {verdict(idle['connections'] <= GOAL_BUSY_CONNECTIONS)}",
            )
        )
    many = edge.get("many_addresses")
    if many:
        rows.append(
            (
                f"{many['names']} names of {many['addresses']} addresses each (TCP), all refusing",
                f"RSS {many['rss_before_mib']:.0f} -> {many['rss_after_mib']:.0f} MiB",
                f"{many['seconds']:.1f} s for all; {many['delivered']} delivered",
                f"<= {GOAL_MANY_RSS_MIB:.0f} MiB: {verdict(many['rss_after_mib'] <= GOAL_MANY_RSS_MIB)}",
            )
        )
    return rows


def spam_rows(checks: dict[str, Any], rate: int) -> list[Row]:
    rounds = checks["rounds"]

    def m(key: str) -> float:
        return median(rounds, key)

    return [
        ("spam checks off: honest pings forwarded, c=64 (bench/spam.py)", f"{m('off_rate'):,.0f}/s", "1.00", ""),
        ("  verified, every source new (a GET each)", f"{m('new_rate'):,.0f}/s", f"{m('new_ratio'):.3f}x off", ""),
        ("  verified, the source in the page cache", f"{m('cached_rate'):,.0f}/s", f"{m('cached_ratio'):.3f}x off", ""),
        ("  CPU per ping, verified (new) / off", f"{m('new_cpu_us'):,.0f} / {m('off_cpu_us'):,.0f} µs", "", ""),
        (
            "  latency p50 at c=1, verified (new) / off",
            f"{m('new_p50_ms'):.2f} / {m('off_p50_ms'):.2f} ms",
            f"+{m('added_p50_ms'):.2f} ms, {m('latency_ratio'):.2f}x",
            f"wrong answers: {sum(r['bad'] for r in rounds)}",
        ),
        *mix_rows(checks["mixes"], f"spam mix: {rate}/s, 90% junk, every check's default"),
        *mix_rows(checks["read_all"], f"spam mix: {rate}/s, 90% junk, windows off (every source read)"),
    ]


def mix_rows(mixes: list[dict[str, Any]], title: str) -> list[Row]:
    delivered = [mix["honest_delivered"] / max(mix["honest_sent"], 1) for mix in mixes]
    p99 = [mix["honest_p99_ms"] / 1000 for mix in mixes]
    worst_delivered, worst_p99 = min(delivered), max(p99)
    junk = sum(mix["junk_delivered"] for mix in mixes)
    kinds: dict[str, dict[str, int]] = {}
    for mix in mixes:
        for kind, counts in mix["kinds"].items():
            for answer, count in counts.items():
                kinds.setdefault(kind, {})[answer] = kinds.get(kind, {}).get(answer, 0) + count
    answered = "; ".join(
        f"{kind} " + ", ".join(f"{answer} x{count}" for answer, count in sorted(counts.items()))
        for kind, counts in sorted(kinds.items())
    )
    return [
        (
            f"{title}: honest, worst of {len(mixes)} runs",
            f"{worst_delivered:.1%} delivered",
            f"p99 {worst_p99:.2f} s; junk forwarded: {junk}",
            f">= {GOAL_SPAM_DELIVERED:.0%} and <= {GOAL_SPAM_P99_S} s: "
            + verdict(worst_delivered >= GOAL_SPAM_DELIVERED and worst_p99 <= GOAL_SPAM_P99_S and junk == 0),
        ),
        ("  answers by kind, all runs", "", "", answered),
    ]


def report(bench: Bench, results: dict[str, object]) -> str:
    rows: list[Row] = []
    rounds, bursts, cold = results.get("rounds"), results.get("bursts"), results.get("cold_ms")
    if isinstance(rounds, list):
        rows += load_rows(rounds, results)
    if isinstance(bursts, list):
        rows += burst_rows(bursts, bench.args.burst)
    if isinstance(cold, list):
        ms = statistics.median(cold)
        rows.append(
            (
                "cold start to first answered ping",
                f"{ms:.0f} ms",
                "",
                f"<= {GOAL_COLD_MS:.0f} ms: {verdict(ms <= GOAL_COLD_MS)}",
            )
        )
    tls = results.get("https")
    if isinstance(tls, list) and tls:
        rows += https_rows(tls)
    edge = results.get("edges")
    if isinstance(edge, dict) and edge:
        rows += edge_rows(edge)
    inbound_result = results.get("inbound")
    if isinstance(inbound_result, dict):
        from inbound import inbound_rows

        rows += inbound_rows(inbound_result)
    checks = results.get("spam")
    if isinstance(checks, dict) and checks:
        rows += spam_rows(checks, bench.args.spam_rate)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = f"app {bench.args.app}: medians of {bench.args.rounds} rounds of {bench.args.seconds} s"
    header += " (a ratio is the median of the rounds' ratios)"
    lines = [header, "-" * len(header)]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    load = "load average before/after: " + " / ".join(bench.load_averages)
    return "\n".join(lines + [f"note: {note}" for note in [*bench.notes, load]])


def setup(args: argparse.Namespace, tmp: Path) -> Bench:
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing; install it with `sudo apt-get install wrk` (Debian/Ubuntu)")
    cores = sorted(os.sched_getaffinity(0))
    notes = []
    proxy_core = load_core = None
    if len(cores) >= 2 and shutil.which("taskset"):
        proxy_core, load_core = cores[0], cores[1]
        os.sched_setaffinity(0, {load_core})  # this script and its helpers share the load core
        notes.append(
            f"pinned: proxy, ceiling and the direct-latency sink on core {proxy_core}; "
            f"wrk, the other sinks and the burst client on core {load_core}"
        )
    else:
        notes.append("NOT pinned (needs 2 cores and taskset): load generator and proxy share the CPU")
    # 1,000 inbound plus 1,000 outbound sockets need more than the usual 1,024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard) if hard != resource.RLIM_INFINITY else 8192, hard))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINGFORWARD_", "UVICORN_"))}
    env["WEB_CONCURRENCY"] = "1"  # one worker, whatever the shell says
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"  # the Procfile's `uvicorn` is ours
    from pingforward.config import Settings

    # The sinks live on 127.0.0.1 at random ports: only what loopback needs, every other setting its default.
    # The junk checks off: these scenarios measure the forwarding path, and wrk sends one ping again and
    # again from one client, from a made-up source, which the checks answer as a repeat, a flood or a source
    # that cannot be read, without forwarding it. The "spam" scenario measures the checks against this.
    opened = {"allow_private_networks": "true", "allowed_ports": "*", "spam_checks": "off"}
    for name, value in {**opened, **dict(args.setting)}.items():
        if name in Settings.__dataclass_fields__:
            env[f"PINGFORWARD_{name.upper()}"] = value
    notes.append("proxy env: " + " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("PINGFORWARD_")))
    return Bench(args, tmp, proxy_core, load_core, env, notes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario; the table shows medians (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--burst", type=int, default=1000, help="pings in the slow-receiver burst (default 1000)")
    parser.add_argument(
        "--uvicorn", type=shlex.split, default=[], help="more uvicorn options for ceiling and proxy, e.g. '--http h11'"
    )
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable; default all)"
    )
    parser.add_argument("--spam-rate", type=int, default=400, help="pings a second in the spam mix (default 400)")
    parser.add_argument(
        "--app", default=PROXY_APP, help=f"uvicorn factory to measure as the proxy (default {PROXY_APP})"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        metavar="NAME=VALUE",
        help="a proxy setting besides the defaults, e.g. metrics_token=0123456789abcdef (repeatable)",
    )
    args = parser.parse_args(argv)
    args.only = args.only or list(SCENARIOS)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pingforward-bench-") as tmp:
        bench = setup(args, Path(tmp))
        started_at = time.monotonic()
        bench.load_averages.append(f"{os.getloadavg()[0]:.2f}")
        results = run(bench)
        bench.load_averages.append(f"{os.getloadavg()[0]:.2f}")
    table = report(bench, results)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"args": vars(args), "notes": bench.notes, **results}, indent=1))
    (RESULTS / f"{stamp}.txt").write_text(table + "\n")
    progress(f"done in {time.monotonic() - started_at:.0f} s; results in {RESULTS}/{stamp}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
