"""Serve the application in this process until SIGTERM or SIGINT, then drain and stop.

The shutdown order is aiohttp's: close the listening socket (nothing new is accepted), let every
request in flight finish (up to ``SHUTDOWN_TIMEOUT_S``), then close the resources in reverse order
of opening: the batcher answers everything it admitted, then Redis is closed and a private
server stopped. A second signal while draining changes nothing, so a terminal's Ctrl-C that
reaches both a supervisor and its workers cannot cut a drain short. SIGHUP reads the token files
again (``app.reload_on_signal``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..api.app_keys import MODELS
from ..core.metrics import Metrics
from ..core.settings import Settings
from ..step.model import ModelLoadError
from .app import create_app, reload_on_signal
from .embedded_redis import EmbeddedRedisError

__all__ = ["SHUTDOWN_TIMEOUT_S", "event_loop_factory", "run_server", "serve"]

log = logging.getLogger(__name__)

# Requests still running this long after a stop signal are cancelled; their readings, once queued,
# are still applied by the batcher (and a retry with the same seq gets the stored result).
SHUTDOWN_TIMEOUT_S = 30.0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (bench/README.md: what it changes), or asyncio's default where the
    environment asks for it (a benchmark's comparison)."""
    if os.environ.get("LSTM_BENCH_LOOP") == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def _freeze_startup_objects() -> None:
    """Keep the garbage collector's full passes off the request path.

    Everything imported and loaded at start-up (onnxruntime, numpy, aiohttp, the models) lives as
    long as the process; left in the collected generations, every full collection walks all of it
    and stalls the event loop for tens of milliseconds, which showed as a p99 three times the p50
    in bench/bench_service.py. Frozen, those objects are never scanned again.
    """
    gc.collect()
    gc.freeze()


async def _serve(
    app: web.Application,
    settings: Settings,
    reuse_port: bool,
    on_listening: Callable[[], None] | None,
    parent_pid: int | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal, app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()  # opens the resources (cleanup_ctx), may raise
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await site.start()
        _freeze_startup_objects()
        if on_listening is not None:
            on_listening()
        if parent_pid is None:
            await stop.wait()
        else:
            await _until_stopped_or_orphaned(stop, parent_pid)
        log.info("stopping: draining queued and in-flight readings")
    finally:
        await runner.cleanup()
    log.info("stopped")


async def _until_stopped_or_orphaned(stop: asyncio.Event, parent_pid: int) -> None:
    """A worker whose supervisor died (SIGKILL leaves no chance to forward a signal) drains and
    stops by itself rather than serving on unsupervised."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            if os.getppid() != parent_pid:
                log.warning("the supervisor is gone: stopping")
                return


def serve(
    app: web.Application,
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Run ``app`` on ``settings.host:settings.port`` until a stop signal; raises OSError when it
    cannot listen, and whatever a resource raised while opening."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(app, settings, reuse_port, on_listening, parent_pid))


def run_server(
    settings: Settings,
    *,
    metrics_dir: Path | None = None,
    watch_expiry: bool = True,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
    parent_pid: int | None = None,
    restarted: bool = False,
) -> int:
    """Build the app and serve it; the exit status: 0 after a clean stop, 1 when it could not
    start (a bad model, no server for a private Redis, the port taken), with one line on stderr
    saying why.
    ``restarted``: a supervisor's worker started again after one died, which it counts."""
    metrics = Metrics(multiprocess_dir=metrics_dir)
    if restarted:
        # Each restarted worker counts itself once; a dead worker's counts stay in its files,
        # so the sum over the workers is every restart since the supervisor started.
        metrics.worker_restarts.inc()
    try:
        app = create_app(settings, metrics, watch_expiry=watch_expiry)
    except (ModelLoadError, ValueError) as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 1
    served = ", ".join(f"{m.name} (version {m.version})" for m in app[MODELS].values())
    log.info("serving %s on http://%s:%d", served, settings.host, settings.port)
    try:
        serve(
            app,
            settings,
            reuse_port=reuse_port,
            on_listening=on_listening,
            parent_pid=parent_pid,
        )
    except EmbeddedRedisError as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"lstm-serve: cannot listen on {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0
