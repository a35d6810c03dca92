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

from service.core import jsonio
from service.process.runner import event_loop_factory


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


# KServe v2, for perf_analyzer (bench_triton.py): a batching sequence model with one FP32 input
# and output of width 1, and an inference answer of the right shape, binary as perf_analyzer asks.
_V2_CONFIG = {
    "name": "noop",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 1024,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 1]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 1]}],
    "sequence_batching": {"oldest": {"max_queue_delay_microseconds": 0}},
}


async def v2_config(request: web.Request) -> web.Response:
    config = dict(_V2_CONFIG, name=request.match_info["model"])
    return web.Response(body=jsonio.dumps(config), content_type="application/json")


async def v2_metadata(request: web.Request) -> web.Response:
    tensor = {"datatype": "FP32", "shape": [-1, -1, 1]}
    body = {
        "name": request.match_info["model"],
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [dict(tensor, name="x")],
        "outputs": [dict(tensor, name="y")],
    }
    return web.Response(body=jsonio.dumps(body), content_type="application/json")


async def v2_server(request: web.Request) -> web.Response:
    body = b'{"name":"noop","version":"0","extensions":["sequence","binary_tensor_data"]}'
    return web.Response(body=body, content_type="application/json")


async def v2_stats(request: web.Request) -> web.Response:
    return web.Response(body=b'{"model_stats":[]}', content_type="application/json")


async def v2_infer(request: web.Request) -> web.Response:
    raw = await request.read()
    length = request.headers.get("Inference-Header-Content-Length")
    head = jsonio.loads(raw[: int(length)] if length else raw)
    steps = head["inputs"][0]["shape"][1]
    answer = {
        "model_name": request.match_info["model"],
        "model_version": "1",
        "outputs": [
            {
                "name": "y",
                "datatype": "FP32",
                "shape": [1, steps, 1],
                "parameters": {"binary_data_size": 4 * steps},
            }
        ],
    }
    if "id" in head:
        answer["id"] = head["id"]
    body = jsonio.dumps(answer)
    response = web.Response(body=body + bytes(4 * steps), content_type="application/octet-stream")
    response.headers["Inference-Header-Content-Length"] = str(len(body))
    return response


async def ready(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


async def _serve(port: int, reuse_port: bool) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("/v1/models/{model}", "/v1"):
        app.router.add_post(prefix + "/streams/{stream}/readings", one_stream)
        app.router.add_post(prefix + "/readings", bulk)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/v2", v2_server)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_post(base + "/infer", v2_infer)
        app.router.add_get(base, v2_metadata)
        app.router.add_get(base + "/config", v2_config)
        app.router.add_get(base + "/stats", v2_stats)
        app.router.add_get(base + "/ready", ready)
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
