"""``lstm_streams_expired_total``: streams that Redis expired (``--state-ttl-s``), counted from
keyspace notifications, once per expiry however many workers run, only for this service's state
keys, re-armed after Redis restarts, and left at 0 with one warning where Redis refuses CONFIG."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from service_harness import (
    RedisClusterServers,
    RedisServer,
    ServiceProcess,
    call,
    json_log_records,
    metric,
)
from service_harness import scrape_metrics as scrape


def _expired(service: ServiceProcess) -> float:
    return metric(scrape(service.url), "lstm_streams_expired_total", model="elnino")


def _wait_for_expired(service: ServiceProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while _expired(service) < count:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)


def _wait_until_gone(client: redis.Redis | redis.RedisCluster, keys: list[str]) -> None:
    deadline = time.monotonic() + 30
    while client.exists(*keys):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _post(service: ServiceProcess, streams: list[str]) -> None:
    for stream in streams:
        answer = call("POST", f"{service.url}/v1/streams/{stream}/readings", {"values": [24.0]})
        assert answer.status == 200


def test_expired_streams_are_counted_once_with_two_workers(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    server = redis_factory()  # notify-keyspace-events is off, as by default
    client = server.client()
    assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    service = service_factory(
        "--workers", "2", "--state-ttl-s", "0.5", env={"REDIS_URL": server.url}
    )
    deadline = time.monotonic() + 30  # worker 0 enables what it needs when it connects
    while "x" not in client.config_get("notify-keyspace-events")["notify-keyspace-events"]:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    assert _expired(service) == 0
    streams = [f"{stream_id}-{k}" for k in range(5)]
    _post(service, streams)
    # Keys that are not this service's streams expire too and must not count: another
    # service's prefix, another model under this prefix, another key of a stream.
    client.set("other:{elnino:x}:state", b"1", px=100)
    client.set("lstm:{sst2:x}:state", b"1", px=100)
    client.set("lstm:{elnino:x}:events", b"1", px=100)
    _wait_until_gone(client, [f"lstm:{{elnino:{s}}}:state" for s in streams])
    _wait_for_expired(service, 5)
    time.sleep(1.0)  # a second worker counting too would show by now
    for _ in range(4):  # whichever worker answers the scrape
        assert _expired(service) == 5
    state = call("GET", f"{service.url}/v1/streams/{streams[0]}")
    assert state.status == 404  # expired: the count matches what the API says


def test_counting_resumes_after_redis_restarts(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    server = redis_factory()
    service = service_factory("--state-ttl-s", "0.3", env={"REDIS_URL": server.url})
    _post(service, [f"{stream_id}-a"])
    _wait_for_expired(service, 1)
    # A restarted server (the harness starts it without notifications) forgot the CONFIG SET;
    # the watcher reconnects and sets it again.
    server.kill()
    server.start()
    client = server.client()
    deadline = time.monotonic() + 60
    while "x" not in client.config_get("notify-keyspace-events")["notify-keyspace-events"]:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    url = f"{service.url}/v1/streams/{stream_id}-b/readings"
    while call("POST", url, {"values": [24.0]}).status != 200:  # its pool reconnects too
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    _wait_for_expired(service, 2)


def test_a_redis_that_refuses_config_leaves_the_count_at_0_with_one_warning(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    # Managed Redis services often rename CONFIG away; so does this one.
    server = RedisServer(tmp_path / "r", extra_args=["--rename-command", "CONFIG", "cfg-x1"])
    server.start()
    try:
        service = service_factory(
            "--state-ttl-s", "0.2", env={"REDIS_URL": server.url, "LSTM_LOG_FORMAT": "json"}
        )
        streams = [f"{stream_id}-{k}" for k in range(3)]
        _post(service, streams)
        _wait_until_gone(server.client(), [f"lstm:{{elnino:{s}}}:state" for s in streams])
        time.sleep(0.5)
        assert _expired(service) == 0
        _post(service, streams)  # the service works on regardless
        warnings = [r for r in json_log_records(service.log()) if "refused CONFIG" in r["msg"]]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"
        assert "lstm_streams_expired_total" in warnings[0]["msg"]
    finally:
        server.stop()


@pytest.mark.slow
def test_on_a_cluster_every_primary_is_watched(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    try:
        service = service_factory("--state-ttl-s", "0.5", env={"REDIS_URL": cluster.url})
        streams = [f"{stream_id}-{k}" for k in range(12)]
        client = cluster.client()
        _post(service, streams)
        keys = [f"lstm:{{elnino:{s}}}:state" for s in streams]
        owners = {client.get_node_from_key(k).name for k in keys}
        assert len(owners) == 3  # the streams live on every primary
        for key in keys:
            _wait_until_gone(client, [key])
        _wait_for_expired(service, len(streams))
        time.sleep(0.5)
        assert _expired(service) == len(streams)
    finally:
        cluster.stop()
