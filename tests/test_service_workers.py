"""``--workers N``: several processes on one port, any of them serving any stream, metrics summed
over all of them whichever one a scrape reaches, dead workers restarted, the supervisor cleaning
up after itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from service_harness import (
    ROOT,
    RedisServer,
    ServiceProcess,
    call,
    child_pids,
    free_port,
    json_log_records,
    metric,
    scrape_metrics,
)

POST = "/v1/streams/{stream}/readings"


def _workers_that_answered(service: ServiceProcess) -> set[int]:
    return {
        r["worker"]
        for r in json_log_records(service.log())
        if r["logger"] == "service.access" and r["route"] == POST
    }


def _all_listening(service: ServiceProcess) -> ServiceProcess:
    """Wait for every worker: the harness's start returns as soon as the first one answers."""
    deadline = time.monotonic() + 60
    while "workers serving on" not in service.log():
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    return service


def _worker_pids(service: ServiceProcess) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    assert service.process is not None
    pids = child_pids(service.process.pid)
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _two_workers(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], *args: str
) -> ServiceProcess:
    """Two workers on one Redis, both listening; JSON access records say which one answered."""
    env = {"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "json"}
    return _all_listening(service_factory("--workers", "2", "--access-log", "on", *args, env=env))


def test_two_workers_serve_any_stream_and_metrics_count_every_worker(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    # Without the state cache, every reading goes through exactly one batch, which the counts
    # below rely on; with it, a stream that moves between workers is recomputed (next test).
    service = _two_workers(redis_server, service_factory, "--state-cache-streams", "0")
    url = f"{service.url}/v1/streams/{stream_id}"
    # Every call is a new connection, which the kernel hands to either worker: one stream goes
    # back and forth between them and still counts 1, 2, 3, ...
    applied = 30
    for seq in range(1, applied + 1):
        answer = call("POST", url + "/readings", {"values": [24.0 + seq / 10]})
        assert answer.status == 200, answer.body
        assert answer.body["results"][0]["seq"] == seq
    assert call("GET", url).body["seq"] == applied
    duplicates = 4  # the last request, resent: answered from the stored result
    for _ in range(duplicates):
        again = call("POST", url + "/readings", {"values": [27.0], "seq": applied})
        assert again.status == 200 and again.body["duplicate"] is True
    stale = 3  # seqs applied long ago, whose results are no longer held
    for seq in (1, 2, 3):
        refused = call("POST", url + "/readings", {"values": [27.0], "seq": seq})
        assert refused.status == 409 and refused.body["error"]["code"] == "stale_seq"
    invalid = 2  # refused before queueing: counted by status only
    for _ in range(invalid):
        assert call("POST", url + "/readings", {"values": ["warm"]}).status == 400

    # Both workers served readings, so totals that match the traffic prove the aggregation.
    assert _workers_that_answered(service) == {0, 1}
    for _ in range(6):  # each scrape reaches either worker; every one sees all the traffic
        samples = scrape_metrics(service.url)
        assert metric(samples, "lstm_readings_total", outcome="applied") == applied
        assert metric(samples, "lstm_readings_total", outcome="duplicate") == duplicates
        assert metric(samples, "lstm_readings_total", outcome="stale") == stale
        assert metric(samples, "lstm_readings_total", outcome="rejected") == 0
        assert metric(samples, "lstm_readings_total", outcome="failed") == 0
        route = {"route": "/v1/streams/{stream}/readings", "method": "POST"}
        count = "lstm_http_request_duration_seconds_count"
        assert metric(samples, count, status="200", **route) == applied + duplicates
        assert metric(samples, count, status="409", **route) == stale
        assert metric(samples, count, status="400", **route) == invalid
        # Sub-millisecond buckets exist and are cumulative up to the count.
        bucket = "lstm_http_request_duration_seconds_bucket"
        assert metric(samples, bucket, status="200", le="0.0001", **route) <= applied
        assert metric(samples, bucket, status="200", le="+Inf", **route) == applied + duplicates
        # Every queued reading went through one batch and waited in the queue once.
        queued = applied + duplicates + stale
        assert metric(samples, "lstm_batch_readings_sum") == queued
        assert metric(samples, "lstm_queue_wait_seconds_count") == queued
        assert metric(samples, "lstm_queue_readings") == 0  # nothing waits, in any worker
        assert metric(samples, "lstm_inference_duration_seconds_count", model="elnino") >= 1
        assert metric(samples, "lstm_redis_duration_seconds_count", operation="commit") >= 1
        assert metric(samples, "lstm_cas_conflicts_total") == 0  # one client at a time
        # The served model is 1, not one per worker.
        version = call("GET", service.url + "/v1/models/elnino").body["version"]
        assert metric(samples, "lstm_model_info", model="elnino", version=version) == 1
    # No per-stream labels: the stream id appears nowhere.
    assert not [labels for _, labels in samples if any(stream_id in v for _, v in labels)]


def test_a_stream_moving_between_workers_is_recomputed_from_redis_not_the_cache(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    """With the state cache on, a worker that wrote a stream keeps its record; when the stream's
    next readings went to the other worker, that record is stale. The write planned from it
    fails its compare-and-set, and the stream is read and recomputed: every step is still
    applied once, in order, and the recomputations are counted as stale cache entries, not as
    races between writers."""
    service = _two_workers(redis_server, service_factory)
    url = f"{service.url}/v1/streams/{stream_id}"
    applied = 40
    for seq in range(1, applied + 1):  # a new connection each: either worker answers
        answer = call("POST", url + "/readings", {"values": [24.0 + seq / 10]})
        assert answer.status == 200, answer.body
        assert answer.body["results"][0]["seq"] == seq
    assert call("GET", url).body["seq"] == applied
    assert _workers_that_answered(service) == {0, 1}
    samples = scrape_metrics(service.url)
    assert metric(samples, "lstm_readings_total", outcome="applied") == applied
    assert metric(samples, "lstm_cas_conflicts_total") == 0  # one client at a time
    hits = metric(samples, "lstm_state_cache_total", result="hit")
    stale = metric(samples, "lstm_state_cache_total", result="stale")
    misses = metric(samples, "lstm_state_cache_total", result="miss")
    # The kernel spreads new connections over the workers, so both happen; each stale plan is
    # read afterwards (a miss), and each reading went through one batch plus one per recompute.
    assert stale > 0 and hits > 0
    assert misses >= stale + 1  # the first reading, and each stale plan's second attempt
    assert hits + stale + misses >= applied
    assert metric(samples, "lstm_batch_readings_sum") == applied + stale


def test_a_dead_worker_is_restarted_and_its_counts_are_kept(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = _two_workers(redis_server, service_factory)
    url = f"{service.url}/v1/streams/{stream_id}/readings"
    for seq in range(1, 21):
        assert call("POST", url, {"values": [24.0], "seq": seq}).status == 200
    pids = _worker_pids(service)
    assert len(pids) == 2
    assert metric(scrape_metrics(service.url), "lstm_worker_restarts_total") == 0
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(set(_worker_pids(service)) - set(pids)) < 1:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    restarted = [r for r in json_log_records(service.log()) if "restarting it in" in r["msg"]]
    assert len(restarted) == 1 and f"pid {pids[0]}" in restarted[0]["msg"]
    while call("GET", service.url + "/readyz").status != 200:  # the other worker answers anyway
        time.sleep(0.1)
    for seq in range(21, 41):
        assert call("POST", url, {"values": [24.0], "seq": seq}).status == 200
    # The killed worker's counts stay in the total; its live gauge is gone, not stuck.
    samples = scrape_metrics(service.url)
    assert metric(samples, "lstm_readings_total", outcome="applied") == 40
    assert metric(samples, "lstm_queue_readings") == 0
    # The new worker counts its restart as it starts (maybe after the readings above).
    while metric(samples, "lstm_worker_restarts_total") != 1:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
        samples = scrape_metrics(service.url)
    assert service.stop() == 0


def test_workers_with_a_private_redis_leave_nothing_behind(
    service_factory: Callable[..., ServiceProcess], tmp_path: Path, stream_id: str
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    service = service_factory("--workers", "2", env={"TMPDIR": str(scratch)})
    answer = call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [24.0]})
    assert answer.status == 200
    found = re.search(r"a private .+ server \(.+\) on 127\.0\.0\.1:(\d+)", service.log())
    assert found is not None
    assert service.log().count("Redis: a private ") == 1  # one, shared by the workers
    # (onnxruntime leaves a .ses file in the temporary directory: not ours to remove.)
    made = {p.name.rsplit("-", 1)[0] for p in scratch.glob("lstm-*")}
    assert made == {"lstm-serve-redis", "lstm-serve-metrics"}
    assert service.stop() == 0
    assert not list(scratch.glob("lstm-*"))
    with pytest.raises(redis.ConnectionError):  # the private server is gone
        redis.Redis(port=int(found.group(1)), socket_connect_timeout=1).ping()


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_") and k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "--workers", "2", "--port", str(free_port()),
         "--model", str(tmp_path / "missing")],
        cwd=ROOT,
        env={**env, "TMPDIR": str(scratch), "LSTM_LOG_FORMAT": "text"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "no model.json here" in done.stderr
    assert "before it listened: stopping" in done.stderr
    assert "restarting" not in done.stderr
    assert not list(scratch.glob("lstm-*"))  # its private server and metrics directory too
