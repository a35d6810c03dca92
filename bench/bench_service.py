"""Single-reading POSTs against the running service, driven by wrk.

Starts a private redis-server and ``python -m service`` (the bundled demo model, 2 x 64 LSTM),
then runs wrk (Debian package ``wrk``) with a Lua script that posts one reading per request to
``--streams`` streams in rotation, server-assigned seqs. Every request is a full step: Redis read,
inference, compare-and-set write. Prints requests/s, latency percentiles and how many answers were
not 200, and checks afterwards that Redis holds exactly as many applied steps as wrk counted.

    python bench/bench_service.py --concurrency 64 --duration 20

wrk and the service share the machine with Redis; compare figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent

WRK_SCRIPT = """
local streams = {streams}
local counter = 0
local thread_id = 0
local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

function request()
  counter = counter + 1
  local stream = "bench-" .. thread_id .. "-" .. (counter % streams)
  local body = string.format('{{"values": [%.3f]}}', 20 + 8 * math.random())
  return wrk.format("POST", "/v1/streams/" .. stream .. "/readings",
                    {{["Content-Type"] = "application/json"}}, body)
end

local non200 = 0
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors_status=%d errors_socket=%d duration_us=%d\\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration))
  for _, p in pairs({{50, 90, 99, 99.9}}) do
    io.write(string.format("LATENCY p%s=%d\\n", p, latency:percentile(p)))
  end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before measuring")
    parser.add_argument("--streams", type=int, default=1000, help="streams per wrk thread")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    redis_port, http_port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(work),
         "--save", "", "--appendonly", "no", "--logfile", "redis.log"],
    )  # fmt: skip
    service = None
    try:
        time.sleep(0.3)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        service = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(http_port)],
            env=env,
            cwd=ROOT,
            stdout=(work / "service.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{http_port}"
        wait_http(base + "/readyz")
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT.format(streams=args.streams))
        wrk = [
            "wrk", "-t", str(args.threads), "-c", str(args.concurrency), "-s", str(script), base,
        ]  # fmt: skip
        if args.warmup:
            subprocess.run([*wrk[:1], "-d", f"{args.warmup}s", *wrk[1:]], capture_output=True)
            time.sleep(1)  # let the warm-up's last requests finish before counting
        applied_before = _applied(base)
        out = subprocess.run(
            [*wrk[:1], "-d", f"{args.duration}s", *wrk[1:]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        time.sleep(1)
        applied = _applied(base) - applied_before
        result = dict(re.findall(r"(\w+)=(\d+)", out.split("RESULT", 1)[1]))
        latency = dict(re.findall(r"LATENCY p([\d.]+)=(\d+)", out))
        requests = int(result["requests"])
        seconds = int(result["duration_us"]) / 1e6
        keys = redis.Redis(port=redis_port).dbsize()
        report = {
            "concurrency": args.concurrency,
            "requests_per_s": round(requests / seconds),
            "p50_ms": int(latency["50"]) / 1000,
            "p90_ms": int(latency["90"]) / 1000,
            "p99_ms": int(latency["99"]) / 1000,
            "p99.9_ms": int(latency["99.9"]) / 1000,
            "non_200": int(result["errors_status"]),
            "socket_errors": int(result["errors_socket"]),
            "steps_applied": applied,
            "requests": requests,
            "streams_in_redis": keys,
        }
        print(json.dumps(report))
        # Every answered request is one applied step (wrk stops mid-flight requests at the end,
        # which may still be applied, hence at most `concurrency` more).
        if not 0 <= applied - requests <= args.concurrency:
            print(f"steps applied ({applied}) do not match requests ({requests})", file=sys.stderr)
            return 1
        return 0
    finally:
        if service is not None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def _applied(base: str) -> int:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(r'^lstm_readings_total\{outcome="applied"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


if __name__ == "__main__":
    sys.exit(main())
