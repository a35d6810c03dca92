"""The service's KServe v2 front end against NVIDIA Triton, both driven by Triton's perf_analyzer.

The peer is a Triton 2.51 server that already serves the same weights as a sequence model
(``--peer-url HOST:PORT``, ``--peer-model``); it keeps each sequence's state in memory only. This
script exports those weights (``--weights``, a .npz with PyTorch names) with the project's own
exporter, serves the export with the service and a private redis-server (every step's state
persisted in Redis), checks that both answer the same numbers, and then runs perf_analyzer in
sequence mode against each in turn, round by round, with one input-data file, one concurrency
and one perf_analyzer:

    python bench/bench_triton.py --weights weights.npz --peer-url HOST:PORT \\
        --peer-model lstm_seq --concurrency 16 --rounds 3

Input data: NOAA's monthly Niño 1+2 sea surface temperature, 1950-2010 (the series the demo
model was trained on, read from the statsmodels package), standardised with the demo model's
input scaling, because the exported weights carry no scaling of their own: ``--streams``
windows of ``--steps`` consecutive months, one step per request.

After every service round the script checks that each inference perf_analyzer got an answer
for was applied and persisted: the POSTs the service answered 200, its v2 ``inference_count``,
its applied-readings counter and the events the round's writes put in the streams' event logs in
Redis (written in the same script as the state; one log entry per write, so it counts the events
the entries hold, not the XADDs) must all agree, with no failed, refused or retried reading.

Needs the ``dev`` extra (statsmodels, for the data), ``redis-server`` on PATH, and perf_analyzer
2.51 in a virtualenv of its own (bench/requirements-perf.txt: it pins numpy<2), by default
``.perf-venv`` at the top of the repository, with Debian's ``libb64-0d``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import RedisProcess

from service.step.events import log_events, parse_event_id
from service.step.state_store import LogChunk

MODEL = "lstm_seq"  # the name our export is served under (the peer's is --peer-model)
# perf_analyzer run k (warm-ups included) gets sequence ids of its own, from (k + 1) * ID_SPAN
# up, so that no run touches a sequence another run left open on either server; ids below
# ID_SPAN are the agreement check's.
ID_SPAN = 1_000_000
TARGET_THROUGHPUT_RATIO = 1.5  # the service's inferences/s over the peer's
AGREEMENT_STEPS = 20
AGREEMENT_TOLERANCE = 1e-4  # what the exporter itself allows for an unscaled output
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class BenchError(Exception):
    """A failed run or check; main prints it with the end of the service's log."""


# ---------------------------------------------------------------------------------------------
# Inputs: the model directory and perf_analyzer's input data


def export_model(weights: Path, work: Path) -> Path:
    """The project's exporter on ``weights``: the model directory the service will serve (the
    exporter verifies it against a float64 reference, and against torch where installed)."""
    out = work / MODEL
    done = subprocess.run(
        [sys.executable, "-m", "model_export", str(weights), "--out", str(out), "--name", MODEL],
        capture_output=True, text=True, cwd=harness.ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"lstm-export failed:\n{done.stdout}{done.stderr}")
    return out


def sst_series() -> list[float]:
    """The monthly sea surface temperatures, standardised with the demo model's input scaling.

    Read from the file inside statsmodels without importing statsmodels (which pulls in pandas
    and scipy for nothing here)."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the input data comes from statsmodels: pip install -e '.[train]'")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "elnino" / "elnino.csv"
    scaling = json.loads(
        (harness.ROOT / "model_export" / "demo_weights" / "elnino.scaling.json").read_text()
    )
    mean, std = float(scaling["input_mean"][0]), float(scaling["input_std"][0])
    with path.open(newline="") as f:
        return [(float(row[m]) - mean) / std for row in csv.DictReader(f) for m in MONTHS]


def write_input_data(path: Path, series: list[float], streams: int, steps: int) -> list[float]:
    """perf_analyzer's ``--input-data``: ``streams`` windows of ``steps`` consecutive months,
    spread evenly over the series; one ``x`` of shape [1, 1] per request (perf_analyzer adds the
    batch dimension of 1: [1, 1, 1] on the wire). Returns the first stream's values."""
    if steps > len(series):
        raise BenchError(f"--steps {steps}: the series has {len(series)} months")
    room = len(series) - steps
    windows = []
    for i in range(streams):
        start = round(i * room / max(1, streams - 1))
        windows.append([round(v, 6) for v in series[start : start + steps]])
    data = [[{"x": {"content": [v], "shape": [1, 1]}} for v in window] for window in windows]
    path.write_text(json.dumps({"data": data}))
    return windows[0]


