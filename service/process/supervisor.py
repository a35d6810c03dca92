"""``--workers N`` above 1: one supervisor process and N worker processes on one port.

Each worker is a whole service (``runner.run_server``) bound to the port with ``SO_REUSEPORT``, so
the kernel spreads connections over them; any worker serves any stream, since stream state is in
Redis. The supervisor serves nothing itself. It

- starts the private server once when no ``REDIS_URL`` is given, hands its URL to the
  workers, and stops it last, after every worker has drained;
- points the workers at one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory removed at
  exit, unless the operator set one), so any worker's ``/metrics`` shows the sum of all of them,
  and retires each dead worker's live gauges (``mark_process_dead``);
- forwards SIGTERM and SIGINT to the workers and waits for them to drain;
- forwards SIGHUP to every listening worker, each of which reads the token files again (a worker
  still starting reads them as it starts, and notices a change within seconds anyway);
- restarts a worker that dies, after a back-off that doubles up to 30 s, telling the new worker
  it is a restart (it counts itself in ``lstm_worker_restarts_total``); a worker that fails
  before it ever listened stops everything instead (a bad model or a taken port would fail again).

Workers are started with ``spawn``: a fork of a process that has imported onnxruntime and
prometheus_client would inherit threads and the wrong metric storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from ..core.logs import configure_logging
from ..core.settings import Settings
from .embedded_redis import EmbeddedRedis, EmbeddedRedisError
from .runner import SHUTDOWN_TIMEOUT_S, run_server

__all__ = ["DRAIN_S", "Supervisor"]

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
# A worker that ran this long before dying was healthy: its next restart starts the back-off anew.
_HEALTHY_RUN_S = 60.0
# Time a worker gets to drain after SIGTERM before it is killed: its own shutdown timeout for
# requests in flight, plus as long again for the batcher's queue.
DRAIN_S = 2 * SHUTDOWN_TIMEOUT_S + 5


def _worker_main(
    settings: Settings,
    index: int,
    metrics_dir: str,
    ready: Connection,
    parent_pid: int,
    restarted: bool,
) -> None:
    """A worker process's entry point (started with spawn, so it imports everything afresh)."""
    configure_logging(settings.log_level, settings.log_format, {"worker": index})
    code = run_server(
        settings,
        metrics_dir=Path(metrics_dir),
        watch_expiry=index == 0,  # one process per replica counts expired streams
        reuse_port=True,
        on_listening=lambda: ready.send(True),
        parent_pid=parent_pid,
        restarted=restarted,  # counted in lstm_worker_restarts_total
    )
    raise SystemExit(code)


@dataclasses.dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready_pipe: Connection
    started_at: float
    listening: bool = False


