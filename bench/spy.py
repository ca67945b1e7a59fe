"""Profile the proxy under wrk load with py-spy: `.venv/bin/python bench/spy.py [ping|junk|burst]`.

Needs `pip install py-spy` in the venv. Writes bench/results/profile-<scenario>.txt (collapsed stacks,
for flamegraph tools or speedscope) and prints the functions with the largest inclusive and own
shares of samples.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

import run


def top(collapsed: Path, count: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [
            frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
            for frame in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(count)]
    lines += ["", "own:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(count)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["ping", "junk", "burst"], default="ping", nargs="?")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--app", default=run.PROXY_APP)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        sys.exit("profile: py-spy is missing; .venv/bin/pip install py-spy")
    run.RESULTS.mkdir(exist_ok=True)
    out = run.RESULTS / f"profile-{args.scenario}.txt"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "ping.xml").write_bytes(run.PING_XML)
        (tmp / "malformed.xml").write_bytes(run.MALFORMED_XML)
        ping = tmp / "ping.xml"
        bench = run.setup(argparse.Namespace(app=args.app, burst=1000), tmp)
        sink_port, proxy_port = run.free_port(), run.free_port()
        delay = ["--delay", "1"] if args.scenario == "burst" else []
        path = "/?forward=" + quote(f"http://127.0.0.1:{sink_port}/webmention", safe="")
        sink = [sys.executable, str(run.BENCH / "sink.py"), "--port", str(sink_port), *delay]
        proxy = run.procfile_command(proxy_port, args.app)
        with run.started(bench, "sink", sink, bench.load_core, sink_port):
            with run.started(bench, "proxy", proxy, bench.proxy_core, proxy_port) as pid:
                run.ping_once(proxy_port, path, run.PING_XML, timeout=5)
                record = [str(spy), "record", "--pid", str(pid), "--format", "raw"]
                record += ["--rate", "250", "--duration", str(args.seconds), "--output", str(out)]
                spying = subprocess.Popen(bench.pinned(record, bench.load_core), stderr=subprocess.DEVNULL)
                if args.scenario == "burst":
                    threading.Event().wait(0.5)
                    print(run.burst(bench, proxy_port, path))
                elif args.scenario == "junk":
                    junk = [("/", tmp / "malformed.xml"), ("/?forward=ftp%3A%2F%2Fx", ping), ("/", ping)]
                    print(run.wrk(bench, proxy_port, "fault", junk, 64, args.seconds - 1))
                else:
                    print(run.wrk(bench, proxy_port, "ok", [(path, ping)], 64, args.seconds - 1))
                spying.wait(timeout=args.seconds + 30)
    print(top(out, args.top))
    print(f"collapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
