"""The service on a Redis Cluster whose three primaries each have a replica, when a primary is
killed under load: its replica takes over its slots, and the service follows (writes to that
node's streams succeed again, its pub/sub connection moves to the promoted replica, the
new-streams channel with it, the expiry watcher to the promoted replica). Streams on the other
nodes get no 503 at any time: their latency during the failover is measured and reported.

The cluster runs with ``cluster-require-full-coverage no``: with the default (``yes``) every node
refuses every command from the moment the failed primary is marked as failed until its replica is
promoted (about a second here), and then all streams get 503s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from failover_harness import Received, SeqClients, follow_sse, percentile, read_logs
from service_harness import (
    RedisClusterServers,
    RedisServer,
    ServiceProcess,
    call,
    metric,
    scrape_metrics,
)

pytestmark = pytest.mark.slow

CLIENTS = 16
STREAMS_PER_CLIENT = 2
NEW_STREAMS_CHANNEL = "lstm:new-streams"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(
        tmp_path / "cluster",
        replicas=1,
        node_timeout_ms=1000,
        extra_args=["--cluster-require-full-coverage", "no"],
    ).start()
    yield servers
    servers.stop()


def _state_key(stream: str) -> str:
    return f"lstm:{{elnino:{stream}}}:state"


def test_a_primary_killed_under_load_is_replaced_by_its_replica_and_the_service_follows(
    cluster: RedisClusterServers, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    env = {"REDIS_URL": cluster.url}
    service = service_factory("--events-max-len", "100000", env=env)
    # Streams that expire within a second, under a key prefix of their own.
    expiring = service_factory("--key-prefix", "ttl", "--state-ttl-s", "1", env=env)
    prefix = f"{stream_id}-"
    streams = [[f"{prefix}c{c}-{k}" for k in range(STREAMS_PER_CLIENT)] for c in range(CLIENTS)]
    # The primary that also serves the new-streams channel (and that REDIS_URL names, as it
    # happens: the service must not need it once it knows the cluster).
    victim = cluster.primary_for(NEW_STREAMS_CHANNEL)
    on_victim = {
        s for group in streams for s in group if cluster.primary_for(_state_key(s)) is victim
    }
    others = {s for group in streams for s in group} - on_victim
    assert on_victim and others
    followed = sorted(on_victim)[0]
    short_lived = next(
        f"{prefix}ttl-{k}"
        for k in range(1000)
        if cluster.primary_for(f"ttl:{{elnino:{prefix}ttl-{k}}}:state") is victim
    )
    late = [f"{prefix}late-{k}" for k in range(3)]  # begin after the failover
    load = SeqClients(service.url, streams)
    one, by_prefix = Received(), Received()

    async def scenario() -> tuple[float, float, RedisServer]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                follow_sse(f"{service.url}/v1/streams/{followed}/events?from=start", one, stop)
            ),
            asyncio.create_task(
                follow_sse(f"{service.url}/v1/events?prefix={prefix}late-", by_prefix, stop)
            ),
        ]
        posting = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        killed = time.monotonic()
        victim.kill()
        deadline = time.monotonic() + 30
        while (
            promoted := await asyncio.to_thread(cluster.primary_for, _state_key(followed))
        ) is victim:
            assert time.monotonic() < deadline, "no replica took over"
            await asyncio.sleep(0.02)
        promoted_at = time.monotonic()
        deadline = time.monotonic() + 20
        while not all(
            any(a.status == 200 and a.start > promoted_at for a in load.attempts if a.stream == s)
            for s in on_victim
        ):
            assert time.monotonic() < deadline, f"writes did not resume:\n{service.log()}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        load.stopping.set()
        await posting
        for stream in late:
            answer = await asyncio.to_thread(
                call, "POST", f"{service.url}/v1/streams/{stream}/readings", {"values": [24.0]}
            )
            assert answer.status == 200, answer.body
        final = load.records[followed].last
        deadline = time.monotonic() + 20
        while one.last_seq(followed) < final or any(by_prefix.last_seq(s) < 1 for s in late):
            assert time.monotonic() < deadline, (one.last_seq(followed), final, service.log())
            await asyncio.sleep(0.05)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return killed, promoted_at, promoted

    killed, promoted_at, promoted = asyncio.run(scenario())
    assert promoted in cluster.nodes and promoted is not victim

    # The failed node's streams: 503 with Retry-After (or a broken connection) until its replica
    # took over; the other nodes' streams: never an error.
    failed = load.failures(on_victim)
    assert failed and all(a.status in (0, 503) for a in failed), {
        (a.status, a.code) for a in failed
    }
    assert all(a.retry_after for a in failed if a.status == 503)
    assert not load.failures(others), load.failures(others)[:5]
    resumed = max(a.end for a in failed)
    during = [
        a.end - a.start
        for a in load.attempts
        if a.stream in others and a.end > killed and a.start < resumed
    ]
    before = [a.end - a.start for a in load.attempts if a.stream in others and a.end < killed]
    # Every stream's state is its last acknowledged step; what the failed node's replica had not
    # received when the primary died is reported (asynchronous replication).
    for stream, record in load.records.items():
        assert call("GET", f"{service.url}/v1/streams/{stream}").body["seq"] == record.last
    finals = {s: load.records[s].last for s in sorted(on_victim)}
    logs = asyncio.run(read_logs(service.url, finals))
    lost = sum(len(set(load.records[s].acked) - set(dict(logs.events[s]))) for s in on_victim)
    print(
        f"\nRedis Cluster failover under {CLIENTS} clients: a replica took over "
        f"{promoted_at - killed:.2f} s after the kill; the failed node's streams answered their "
        f"last failure {resumed - killed:.2f} s after it ({len(failed)} failed attempts); other "
        f"nodes' streams: no error, request p50 {percentile(during, 0.5) * 1000:.1f} ms, p99 "
        f"{percentile(during, 0.99) * 1000:.1f} ms over {len(during)} requests during the "
        f"failover (p99 {percentile(before, 0.99) * 1000:.1f} ms before it); acknowledged steps "
        f"lost on the failed node: {lost}"
    )
    assert resumed - promoted_at < 5.0, "the service took too long to follow the failover"
    # The subscriber of a stream on the failed node: every event its log holds, each once.
    ids = [key for key, _ in one.events[followed]]
    assert ids == sorted(set(ids))
    assert not set(dict(logs.events[followed])) - set(ids)
    # The new-streams channel moved with its node: streams that began later were found.
    assert all(by_prefix.last_seq(s) == 1 for s in late)
    # The expiry watcher of the other service watches the promoted replica: a stream of the
    # failed node's slots that expires there is counted.
    answer = call("POST", f"{expiring.url}/v1/streams/{short_lived}/readings", {"values": [1.0]})
    assert answer.status == 200, answer.body
    deadline = time.monotonic() + 20
    while metric(scrape_metrics(expiring.url), "lstm_streams_expired_total", model="elnino") < 1:
        assert time.monotonic() < deadline, expiring.log()
        time.sleep(0.1)
