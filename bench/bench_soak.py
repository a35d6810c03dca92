"""A long run of mixed load, with every applied step accounted for (a benchmark, not a test).

One redis-server (append-only file on) and the service on the bundled demo model. First the
single-reading path's throughput is measured with wrk (c=64, ``--probe-s``); then, for
``--minutes``, an asyncio client offers ``--load`` (default 0.7) of that rate, in readings per
second, as a mix of

- single readings with the client's ``seq`` (each stream advances one request at a time),
- retries: the last acknowledged request of a stream sent again (the service must answer it as a
  duplicate, never apply it twice),
- bulk requests over ``--bulk-streams`` streams, one reading each,
- deletes of a stream (its next reading starts a new generation),

while ``--subscribers`` clients each follow a ninth of the streams (a prefix) over the
multi-stream SSE route, resuming from their cursor whenever the service ends their connection.
A failed or refused request is sent again, same seq, until it is answered, so that nothing the
client meant is lost. Every ``--window-s`` the run records the offered and answered rates, p50
and p99 latency over the window, the service's RSS and Redis's (``used_memory_rss``). At the end:

- the applied counter (``lstm_readings_total{outcome="applied"}``) equals the client's
  acknowledged new readings, and equals the events the streams' logs hold (their
  ``entries-added``, which counts events; the logs are sized to keep every event of the run),
- a PNG of the time series (``--plot``, matplotlib: the ``bench`` extra),
- a JSON summary on stdout.

    python bench/bench_soak.py --minutes 30 --plot bench/results/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import harness
from bench_service import SINGLE_SCRIPT

STREAM_PREFIX = "soak-"


@dataclass
class Stream:
    name: str
    seq: int = 0  # the last acknowledged seq
    last_body: dict[str, Any] | None = None  # the last acknowledged single-reading request
    busy: bool = False


@dataclass
class Tally:
    acknowledged: int = 0  # new readings answered 200 (not duplicates)
    duplicates: int = 0  # readings a retry got back as duplicates
    deletes: int = 0
    resent: int = 0  # requests sent again after an error answer or a connection failure
    errors: dict[str, int] = field(default_factory=dict)
    events_received: int = 0  # predictions (and `streams` notices) the subscribers got
    sse_kinds: dict[str, int] = field(default_factory=dict)  # why the service ended them


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    offered: int = 0  # readings the client started sending
    readings: int = 0  # readings answered (new or duplicate)
    answered: int = 0  # requests answered


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (the supervisor's workers), in KiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        pids += [int(p) for p in children.stdout.split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Soak:
    def __init__(self, args: argparse.Namespace, base: str, rate: float) -> None:
        self.args = args
        self.base = base
        self.rate = rate
        self.streams = [Stream(f"{STREAM_PREFIX}{i}") for i in range(args.streams)]
        self.tally = Tally()
        self.window = Window()
        self.rng = random.Random(17)
        self.stopping = False

    async def _send(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, bool]:
        """One request, sent again (the same body) until it is answered 200, 204 or 404; also
        whether it was sent more than once (a resent reading may come back as a duplicate of
        its own first sending, whose answer was lost)."""
        delay = 0.05
        resent = False
        while True:
            started = time.perf_counter()
            try:
                async with session.request(method, self.base + path, json=body) as answer:
                    data = await answer.json() if answer.status in (200, 409) else None
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, data = -1, type(exc).__name__
            self.window.latencies.append(time.perf_counter() - started)
            self.window.answered += 1
            if status in (200, 204, 404):
                return status, data, resent
            key = str(status if status != -1 else data)
            self.tally.errors[key] = self.tally.errors.get(key, 0) + 1
            self.tally.resent += 1
            resent = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _free_streams(self, count: int) -> list[Stream]:
        picked: list[Stream] = []
        for _ in range(count * 4):
            stream = self.streams[self.rng.randrange(len(self.streams))]
            if not stream.busy and stream not in picked:
                picked.append(stream)
                if len(picked) == count:
                    break
        return picked

    def _readings_of(self, roll: float) -> int:
        """What an operation of this roll offers, in readings (a delete counts as one)."""
        return self.args.bulk_streams if 0.02 <= roll < 0.10 else 1

    async def _one(self, session: aiohttp.ClientSession, roll: float) -> None:
        if roll < 0.02:
            (stream,) = self._free_streams(1) or [None]
            if stream is None:
                return
            stream.busy = True
            try:
                await self._send(session, "DELETE", f"/v1/streams/{stream.name}")
                self.tally.deletes += 1
                stream.last_body = None  # a retry after a delete would start a new stream
            finally:
                stream.busy = False
        elif roll < 0.10:
            streams = self._free_streams(self.args.bulk_streams)
            for stream in streams:
                stream.busy = True
            try:
                items = [
                    {"stream": s.name, "values": [round(20 + 8 * self.rng.random(), 3)],
                     "seq": s.seq + 1}
                    for s in streams
                ]  # fmt: skip
                _, data, resent = await self._send(
                    session, "POST", "/v1/readings", {"readings": items}
                )
                for stream, result in zip(streams, data["results"], strict=True):
                    if "error" in result:
                        self.tally.errors[result["error"]["code"]] = (
                            self.tally.errors.get(result["error"]["code"], 0) + 1
                        )
                        continue
                    self.window.readings += 1
                    if result.get("duplicate") and not resent:
                        self.tally.duplicates += 1
                    else:
                        self.tally.acknowledged += 1
                    stream.seq += 1
                    stream.last_body = None
            finally:
                for stream in streams:
                    stream.busy = False
        else:
            (stream,) = self._free_streams(1) or [None]
            if stream is None:
                return
            stream.busy = True
            try:
                retry = roll < 0.20 and stream.last_body is not None
                if retry:
                    body = stream.last_body
                else:
                    body = {"values": [round(20 + 8 * self.rng.random(), 3)], "seq": stream.seq + 1}
                _, data, resent = await self._send(
                    session, "POST", f"/v1/streams/{stream.name}/readings", body
                )
                self.window.readings += 1
                if data.get("duplicate") and not (resent and not retry):
                    self.tally.duplicates += 1
                    if not retry:
                        raise AssertionError(f"a new reading answered as a duplicate: {data}")
                else:
                    if retry:
                        raise AssertionError(f"a retry was applied again: {data}")
                    self.tally.acknowledged += 1
                    stream.seq += 1
                    stream.last_body = body
            finally:
                stream.busy = False

    async def _subscriber(self, session: aiohttp.ClientSession, prefix: str) -> None:
        """Follow the streams of ``prefix`` over the multi-stream SSE route, resuming after the
        last cursor whenever the service ends the connection (a subscriber that falls behind
        is cut off and resumes, as a real client does)."""
        url = f"{self.base}/v1/events?prefix={prefix}"
        cursor: str | None = None
        while not self.stopping:
            headers = {"Last-Event-ID": cursor} if cursor else {}
            closed = False
            try:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
                ) as answer:
                    async for line in answer.content:
                        if line.startswith(b"id:"):
                            cursor = line[3:].strip().decode()
                        elif line.startswith(b"event:"):
                            closed = line.strip() == b"event: closed"
                        elif line.startswith(b"data:"):
                            if closed:
                                code = json.loads(line[5:])["code"]
                                self.tally.sse_kinds[code] = self.tally.sse_kinds.get(code, 0) + 1
                            else:
                                self.tally.events_received += 1
                        if self.stopping:
                            return
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)

    async def run(self, pid: int, redis: harness.RedisProcess) -> list[dict[str, Any]]:
        series: list[dict[str, Any]] = []
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # each follows the streams of one leading digit: about a ninth of the load
            subscribers = [
                asyncio.create_task(self._subscriber(session, f"{STREAM_PREFIX}{k % 9 + 1}"))
                for k in range(self.args.subscribers)
            ]
            in_flight: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            end = started + self.args.minutes * 60
            next_window = started + self.args.window_s
            sent = 0
            while (now := time.monotonic()) < end:
                due = (now - started) * self.rate  # readings
                while sent < due and len(in_flight) < self.args.concurrency:
                    roll = self.rng.random()
                    task = asyncio.create_task(self._one(session, roll))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    sent += self._readings_of(roll)
                    self.window.offered += self._readings_of(roll)
                if now >= next_window:
                    series.append(self._close_window(now - started, pid, redis))
                    next_window += self.args.window_s
                await asyncio.sleep(0.002)
            await asyncio.gather(*in_flight)
            series.append(self._close_window(time.monotonic() - started, pid, redis))
            await asyncio.sleep(2)  # the last events reach the subscribers
            self.stopping = True
            for task in subscribers:
                task.cancel()
            await asyncio.gather(*subscribers, return_exceptions=True)
        return series

    def _close_window(self, at_s: float, pid: int, redis: harness.RedisProcess) -> dict[str, Any]:
        window, self.window = self.window, Window()
        lat = sorted(window.latencies)

        def pct(p: float) -> float:
            return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else 0.0

        row = {
            "t_s": round(at_s, 1),
            "offered_readings_per_s": round(window.offered / self.args.window_s, 1),
            "answered_readings_per_s": round(window.readings / self.args.window_s, 1),
            "answered_requests_per_s": round(window.answered / self.args.window_s, 1),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "service_rss_mb": round(_rss_kb(pid) / 1024, 1),
            "redis_rss_mb": round(int(redis.client().info("memory")["used_memory_rss"]) / 2**20, 1),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row


def _log_events(redis: harness.RedisProcess) -> int:
    """Events the soak streams' logs hold: each log's entries-added counts its events."""
    client = redis.client()
    total = 0
    for key in client.scan_iter(match=f"lstm:{{elnino:{STREAM_PREFIX}*}}:events", count=1000):
        info = client.xinfo_stream(key)
        total += int(info["entries-added"])
    return total


def _plot(series: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["t_s"] / 60 for row in series]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    axes[0].plot(minutes, [r["offered_readings_per_s"] for r in series], label="offered readings/s")
    axes[0].plot(
        minutes, [r["answered_readings_per_s"] for r in series], label="answered readings/s"
    )
    axes[0].plot(
        minutes, [r["answered_requests_per_s"] for r in series], label="answered requests/s"
    )
    axes[0].set_ylabel("per second")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(loc="lower right")
    axes[1].plot(minutes, [r["p99_ms"] for r in series], label="p99")
    axes[1].plot(minutes, [r["p50_ms"] for r in series], label="p50")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper right")
    axes[2].plot(minutes, [r["service_rss_mb"] for r in series], label="service RSS")
    axes[2].plot(minutes, [r["redis_rss_mb"] for r in series], label="Redis RSS")
    axes[2].set_ylabel("MiB")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--load", type=float, default=0.7, help="share of the measured rate")
    parser.add_argument("--probe-s", type=int, default=10, help="the single c=64 measurement")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--bulk-streams", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--window-s", type=float, default=10)
    parser.add_argument("--plot", type=Path, help="write the time series as a PNG here")
    parser.add_argument("--service-arg", action="append", default=[], help="an extra flag")
    args = parser.parse_args()
    harness.require("wrk", "redis-server")
    with harness.scratch("bench-soak-") as work, harness.redis_server(work) as redis:
        redis.client().config_set("appendonly", "yes")
        port = harness.free_port()
        argv = [
            *harness.service_argv(1),
            "--port", str(port),
            # every event of the run stays in its stream's log, to be counted at the end
            "--events-max-len", "100000", "--events-max-age-s", "0",
            "--subscription-max-streams", str(args.streams),
            *args.service_arg,
        ]  # fmt: skip
        log = (work / "service.log").open("wb")
        env = {**os.environ, "REDIS_URL": redis.url}
        service = subprocess.Popen(argv, env=env, cwd=harness.ROOT, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            harness.wait_http(base + "/readyz")
            probe = harness.run_wrk(
                SINGLE_SCRIPT % 1000, base, work, concurrency=64, duration_s=args.probe_s
            )
            measured = probe.per_s
            rate = args.load * measured
            print(f"single c=64: {measured:.0f} req/s; offering {rate:.0f} readings/s of mixed "
                  f"load for {args.minutes:g} min", file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(2)  # the probe's last requests are answered before counting starts
            applied_before = harness.applied_steps(base)
            soak = Soak(args, base, rate)
            import uvloop

            series = uvloop.run(soak.run(service.pid, redis))
            applied = harness.applied_steps(base) - applied_before
            events = _log_events(redis)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=90)
            log.close()
    tally = soak.tally
    p99s = [row["p99_ms"] for row in series]
    summary = {
        "minutes": args.minutes,
        "single_c64_per_s": round(measured),
        "offered_readings_per_s": round(rate),
        "answered_readings_per_s_median_window": round(
            statistics.median(row["answered_readings_per_s"] for row in series)
        ),
        "acknowledged_new_readings": tally.acknowledged,
        "applied_counter": applied,
        "log_events": events,
        "accounted": tally.acknowledged == applied == events,
        "duplicates_answered": tally.duplicates,
        "deletes": tally.deletes,
        "resent_after_error": tally.resent,
        "errors": tally.errors,
        "events_received_by_subscribers": tally.events_received,
        "subscribers_closed_by_code": tally.sse_kinds,
        "p99_ms_median_window": round(statistics.median(p99s), 2),
        "p99_ms_worst_window": max(p99s),
        "service_rss_mb_first_last": [series[0]["service_rss_mb"], series[-1]["service_rss_mb"]],
        "redis_rss_mb_first_last": [series[0]["redis_rss_mb"], series[-1]["redis_rss_mb"]],
    }
    if args.plot:
        _plot(series, args.plot, f"soak: {args.minutes:g} min, {rate:.0f} readings/s offered")
    print(json.dumps(summary))
    return 0 if summary["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