# ---------------------------------------------------------------------------------------------
# perf_analyzer


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: str
    env: dict[str, str]


def find_perf_analyzer(given: Path | None) -> PerfAnalyzer:
    """perf_analyzer 2.51 (from tritonclient 2.51.0's wheel, in the virtualenv of
    bench/requirements-perf.txt: ``--perf-analyzer``, else ``.perf-venv`` at the top of the
    repository, else this environment or PATH), with the CUDA runtime library of its virtualenv
    on its library path: it loads that library at start even on a CPU-only machine."""
    found = shutil.which("perf_analyzer")
    candidates = [given] if given else [
        harness.ROOT / ".perf-venv" / "bin" / "perf_analyzer",
        Path(sys.executable).parent / "perf_analyzer",
        Path(found) if found else None,
    ]  # fmt: skip
    binary = next((c for c in candidates if c is not None and c.is_file()), None)
    if binary is None:
        raise BenchError(
            "no perf_analyzer: python3 -m venv .perf-venv && "
            ".perf-venv/bin/pip install -r bench/requirements-perf.txt (or --perf-analyzer PATH)"
        )
    env = dict(os.environ)
    libs = [str(p) for p in binary.parent.parent.glob("lib/python*/site-packages/nvidia/*/lib")]
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise BenchError(
            f"{binary} does not start (it needs the nvidia-cuda-runtime-cu12 wheel in its "
            f"virtualenv and Debian's libb64-0d):\n{done.stdout}{done.stderr}"
        )
    return PerfAnalyzer(str(binary), env)


@dataclass(frozen=True)
class PerfResult:
    per_s: float
    latency_ms: dict[str, float]  # "50", "90", "95", "99"
    # Requests perf_analyzer counted in its measurement windows (it prints no total for the run).
    measured_requests: int


class UnstableError(BenchError):
    """perf_analyzer found no stable window: no figures, but nothing failed."""


