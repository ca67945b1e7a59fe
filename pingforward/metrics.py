"""Opt-in Prometheus metrics: counted in plain ints on the hot path, handed to prometheus-client on a timer.

Off unless PINGFORWARD_METRICS_TOKEN is set; then `GET /metrics` with `Authorization: Bearer <token>`
answers the text exposition format (https://prometheus.io/docs/instrumenting/exposition_formats/).

With several workers behind one port a scrape reaches any one of them, so each worker writes its counts
to files in a directory they share and the scraped one sums them all: prometheus-client's multiprocess
mode (https://prometheus.github.io/client_python/multiprocess/). A ping only adds to ints and dicts of
its worker (`Counts`); `Exporter.flush` adds what changed to prometheus-client's file-backed values once
a second and before each scrape, as each of its own writes costs more than a ping's counting does
(bench/README.md).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import multiprocessing
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pingforward.errors import Failure
from pingforward.pingback import FaultCode

if TYPE_CHECKING:
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Gauge, Histogram

    from pingforward.forward import Outcome
    from pingforward.net.transport import PolicyTransport

logger = logging.getLogger(__name__)

PREFIX: Final = "pingforward_"
FLUSH_SECONDS: Final = 1.0
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DIRECTORY_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it
# A ping's forward, and a source's verification, take from a few milliseconds to PINGFORWARD_TIMEOUT
# (10 s by default, at most 300).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))

# Label values come from a short list each, so that no stranger can grow the number of series.
NONE: Final = "none"
OTHER: Final = "other"
FAULTS: Final = frozenset(str(int(code)) for code in FaultCode)
FAILURES: Final = frozenset(str(failure) for failure in Failure)
# Why the proxy refused a ping itself (forward.Outcome.refusal), as the junk checks name it: the source's
# verification (self_ping... copy) and the windows (repeat, flood).
REFUSALS: Final = frozenset(
    {"self_ping", "source_gone", "source_unreachable", "fetch_bound", "no_link", "copy", "repeat", "flood"}
)


def bounded(value: object, allowed: frozenset[str]) -> str:
    """`value` as a label value: "none" for None, itself if allowed, else "other"."""
    if value is None:
        return NONE
    text = str(value)
    return text if text in allowed else OTHER


# What a ping is counted by on the hot path: its outcome's fault, refusal and failure, as they are.
PingKey = tuple[FaultCode | None, str | None, Failure | None]


def ping_labels(key: PingKey) -> tuple[str, str, str, str]:
    """The labels of `pingforward_pings_total` for one ping: outcome, fault, refusal, failure."""
    fault, refusal, failure = key
    return (
        "delivered" if fault is None else "fault",
        NONE if fault is None else bounded(int(fault), FAULTS),
        bounded(refusal, REFUSALS),
        bounded(failure, FAILURES),
    )


class Buckets:
    """A latency histogram in plain numbers: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are upper bounds, inclusive ("le"): bisect_left puts 0.5 into the 0.5 bucket.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class Counts:
    """One worker's counts, as the hot path keeps them: a dict increment or two per ping."""

    pings: dict[PingKey, int] = field(default_factory=dict)
    forward: Buckets = field(default_factory=Buckets)
    verification: Buckets = field(default_factory=Buckets)

    def ping(self, outcome: Outcome) -> None:
        # A plain dict: Counter's `+=` costs more (bench/README.md); labels are made at flush time.
        key = (outcome.fault, outcome.refusal, outcome.failure)
        self.pings[key] = self.pings.get(key, 0) + 1


# Where the other parts of the service keep counts of their own, read at each flush.
CumulativeSource = Callable[[], Mapping[tuple[str, ...], float]]
GaugeSource = Callable[[], Mapping[tuple[str, ...], float]]


