"""Many subscribers on one service process: delivery latency and memory per subscriber.

Raises its own open-file limit (and so its children's), starts a private redis-server and one
service process (the bundled demo model), opens ``--subscribers`` connections from this process
with aiohttp's client, half multi-stream SSE and half WebSocket, each following ``--per-sub``
of ``--streams`` streams, then posts ``--rounds`` bulk requests (one reading for every stream,
``--interval-s`` apart). Reports:

- delivery latency, from the commit time each event carries (``ts``, Unix ms) to its receipt
  here, p50/p99 over every (subscriber, event) delivery;
- the service process's memory per subscriber: its RSS with every subscriber connected minus
  its RSS before any, divided by their number.

    python bench/bench_subscribers.py --subscribers 10000

The client, the service and Redis share the machine: on 2 cores the client's own parsing is a
large part of the latency measured, so read the figures as an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Receipts:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ready = 0

    def take(self, body: dict[str, Any]) -> None:
        self.latencies.append(time.time() - body["ts"])


async def _sse(session: aiohttp.ClientSession, url: str, r: Receipts, ready: asyncio.Event) -> None:
    async with session.get(url) as answer:
        assert answer.status == 200, answer.status
        async for line in answer.content:
            if line.startswith(b'data: {"model"'):
                r.take(json.loads(line[6:]))
            elif line.startswith(b"event: streams"):
                r.ready += 1
                ready.set()


async def _ws(
    session: aiohttp.ClientSession, url: str, streams: list[str], r: Receipts, ready: asyncio.Event
) -> None:
    async with session.ws_connect(url, heartbeat=None) as ws:
        await ws.send_json({"op": "subscribe", "streams": streams})
        async for message in ws:
            body = json.loads(message.data)
            if body["type"] == "event":
                r.take(body)
            elif body["type"] == "subscribed":
                r.ready += 1
                ready.set()
            elif body["type"] in ("closed", "error", "gap"):
                print(f"WebSocket: {body}", file=sys.stderr)
        raise RuntimeError(f"WebSocket closed: {ws.close_code} {ws.exception()}")


def _check(tasks: list[asyncio.Task[None]]) -> None:
    """Raise the first subscriber's failure, if any."""
    for task in tasks:
        if task.done():
            task.result()
            raise RuntimeError("a subscriber's connection ended early")


async def run(args: argparse.Namespace, base: str, pid: int) -> dict[str, Any]:
    streams = [f"bench-sub-{k}" for k in range(args.streams)]
    receipts = Receipts()
    ready = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Every stream exists before anyone subscribes (so every subscriber starts live).
        async with session.post(
            f"{base}/v1/readings",
            json={"readings": [{"stream": s, "values": [24.0]} for s in streams]},
        ) as answer:
            assert answer.status == 200
        await asyncio.sleep(1.0)
        rss_before = _rss_bytes(pid)
        tasks = []
        started = time.monotonic()
        for k in range(args.subscribers):
            mine = [streams[(k + j) % len(streams)] for j in range(args.per_sub)]
            if k % 2:
                coro = _ws(session, f"{base}/v1/events/ws", mine, receipts, ready)
            else:
                coro = _sse(session, f"{base}/v1/events?streams={','.join(mine)}", receipts, ready)
            tasks.append(asyncio.create_task(coro))
            if k % 200 == 199:
                while receipts.ready < k - 400:
                    _check(tasks)
                    await asyncio.sleep(0.05)
                print(f"{receipts.ready} subscribed", file=sys.stderr, flush=True)
        while receipts.ready < args.subscribers:
            _check(tasks)
            await asyncio.sleep(0.1)
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)
        rss_with = _rss_bytes(pid)
        for _ in range(args.rounds):
            async with session.post(
                f"{base}/v1/readings",
                json={"readings": [{"stream": s, "values": [24.0]} for s in streams]},
            ) as answer:
                assert answer.status == 200
            await asyncio.sleep(args.interval_s)
        expected = args.subscribers * args.per_sub * args.rounds
        deadline = time.monotonic() + 60
        while len(receipts.latencies) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        rss_after = _rss_bytes(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = np.array(receipts.latencies) * 1000
    return {
        "subscribers": args.subscribers,
        "streams": args.streams,
        "streams_per_subscriber": args.per_sub,
        "connect_s": round(connect_s, 1),
        "deliveries": f"{len(lat)} of {expected}",
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
        "latency_ms_max": round(float(lat.max()), 1),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_with_subscribers_mib": round(rss_with / 2**20, 1),
        "rss_after_events_mib": round(rss_after / 2**20, 1),
        "rss_per_subscriber_kib": round((rss_with - rss_before) / args.subscribers / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--per-sub", type=int, default=2, help="streams each subscriber follows")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval-s", type=float, default=1.0)
    args = parser.parse_args()
    limit = _raise_nofile(2 * args.subscribers + 1024)
    if limit < args.subscribers + 512:
        print(f"the open-file limit is {limit}; too few for {args.subscribers}", file=sys.stderr)
        return 1
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-subs-"))
    redis_port, port = _free_port(), _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(work), "--maxclients", "1000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LSTM_")},
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LSTM_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        result = asyncio.run(run(args, base, service.pid))
        result["open_file_limit"] = limit
        print(json.dumps(result, indent=2))
    finally:
        service.terminate()
        service.wait(timeout=60)
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