def run_perf(
    pa: PerfAnalyzer,
    args: argparse.Namespace,
    work: Path,
    host_port: str,
    model: str,
    run_index: int,
    measurement_ms: int,
    max_trials: int,
) -> PerfResult:
    first = (run_index + 1) * ID_SPAN
    out = work / f"perf-{run_index}.csv"
    argv = [
        pa.binary, "-m", model, "-x", "1", "-u", host_port, "-i", "http",
        "--input-data", str(work / "input_data.json"),
        "--sequence-id-range", f"{first}:{first + ID_SPAN - 1}",
        "-p", str(measurement_ms), "--max-trials", str(max_trials),
        "-s", str(args.stability_percent),
        "--concurrency-range", f"{args.concurrency}:{args.concurrency}", "-f", str(out),
    ]  # fmt: skip
    # A stable measurement needs at most max_trials windows; the rest is start-up and slack.
    timeout = max_trials * measurement_ms / 1000 * 2 + 120
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=pa.env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"perf_analyzer against {host_port} ran over {timeout:.0f} s") from e
    text = done.stdout + done.stderr
    # perf_analyzer exits 0 only when every request succeeded; a failed request prints "Thread
    # [n] had error: ..." (or "Failed to ...") and ends the run, which is reported verbatim.
    errors = [line for line in text.splitlines() if re.search(r"error|fail", line, re.I)]
    if "Failed to obtain stable measurement" in text and done.returncode == 2:
        raise UnstableError(
            f"perf_analyzer against {host_port}: no stable measurement in {max_trials} windows of "
            f"{measurement_ms} ms (raise --measurement-ms)"
        )
    if done.returncode != 0 or errors:
        raise BenchError(
            f"perf_analyzer against {host_port} exited {done.returncode}\n"
            f"command: {' '.join(argv)}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    with out.open(newline="") as f:
        row = next(csv.DictReader(f))
    counted = re.search(r"Client:\s*\n\s*Request count: (\d+)", done.stdout)
    return PerfResult(
        per_s=float(row["Inferences/Second"]),
        latency_ms={p: int(row[f"p{p} latency"]) / 1000 for p in ("50", "90", "95", "99")},
        measured_requests=int(counted.group(1)) if counted else 0,
    )


# ---------------------------------------------------------------------------------------------
# What the servers counted


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def v2_stats(base: str, model: str) -> dict[str, int]:
    """The model's Triton statistics: inference_count and the success and fail counts."""
    body = _get_json(f"{base}/v2/models/{model}/versions/1/stats")
    assert isinstance(body, dict)
    stats = body["model_stats"][0]
    return {
        "inference_count": int(stats["inference_count"]),
        "success": int(stats["inference_stats"]["success"]["count"]),
        "fail": int(stats["inference_stats"]["fail"]["count"]),
    }


@dataclass(frozen=True)
class ServiceCounts:
    readings: Counter[str]  # lstm_readings_total by outcome
    posts: Counter[str]  # POSTs answered, by status, every route (perf_analyzer only POSTs infer)
    stats: dict[str, int]

    @classmethod
    def read(cls, base: str) -> ServiceCounts:
        readings: Counter[str] = Counter()
        for labels, value in harness.metric_samples(base, "lstm_readings_total"):
            readings[labels.get("outcome", "")] += int(value)
        posts: Counter[str] = Counter()
        name = "lstm_http_request_duration_seconds_count"
        for labels, value in harness.metric_samples(base, name):
            if labels.get("method") == "POST":
                posts[labels.get("status", "")] += int(value)
        return cls(readings, posts, v2_stats(base, MODEL))


def events_in_redis(redis: RedisProcess, since_ms: int) -> int:
    """The events committed since ``since_ms`` (Unix ms) in every event log of MODEL in Redis:
    those the logs hold (each entry expanded into its events, both entry forms), plus those a
    trim removed from a generation the round wrote. The service numbers a sequence's steps from
    1 (perf_analyzer sends no ``seq``) and every run has streams of its own, so a log whose
    max-deleted id is in the generation of its oldest event held lost exactly that many of it."""
    client = redis.client()
    total = 0
    for key in client.scan_iter(match=f"*{{{MODEL}:*}}:events", count=1000):
        info = client.xinfo_stream(key)
        deleted = info["max-deleted-entry-id"].decode()
        entries = [
            (entry_id.decode(), fields)
            for entry_id, fields in client.xrange(key, "-", "+")
            if int(fields[b"t"]) >= since_ms  # the commit time, in both entry forms
        ]
        chunk = LogChunk(True, info["last-generated-id"].decode(), deleted, entries)
        events = log_events(MODEL, "", chunk, None)
        total += len(events)
        generation, seq = parse_event_id(deleted, "max-deleted-entry-id")
        if events and events[0].id[0] == generation:
            total += seq
    return total


def check_persisted(
    base: str, before: ServiceCounts, redis: RedisProcess, perf: PerfResult, since_ms: int
) -> tuple[int, float]:
    """Every request perf_analyzer sent was answered 200 (it exits non-zero otherwise), applied
    once and written to Redis: the counters must agree exactly. Returns the applied steps and
    Redis's own microseconds over the run."""
    time.sleep(1)  # nothing should be in flight once perf_analyzer exits; be sure
    busy = redis.busy_us()  # before the counting below reads the logs
    after = ServiceCounts.read(base)
    readings = after.readings - before.readings
    posts = after.posts - before.posts
    stats = {k: after.stats[k] - before.stats[k] for k in after.stats}
    applied = readings["applied"]
    counts = {
        "POSTs answered 200": posts["200"],
        "v2 inference_count": stats["inference_count"],
        "v2 successes": stats["success"],
        "readings applied": applied,
        "events in the logs in Redis": events_in_redis(redis, since_ms),
    }
    problems = []
    if len(set(counts.values())) != 1:
        problems.append("counts differ: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if refused := {s: n for s, n in posts.items() if s != "200" and n}:
        problems.append(f"POSTs answered otherwise: {refused}")
    if others := {o: n for o, n in readings.items() if o != "applied" and n}:
        problems.append(f"readings not applied: {others}")
    if stats["fail"]:
        problems.append(f"v2 failed inferences: {stats['fail']:,}")
    if perf.measured_requests > applied:
        problems.append(
            f"perf_analyzer counted {perf.measured_requests:,} requests, the service applied "
            f"{applied:,}"
        )
    if problems:
        raise BenchError("the service's counts after a round:\n  " + "\n  ".join(problems))
    print(f"all {applied:,} steps persisted ({' = '.join(counts)})", file=sys.stderr, flush=True)
    return applied, busy


# ---------------------------------------------------------------------------------------------
# Do both servers compute the same numbers?


def infer_step(
    base: str, model: str, sequence_id: int, value: float, start: bool, end: bool
) -> float:
    body = {
        "parameters": {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 1], "data": [value]}],
    }
    request = urllib.request.Request(
        f"{base}/v2/models/{model}/versions/1/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            reply = json.loads(answer.read())
    except urllib.error.HTTPError as e:
        raise BenchError(
            f"POST {request.full_url} {json.dumps(body)}: {e.code} {e.read().decode()[:500]}"
        ) from e
    return float(reply["outputs"][0]["data"][0])


def check_agreement(peer: str, peer_model: str, service: str, values: list[float]) -> float:
    """One sequence of ``values`` through both servers, one step per request as perf_analyzer
    sends them: the outputs must match within the exporter's tolerance, or the comparison would
    not be between the same model. Returns the largest difference."""
    worst = 0.0
    for i, value in enumerate(values):
        first, last = i == 0, i == len(values) - 1
        ours = infer_step(service, MODEL, 1, value, first, last)
        theirs = infer_step(peer, peer_model, 1, value, first, last)
        worst = max(worst, abs(ours - theirs))
        if abs(ours - theirs) > AGREEMENT_TOLERANCE:
            raise BenchError(
                f"step {i + 1}: the service answers {ours!r}, the peer {theirs!r}: "
                "--weights is not what the peer serves"
            )
    return worst


# ---------------------------------------------------------------------------------------------
# The rounds


@dataclass
class Round:
    server: str
    perf: PerfResult
    inferences: int  # over the whole run, as the server counted them
    redis_us: float | None = None


def _service_round(
    name: str, service: str, redis: RedisProcess, measure: Callable[[], PerfResult]
) -> Round:
    before = ServiceCounts.read(service)
    redis.reset_stats()
    since_ms = int(time.time() * 1000)
    perf = measure()
    applied, busy = check_persisted(service, before, redis, perf, since_ms)
    return Round(name, perf, applied, busy / max(1, applied))


def _peer_round(name: str, base: str, model: str, measure: Callable[[], PerfResult]) -> Round:
    before = v2_stats(base, model)
    perf = measure()
    time.sleep(1)  # as for the service: the counts settle before they are read
    after = v2_stats(base, model)
    if after["fail"] > before["fail"]:
        raise BenchError(f"the peer counted {after['fail'] - before['fail']} failed inferences")
    return Round(name, perf, after["inference_count"] - before["inference_count"])


FLOOR = "aiohttp no-op floor"


def _floor_round(name: str, measure: Callable[[], PerfResult]) -> Round:
    perf = measure()
    return Round(name, perf, perf.measured_requests)


def bench(args: argparse.Namespace, work: Path, pa: PerfAnalyzer) -> list[tuple[int, Round]]:
    model_dir = export_model(args.weights, work)
    first_stream = write_input_data(
        work / "input_data.json", sst_series(), args.streams, args.steps
    )
    peer = f"http://{args.peer_url}"
    argv = harness.service_argv(args.workers, "--model", str(model_dir), *args.service_arg)
    rounds: list[tuple[int, Round]] = []
    runs = 0
    floor_argv = [sys.executable, str(Path(__file__).with_name("noop_server.py"))]
    floor_argv += ["--workers", str(args.workers)]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(harness.redis_server(work))
        service = stack.enter_context(
            harness.http_process(argv, work, "service", {"REDIS_URL": redis.url})
        )
        floor = stack.enter_context(harness.http_process(floor_argv, work, "floor"))
        worst = check_agreement(peer, args.peer_model, service, first_stream[:AGREEMENT_STEPS])
        print(f"same outputs from both over {AGREEMENT_STEPS} steps (largest difference "
              f"{worst:.1e})", file=sys.stderr, flush=True)  # fmt: skip
        targets = {
            "Triton peer": (args.peer_url, args.peer_model, peer),
            "lstm-serve": (service.removeprefix("http://"), MODEL, service),
        }
        if args.floor:
            targets[FLOOR] = (floor.removeprefix("http://"), MODEL, floor)
        # Unmeasured: connections, the service's first streams in Redis, the peer's sequence
        # slots. A warm-up that never stabilises is fine; one whose requests fail is not.
        for host_port, model, _ in targets.values():
            with contextlib.suppress(UnstableError):
                run_perf(pa, args, work, host_port, model, runs, args.measurement_ms // 2, 3)
            runs += 1
        time.sleep(1)
        for r in range(1, args.rounds + 1):
            # Alternate which server goes first, so neither always gets the quieter slot.
            order = list(targets) if r % 2 else list(reversed(targets))
            for name in order:
                host_port, model, base = targets[name]
                measure = functools.partial(
                    run_perf, pa, args, work, host_port, model, runs,
                    args.measurement_ms, args.max_trials,
                )  # fmt: skip
                runs += 1
                if base == service:
                    result = _service_round(name, service, redis, measure)
                elif base == floor:
                    result = _floor_round(name, measure)
                else:
                    result = _peer_round(name, base, model, measure)
                rounds.append((r, result))
                p99 = result.perf.latency_ms["99"]
                print(f"round {r}, {name}: {result.perf.per_s:,.0f} inferences/s, p99 {p99:.2f} ms",
                      file=sys.stderr, flush=True)  # fmt: skip
    return rounds


def report(args: argparse.Namespace, rounds: list[tuple[int, Round]]) -> None:
    rows: list[dict[str, object]] = []
    for r, one in rounds:
        rows.append({
            "round": r,
            "server": one.server,
            "inferences/s": round(one.perf.per_s),
            "p50 ms": one.perf.latency_ms["50"],
            "p90 ms": one.perf.latency_ms["90"],
            "p99 ms": one.perf.latency_ms["99"],
            "inferences in the run": one.inferences,
            "Redis µs/inference": "—" if one.redis_us is None else round(one.redis_us, 1),
        })  # fmt: skip
    print(harness.markdown_table(rows))
    print()

    def median(server: str, pick: str) -> float:
        values = [
            one.perf.per_s if pick == "per_s" else one.perf.latency_ms[pick]
            for _, one in rounds
            if one.server == server
        ]
        return statistics.median(values)

    peer_rate, ours_rate = median("Triton peer", "per_s"), median("lstm-serve", "per_s")
    peer_p99, ours_p99 = median("Triton peer", "99"), median("lstm-serve", "99")
    redis_us = statistics.median(one.redis_us for _, one in rounds if one.redis_us is not None)
    rate_ratio, p99_ratio = ours_rate / peer_rate, ours_p99 / peer_p99
    met = rate_ratio >= TARGET_THROUGHPUT_RATIO and ours_p99 <= peer_p99
    print(harness.markdown_table([{
        "concurrency": args.concurrency,
        "workers": args.workers,
        "peer inferences/s": round(peer_rate),
        "service inferences/s": round(ours_rate),
        "throughput ratio": round(rate_ratio, 2),
        "peer p50 ms": median("Triton peer", "50"),
        "service p50 ms": median("lstm-serve", "50"),
        "peer p99 ms": peer_p99,
        "service p99 ms": ours_p99,
        "p99 ratio": round(p99_ratio, 2),
        "Redis µs/inference": round(redis_us, 1),
        "target met": met,
    }]))  # fmt: skip
    print()
    rate_met = "met" if rate_ratio >= TARGET_THROUGHPUT_RATIO else "missed"
    p99_met = "met" if ours_p99 <= peer_p99 else "missed"
    if args.floor:
        floor_rate, floor_p99 = median(FLOOR, "per_s"), median(FLOOR, "99")
        print(f"The no-op floor (bench/noop_server.py: aiohttp answering without work, "
              f"{args.workers} worker(s)): {floor_rate:,.0f} inferences/s, p99 {floor_p99:.2f} ms; "
              f"the peer is at {peer_rate / floor_rate:.2f}× of it, the service at "
              f"{ours_rate / floor_rate:.2f}×.")  # fmt: skip
    print(f"Medians of {args.rounds} rounds. Target: the service at ≥ {TARGET_THROUGHPUT_RATIO}× "
          f"the peer's inferences/s ({rate_ratio:.2f}×: {rate_met}) with a p99 no higher than "
          f"the peer's ({p99_ratio:.2f}×: {p99_met}).")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--weights", type=Path, required=True, help="the peer's weights as .npz with PyTorch names"
    )
    parser.add_argument(
        "--peer-url", required=True, metavar="HOST:PORT", help="the Triton peer's HTTP address"
    )
    parser.add_argument("--peer-model", default="lstm_seq", metavar="NAME")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs of each server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--measurement-ms", type=int, default=5000, help="perf_analyzer's measurement window (-p)"
    )
    parser.add_argument(
        "--max-trials", type=int, default=10, help="windows perf_analyzer may take to stabilise"
    )
    parser.add_argument(
        "--stability-percent",
        type=int,
        default=30,
        help="perf_analyzer's -s: allowed spread of the last three windows",
    )
    parser.add_argument("--streams", type=int, default=64, help="sequences in the input data")
    parser.add_argument("--steps", type=int, default=100, help="steps per sequence")
    parser.add_argument(
        "--perf-analyzer",
        type=Path,
        metavar="PATH",
        help="perf_analyzer 2.51 (default: .perf-venv/bin/perf_analyzer)",
    )
    parser.add_argument("--workers", type=int, default=1, help="the service's --workers")
    parser.add_argument(
        "--service-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more service flag, repeatable: --service-arg=--access-log=on",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also drive bench/noop_server.py (aiohttp answering without work, same workers): "
        "what any aiohttp server reaches here under perf_analyzer",
    )
    args = parser.parse_args()  # fmt: skip
    harness.require("redis-server")
    with harness.scratch("bench-triton-") as work:
        try:
            rounds = bench(args, work, find_perf_analyzer(args.perf_analyzer))
        except (BenchError, RuntimeError) as e:  # RuntimeError: the service never got ready
            log = work / "service.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-40:]
                print("the service's log, last lines:\n" + "\n".join(tail), file=sys.stderr)
            print(e, file=sys.stderr)
            return 1
    report(args, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
