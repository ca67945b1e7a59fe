"""uvicorn's command line, with its worker supervisor changed in two ways for restarts and alerts.

With several workers uvicorn's supervising process binds the listening socket and hands a copy to each worker.
On SIGTERM its workers close their copies and drain, but its own copy kept the port open: the kernel went on
completing handshakes for a backlog that no process would accept again, and those connections waited until the
drain ended and were then reset. Here the supervisor closes its copy first, so that once the workers have closed
theirs a new connection is refused at once. A worker that dies is logged at WARNING with the signal that ended it
and the requests it was serving, which its answers to uvicorn's health checks now count.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from socket import socket
from types import FrameType
from typing import Final

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from pingforward.config import PREFIX, LogFormat

logger = logging.getLogger("uvicorn.error")  # uvicorn's own lines, and its log configuration, are under this name

# uvicorn's logging configuration with every line a JSON object, for the supervising process, which never loads
# the app and so never sees the app's log settings.
JSON_LOG_CONFIG: Final = Path(__file__).with_name("uvicorn-json-log.json")

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def death(pid: int | None, exitcode: int | None, *, hung: bool, healthcheck: float, in_flight: int | None) -> str:
    """What ended a worker process, from its exit code (minus the signal's number when a signal killed it), and
    how many requests it was serving at its last health check (None: it never answered one)."""
    if hung:
        how = f"did not answer the health check within {healthcheck:g} s and was killed"
    elif exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name}"
    else:
        how = f"exited with code {exitcode}"
    if in_flight is None:
        return f"Worker process [{pid}] {how}"
    # Its connections close with it: a request in flight ends without an answer, even if its ping went out.
    if in_flight == 0:
        return f"Worker process [{pid}] {how}; no requests were in flight at its last health check"
    if in_flight == 1:
        return f"Worker process [{pid}] {how}; 1 request in flight at its last health check ends without an answer"
    return (
        f"Worker process [{pid}] {how}; {in_flight} requests in flight at its last health check end without an answer"
    )


class Worker(Process):
    """uvicorn's worker process, whose answer to a health check also says how many requests it is serving."""

    in_flight: int | None = None  # in the supervisor: at the last health check

    def pong(self) -> None:
        # In the worker, on the thread that answers the supervisor's health checks: the request tasks are the
        # ones that uvicorn's protocols start and drop (reading the size of a set needs no lock).
        self.child_conn.recv()
        self.child_conn.send((self.server.started, len(self.server.server_state.tasks)))

    def _healthcheck(self, timeout: float) -> bool | None:
        try:
            self.parent_conn.send(b"ping")
            if self.parent_conn.poll(timeout):
                started, self.in_flight = self.parent_conn.recv()
                return bool(started)
            return None
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


class Supervisor(Multiprocess):
    """uvicorn's supervisor, which stops listening as soon as it is told to stop, and logs worker deaths."""

    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        # Python runs this in the main thread, which wakes from `should_exit.wait` at once. The sockets are closed
        # there, not here: a worker being started may be receiving its copy of them at this moment.
        self.signal_queue.append(sig)
        self.should_exit.set()

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            worker = Worker(self.config, self.sockets)
            worker.start()
            self.processes.append(worker)

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        worker = Worker(self.config, self.sockets)
        worker.start()
        self.processes.append(worker)

    def restart_all(self) -> None:
        # uvicorn's own (each replacement ready before the worker it replaces is stopped), with `Worker`.
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = Worker(self.config, self.sockets)
            new.start()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    logger.error(
                        "New worker process [%s] was not ready in time; keeping worker [%s] and aborting the restart.",
                        new.pid,
                        old.pid,
                    )
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def run(self) -> None:
        logger.info("Started parent process [%d]", os.getpid())
        self.init_processes()
        while not self.should_exit.wait(0.5):
            self.handle_signals()
            self.keep_subprocess_alive()
        self.handle_signals()  # the stop signal, logged
        self.stop_listening()
        self.terminate_all()
        self.join_all()
        logger.info("Stopping parent process [%d]", os.getpid())

    def stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()
        logger.info(
            "Closed the listening socket; %d worker processes finish the requests in flight (for up to %s s)",
            len(self.processes),
            self.config.timeout_graceful_shutdown,
        )

    def keep_subprocess_alive(self) -> None:
        # uvicorn's own, with the death logged at WARNING and its cause named.
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            hung = process.exitcode is None  # still running, but silent
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # The app, a setting or the bind is broken, and a new worker would fail the same way.
                logger.error("Worker process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            in_flight = process.in_flight if isinstance(process, Worker) else None
            healthcheck = self.config.timeout_worker_healthcheck
            words = death(process.pid, process.exitcode, hung=hung, healthcheck=healthcheck, in_flight=in_flight)
            replacement = Worker(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement
            logger.warning("%s. Started worker process [%s] in its place.", words, replacement.pid)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> None:
    """uvicorn's command line (its options, and its `UVICORN_*` variables), run with `Supervisor`."""
    uvicorn_main = importlib.import_module("uvicorn.main")
    # uvicorn.run starts `Multiprocess` as named in uvicorn.main; without that seam this would silently run
    # uvicorn's own supervisor.
    if getattr(uvicorn_main, "Multiprocess", None) is not Multiprocess:
        raise RuntimeError("uvicorn.main.run no longer starts uvicorn.supervisors.Multiprocess; update Supervisor")
    setattr(uvicorn_main, "Multiprocess", Supervisor)  # noqa: B010 -- a module attribute, not a typed one
    args = list(sys.argv[1:] if argv is None else argv)
    json_logs = environ.get(PREFIX + "LOG_FORMAT", "").strip().lower() == LogFormat.JSON
    named = any(arg == "--log-config" or arg.startswith("--log-config=") for arg in args)
    if json_logs and not named and "UVICORN_LOG_CONFIG" not in environ:
        args += ["--log-config", str(JSON_LOG_CONFIG)]
    uvicorn_main.main.main(args=args, prog_name="uvicorn")


if __name__ == "__main__":
    # As pingforward.supervisor, not __main__: each worker process is started from a pickled `Worker`.
    from pingforward.supervisor import main as supervise

    supervise()