class Exporter:
    """One worker's side of the shared metrics: adds its counts to the shared files, and renders them all.

    Built in the worker (the app's lifespan), once the directory is known: prometheus-client picks the
    directory when a value is first made.
    """

    def __init__(self, directory: Path, counts: Counts) -> None:
        from prometheus_client import Counter as PromCounter
        from prometheus_client import Gauge, Histogram, values

        # The file-backed value class, whatever the environment was when prometheus_client was imported.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.directory = directory
        self.counts = counts
        self._pings = PromCounter(
            PREFIX + "pings",
            "Pings answered, by outcome, fault code, the proxy's own refusal and the outbound failure",
            ["outcome", "fault", "refusal", "failure"],
            registry=None,
        )
        self._histograms: list[tuple[Histogram, Buckets, list[int], list[float]]] = []
        for name, about, buckets in (
            ("forward_seconds", "Time from sending a ping's Webmention to its outcome", counts.forward),
            ("verification_seconds", "Time spent verifying a ping's source before forwarding", counts.verification),
        ):
            histogram = Histogram(PREFIX + name, about, buckets=buckets.bounds, registry=None)
            self._histograms.append((histogram, buckets, [0] * len(buckets.bounds), [0.0]))
        self._cumulative: list[tuple[PromCounter, CumulativeSource, dict[tuple[str, ...], float]]] = []
        self._gauges: list[tuple[Gauge, GaugeSource]] = []
        self._seen_pings: dict[tuple[str, ...], float] = {}
        self._make_counter = PromCounter
        self._make_gauge = Gauge

    def add_counter(self, name: str, about: str, labels: Iterable[str], read: CumulativeSource) -> None:
        """Export a count kept elsewhere, which `read` returns as totals by label values (only ever growing)."""
        counter = self._make_counter(PREFIX + name, about, list(labels), registry=None)
        self._cumulative.append((counter, read, {}))

    def add_gauge(self, name: str, about: str, labels: Iterable[str], read: GaugeSource) -> None:
        """Export a value kept elsewhere, summed over the live workers."""
        gauge = self._make_gauge(PREFIX + name, about, list(labels), registry=None, multiprocess_mode="livesum")
        self._gauges.append((gauge, read))
        _set(gauge, read())  # the file exists from now on: with its value, not a 0 until the first flush

    def flush(self) -> None:
        """Add what was counted since the last flush to this worker's file."""
        by_labels: Counter[tuple[str, ...]] = Counter()
        for key, count in list(self.counts.pings.items()):
            by_labels[ping_labels(key)] += count
        _add_new(self._pings, by_labels, self._seen_pings)
        for counter, read, seen in self._cumulative:
            _add_new(counter, read(), seen)
        for gauge, read in self._gauges:
            _set(gauge, read())
        for histogram, buckets, seen_counts, seen_total in self._histograms:
            # Histogram.observe takes one observation at a time; these are already counted per bucket.
            # In multiprocess mode its per-bucket values are not cumulative, as `Buckets.counts`.
            for index, count in enumerate(buckets.counts):
                if count != seen_counts[index]:
                    histogram._buckets[index].inc(count - seen_counts[index])
                    seen_counts[index] = count
            if buckets.total != seen_total[0]:
                histogram._sum.inc(buckets.total - seen_total[0])
                seen_total[0] = buckets.total

    async def keep_flushing(self, seconds: float = FLUSH_SECONDS) -> None:
        """Flush every `seconds` until cancelled, so that a scrape that reaches another worker sees these counts."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.flush()
            except OSError:  # the directory is gone or full: the pings matter more than their counts
                logger.exception("metrics: cannot write to %s", self.directory)

    def render(self) -> bytes:
        """Every live and past worker's metrics in the text format, this worker's up to this moment."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.flush()
        forget_dead_workers(self.directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def start(counts: Counts, rejections: Mapping[str, int], transport: PolicyTransport) -> Exporter:
    """The worker's exporter, with every count the service keeps: `counts` (the endpoint's), `rejections`
    (requests answered without a ping, by kind: the ping log's), the server's refusals before the app, and
    the DNS lookups and outbound slots of the `transport`."""
    from pingforward import server

    exporter = Exporter(shared_directory(), counts)
    before_app = Bounded(server.refusals)

    def rejected() -> dict[tuple[str, ...], float]:
        totals: dict[tuple[str, ...], float] = {("app", kind): count for kind, count in rejections.items()}
        totals.update({("server", reason): count for reason, count in before_app.read().items()})
        return totals

    exporter.add_counter(
        "requests_rejected",
        "Requests answered without a ping: by the server before the app (head too large or too slow, malformed "
        "HTTP), or by the app (no usable forward parameter, malformed XML-RPC, body too large or too slow)",
        ["layer", "reason"],
        rejected,
    )
    lookups = Bounded(transport.lookups)
    exporter.add_counter(
        "dns_lookups",
        "Lookups of forward hosts' names by result: answered, cached, stale, or the failure",
        ["result"],
        lambda: {(result,): count for result, count in lookups.read().items()},
    )
    slots = transport.slots
    exporter.add_gauge(
        "outbound_slots",
        "Outbound requests holding a slot (in_use) and waiting for one (waiting)",
        ["state"],
        lambda: {("in_use",): slots.in_use, ("waiting",): slots.waiting},
    )
    # Each live worker counts itself; a dead one's value is dropped at the next scrape (forget_dead_workers).
    exporter.add_gauge("workers", "Worker processes alive", [], lambda: {(): 1})
    return exporter


_LABEL_VALUE: Final = re.compile(r"[a-z0-9_-]{1,40}")
MAX_VALUES: Final = 32  # label values of one source; more are "other"


class Bounded:
    """The counts another module keeps by name, with a bounded set of names as label values."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = counts
        self._allowed: set[str] = set()

    def read(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, count in list(self.counts.items()):
            if name not in self._allowed and len(self._allowed) < MAX_VALUES and _LABEL_VALUE.fullmatch(name):
                self._allowed.add(name)
            label = name if name in self._allowed else OTHER
            totals[label] = totals.get(label, 0) + count
        return totals


def _set(gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
    for labels, value in values.items():
        (gauge.labels(*labels) if labels else gauge).set(value)


def _add_new(counter: PromCounter, totals: Mapping[tuple[str, ...], float], seen: dict[tuple[str, ...], float]) -> None:
    for labels, total in list(totals.items()):
        added = total - seen.get(labels, 0)
        if added > 0:
            counter.labels(*labels).inc(added)
            seen[labels] = total


# The shared directory. prometheus-client leaves it to the operator, who must make it, empty it before
# each start and point every worker at it; here the workers of one server find and make it themselves.


def shared_directory() -> Path:
    """The directory this server's workers share metrics in: PROMETHEUS_MULTIPROC_DIR if set, else made.

    uvicorn starts its workers with multiprocessing (spawn), so the workers of one server have its
    supervising process as their `parent_process`; a server of one process is on its own. The directory
    is named after that process and its start time, so no earlier server's counts (one with the same
    pid, in a restarted container) are read as this one's, and the directories of servers that have
    ended are removed.
    """
    given = os.environ.get(DIRECTORY_VARIABLE)
    if given:
        return Path(given)
    parent = multiprocessing.parent_process()
    leader = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    base = Path(tempfile.gettempdir())
    prefix = f"pingforward-metrics-{os.getuid()}-"
    path = base / f"{prefix}{leader}-{_started(leader)}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    _check_private(path)
    _remove_ended(base, prefix, keep=path)
    os.environ[DIRECTORY_VARIABLE] = str(path)  # prometheus-client reads it when it opens a file
    return path


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, proc(5) `stat` field 22), or "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _check_private(path: Path) -> None:
    # The temporary directory is shared with every user of the machine: counts read from a directory
    # someone else made could be theirs.
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a private directory of this user; remove it, or set {DIRECTORY_VARIABLE}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_ended(base: Path, prefix: str, keep: Path) -> None:
    for path in base.glob(prefix + "*"):
        pid, _, started = path.name.removeprefix(prefix).partition("-")
        if path == keep or not pid.isdigit():
            continue
        if _alive(int(pid)) and _started(int(pid)) == started:
            continue
        try:
            if path.lstat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def forget_dead_workers(directory: Path) -> None:
    """Drop the gauges of workers that are gone (their slots are free); their counts stay in the sums."""
    from prometheus_client.multiprocess import mark_process_dead

    for path in directory.glob("gauge_livesum_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]