class Supervisor:
    def __init__(self, settings: Settings, metrics_dir: Path | None) -> None:
        """``metrics_dir``: the operator's ``PROMETHEUS_MULTIPROC_DIR``, or None for a fresh one."""
        self.settings = settings
        self._given_metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._restart_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._stop_signal: int | None = None
        self._reload_asked = False  # SIGHUP came: forward it to the workers
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status."""
        embedded: EmbeddedRedis | None = None
        metrics_dir = self._given_metrics_dir or Path(
            tempfile.mkdtemp(prefix="lstm-serve-metrics-")
        )
        previous = self._install_signal_handlers()
        try:
            if self.settings.redis_url is None:
                embedded = EmbeddedRedis(self.settings.redis_dir, self.settings.redis_server)
                embedded.start()
                log.info("Redis: %s", embedded.description)
                self.settings = dataclasses.replace(self.settings, redis_url=embedded.url)
            # Workers inherit the variable; prometheus_client reads it when they import it.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            code = self._supervise(metrics_dir)
            drained = self._stop_workers(metrics_dir)
            return code or (0 if drained else 1)
        except EmbeddedRedisError as exc:
            log.error("%s", exc)
            return 1
        finally:
            self._stop_workers(metrics_dir)  # after an error; a no-op after a clean stop
            if embedded is not None:
                embedded.stop()
            if self._given_metrics_dir is None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(-1)
            log.info("stopped")

    def _install_signal_handlers(self) -> dict[int, Any]:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())  # wakes wait() below at once

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is None:
                self._stop_signal = signum

        def on_reload(signum: int, frame: FrameType | None) -> None:
            self._reload_asked = True

        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)
        previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
        signal.signal(signal.SIGHUP, on_reload)
        return previous

    def _start(self, index: int, metrics_dir: Path) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            # A worker index that died before is restarted (see _on_exit).
            args=(
                self.settings,
                index,
                str(metrics_dir),
                send,
                os.getpid(),
                index in self._failures,
            ),
            name=f"lstm-serve-worker-{index}",
        )
        process.start()
        send.close()  # the worker holds the only sending end: EOF when it dies
        self._workers[index] = _Worker(index, process, receive, time.monotonic())

    def _supervise(self, metrics_dir: Path) -> int:
        for index in range(self.settings.workers):
            self._start(index, metrics_dir)
        announced = False
        while self._stop_signal is None:
            now = time.monotonic()
            for index, at in list(self._restart_at.items()):
                if at <= now:
                    del self._restart_at[index]
                    self._start(index, metrics_dir)
            timeout = min((at - now for at in self._restart_at.values()), default=None)
            waitables: list[Connection | socket.socket | int] = [self._wake_r]
            for worker in self._workers.values():
                waitables.append(worker.process.sentinel)
                if not worker.listening:
                    waitables.append(worker.ready_pipe)
            woken = wait(waitables, None if timeout is None else max(timeout, 0.0))
            if self._wake_r in woken:
                self._drain_wakeups()
            if self._reload_asked:
                self._reload_asked = False
                self._forward_reload()
            for worker in list(self._workers.values()):
                if not worker.listening and worker.ready_pipe in woken:
                    with contextlib.suppress(EOFError):  # it died; its sentinel says so
                        worker.listening = bool(worker.ready_pipe.recv())
                if not worker.process.is_alive():
                    code = self._on_exit(worker, metrics_dir)
                    if code is not None:
                        return code
            if not announced and all(w.listening for w in self._workers.values()):
                announced = len(self._workers) == self.settings.workers
                if announced:
                    log.info(
                        "%d workers serving on http://%s:%d",
                        self.settings.workers,
                        self.settings.host,
                        self.settings.port,
                    )
        log.info("stopping on %s", signal.Signals(self._stop_signal).name)
        return 0

    def _on_exit(self, worker: _Worker, metrics_dir: Path) -> int | None:
        """Retire a dead worker; an exit status for the supervisor when it should give up."""
        process = worker.process
        process.join()
        del self._workers[worker.index]
        worker.ready_pipe.close()
        assert process.pid is not None
        mark_process_dead(  # type: ignore[no-untyped-call]
            process.pid, str(metrics_dir)
        )
        first_start = worker.index not in self._failures
        if not worker.listening and first_start:
            log.error(
                "worker %d exited with status %s before it listened: stopping",
                worker.index,
                process.exitcode,
            )
            return process.exitcode or 1
        ran_s = time.monotonic() - worker.started_at
        failures = 0 if ran_s >= _HEALTHY_RUN_S else self._failures.get(worker.index, 0)
        self._failures[worker.index] = failures + 1
        delay = min(_BACKOFF_FIRST_S * 2**failures, _BACKOFF_MAX_S)
        log.warning(
            "worker %d (pid %d) exited with status %s after %.1f s: restarting it in %.1f s",
            worker.index,
            process.pid,
            process.exitcode,
            ran_s,
            delay,
        )
        self._restart_at[worker.index] = time.monotonic() + delay
        return None

    def _forward_reload(self) -> None:
        """SIGHUP to every worker that listens (one still starting has no handler for it yet,
        and SIGHUP's default would end it)."""
        sent = 0
        for worker in self._workers.values():
            if worker.listening and worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGHUP)
                sent += 1
        log.info("SIGHUP: forwarded to %d worker(s)", sent)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _stop_workers(self, metrics_dir: Path) -> bool:
        """SIGTERM every worker, wait for each to drain, kill what outlives the allowance; True
        when every worker stopped cleanly (status 0)."""
        clean = True
        self._restart_at.clear()
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_S
        for worker in workers:
            worker.process.join(max(deadline - time.monotonic(), 0.0))
            if worker.process.is_alive():
                log.error("worker %d did not stop within %.0f s: killing it", worker.index, DRAIN_S)
                worker.process.kill()
                worker.process.join()
            # One still starting when the signal came had accepted nothing: its default
            # SIGTERM death is a clean stop too.
            stopped_early = not worker.listening and worker.process.exitcode == -signal.SIGTERM
            if worker.process.exitcode != 0 and not stopped_early:
                clean = False
                log.warning(
                    "worker %d exited with status %s", worker.index, worker.process.exitcode
                )
            worker.ready_pipe.close()
            if worker.process.pid is not None:
                mark_process_dead(  # type: ignore[no-untyped-call]
                    worker.process.pid, str(metrics_dir)
                )
        self._workers.clear()
        return clean
