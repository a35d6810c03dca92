"""``lstm-serve`` (also ``python -m service``): settings from flags and environment, then serve."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app
from .embedded_redis import EmbeddedRedisError
from .model import ModelLoadError
from .settings import SettingsError, load_settings

log = logging.getLogger("service")


async def _freeze_startup_objects(app: web.Application) -> None:
    """Keep the garbage collector's full passes off the request path.

    Everything imported and loaded at start-up (onnxruntime, numpy, aiohttp, the models) lives as
    long as the process; left in the collected generations, every full collection walks all of it
    and stalls the event loop for tens of milliseconds, which showed as a p99 three times the p50
    in bench/bench_service.py. Frozen, those objects are never scanned again.
    """
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app = create_app(settings)
    except (ModelLoadError, ValueError) as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 1
    from .app_keys import MODELS

    app.on_startup.append(_freeze_startup_objects)
    served = ", ".join(f"{m.name} (version {m.version})" for m in app[MODELS].values())
    log.info("serving %s on http://%s:%d", served, settings.host, settings.port)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            print=None,
            shutdown_timeout=30,
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


if __name__ == "__main__":
    sys.exit(main())
