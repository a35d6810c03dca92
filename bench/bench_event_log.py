"""Redis memory of the per-stream event log, measured with ``MEMORY USAGE``.

Starts a private redis-server, then, for each log length bound, model shape and write size
(``--steps``: readings per write, each write one log entry), advances ``--streams`` streams
through ``StateStore.commit_many`` (the service's own commit script, so the log is trimmed exactly
as in service) until each log has been trimmed back to its bound, and reports the mean ``MEMORY
USAGE`` of a stream's log and of its state record.

    python bench/bench_event_log.py --streams 200 --steps 1,10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import redis

from service.core.metrics import Metrics
from service.step.events import log_append
from service.step.record import encode_record, guard_of
from service.step.state_store import LogPolicy, StateStore, Write

VERSION = "19f94faff40a45e0"  # a model fingerprint is 16 hex digits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fill(
    url: str, prefix: str, streams: int, length: int, shape: tuple[int, int, int], state_bytes: int
) -> None:
    inputs, outputs, steps = shape
    store = StateStore(url, prefix, Metrics(), timeout_s=10)
    policy = LogPolicy(max_len=length, max_age_ms=0)
    h = bytes(state_bytes)
    rng = np.random.default_rng(0)
    generation = 1_795_000_000_000
    # A log is trimmed back to its bound when a write passes a multiple of a tenth of it, or
    # when it is a tenth over: write a tenth more (in whole writes), so that trimming has run.
    total = length + max(1, length // 10)
    try:
        for last in range(steps, total + steps, steps):
            seqs = list(range(last - steps + 1, last + 1))
            writes = []
            for s in range(streams):
                events = log_append(
                    VERSION,
                    generation,
                    seqs,
                    rng.normal(20, 3, (steps, inputs)),
                    rng.normal(20, 3, (steps, outputs)).astype(np.float32),
                    [None] * steps,
                    (generation, seqs[0] - 1) if seqs[0] > 1 else None,
                    int(time.time() * 1000),
                )
                record = encode_record(
                    generation, last, time.time(), VERSION, h, h, [last], np.zeros((1, outputs))
                )
                guard = guard_of(generation, seqs[0] - 1) if seqs[0] > 1 else b""
                writes.append(Write(store.stream_keys("m", f"s{s}"), guard, record, events))
            written = await store.commit_many(writes, 0, policy, int(time.time() * 1000))
            assert all(w is True for w in written), written
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--lengths", default="10,100,1000")
    parser.add_argument("--shapes", default="1x1,8x2", help="inputs x outputs per event")
    parser.add_argument("--steps", default="1,10", help="readings per write (one log entry)")
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 1
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="bench-event-log-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        version = client.info("server")["redis_version"]
        rows = []
        for shape in args.shapes.split(","):
            inputs, outputs = (int(n) for n in shape.split("x"))
            for steps in (int(n) for n in args.steps.split(",")):
                for length in (int(n) for n in args.lengths.split(",")):
                    url = f"redis://127.0.0.1:{port}/0"
                    prefix = f"b{length}x{inputs}x{outputs}x{steps}"
                    fill = (inputs, outputs, steps)
                    asyncio.run(_fill(url, prefix, args.streams, length, fill, 2 * 64 * 4))
                    logs = [client.memory_usage(f"{prefix}:{{m:s{s}}}:events", samples=0) or 0
                            for s in range(args.streams)]  # fmt: skip
                    states = [client.memory_usage(f"{prefix}:{{m:s{s}}}:state", samples=0) or 0
                              for s in range(args.streams)]  # fmt: skip
                    # the log's count of the events it holds (COMMIT_SCRIPT)
                    info = client.xinfo_stream(f"{prefix}:{{m:s0}}:events")
                    assert info["entries-added"] == length, info
                    per_log = sum(logs) / len(logs)
                    rows.append(
                        {
                            "inputs": inputs,
                            "outputs": outputs,
                            "readings_per_write": steps,
                            "events_kept": length,
                            "entries": info["length"],
                            "log_bytes_per_stream": round(per_log),
                            "bytes_per_event": round(per_log / length, 1),
                            "state_bytes_per_stream": round(sum(states) / len(states)),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"redis_version": version, "streams": args.streams}))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
