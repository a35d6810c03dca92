"""The floor the service is measured against: an aiohttp server that does no work per reading.

It answers the service's reading routes with an answer of the same shape, after parsing the body
with the same JSON library, on the same event loop, in as many worker processes (sharing the port
with SO_REUSEPORT, as the service's workers do). Whatever the service's requests/s fall short of
this server's is the cost of the service's own work: validation, queueing, Redis, inference.

    python bench/noop_server.py --port 8099 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import sys
from typing import Any

from aiohttp import web

from service import jsonio
from service.runner import event_loop_factory


def _answer(stream: Any, values: Any) -> dict[str, Any]:
    return {"stream": stream, "generation": 1, "results": [{"seq": 1, "prediction": values}]}


async def one_stream(request: web.Request) -> web.Response:
    data = jsonio.loads(await request.read())
    body = {
        "model": "noop",
        "model_version": "0",
        **_answer(request.match_info["stream"], data.get("values")),
    }
    return web.Response(body=jsonio.dumps(body), content_type="application/json")


async def bulk(request: web.Request) -> web.Response:
    data = jsonio.loads(await request.read())
    results = [_answer(item.get("stream"), item.get("values")) for item in data["readings"]]
    body = {"model": "noop", "model_version": "0", "results": results}
    return web.Response(body=jsonio.dumps(body), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


async def _serve(port: int, reuse_port: bool) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("/v1/models/{model}", "/v1"):
        app.router.add_post(prefix + "/streams/{stream}/readings", one_stream)
        app.router.add_post(prefix + "/readings", bulk)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def _worker(port: int, reuse_port: bool) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(port, reuse_port))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers == 1:
        _worker(args.port, False)
        return 0
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(args.port, True)) for _ in range(args.workers)]
    for w in workers:
        w.start()

    def stop(*_: object) -> None:
        for w in workers:
            w.terminate()

    signal.signal(signal.SIGTERM, stop)
    for w in workers:
        w.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
