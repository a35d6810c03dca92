"""The service's real app (``create_app``) served from a thread of the test process, for what no
flag sets yet: the request's tenant, taken from a test-only header (``TENANT_HEADER``) where
authentication will set it, and the batcher's per-tenant limits on live streams (``limits``).
Everything else is the real thing: real HTTP on a free port, a real redis-server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from service_harness import free_port

from service.api.app_keys import BATCHER, TENANT
from service.core.settings import Settings
from service.process.app import create_app

TENANT_HEADER = "X-Test-Tenant"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def tenant_from_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What authentication will do, minus the authentication: the request's tenant."""
    tenant = request.headers.get(TENANT_HEADER)
    if tenant is not None:
        request[TENANT] = tenant
    return await handler(request)


def as_tenant(tenant: str | None) -> dict[str, str]:
    """The headers that make a request the tenant's (None: the default tenant's, no header)."""
    return {} if tenant is None else {TENANT_HEADER: tenant}


class InProcessService:
    """``create_app(settings)`` listening on 127.0.0.1 from a thread with its own event loop.

    ``limits`` maps a tenant to its ``max_streams``; the test may change it at any time (the
    batcher reads it per new stream)."""

    def __init__(self, settings: Settings, limits: dict[str, int] | None = None) -> None:
        self.port = free_port()
        self.settings = settings
        self.limits: dict[str, int] = {} if limits is None else limits
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InProcessService:
        self._thread = threading.Thread(target=self._serve, name="service", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the in-process service did not start within 60 s")
        if self._failure is not None:
            raise RuntimeError("the in-process service did not start") from self._failure
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.run_until_complete(self._cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.close()

    async def _start(self) -> None:
        app = create_app(self.settings)
        app.middlewares.append(tenant_from_header)
        self.app = app
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()  # opens every resource (cleanup_ctx)
        app[BATCHER].stream_limit = self.limits.get
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def run(self, coroutine: Awaitable[Any]) -> Any:
        """Run a coroutine on the service's own loop (to reach its resources); its result."""
        assert self._loop is not None

        async def wrapped() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(30)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(60)
            self._thread = None
