"""The service on a three-node Redis Cluster: found out by itself from the same REDIS_URL, each
stream's state on the node owning its hash slot, and the same exactly-once guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import DemoReference, sea_temperatures
from service_harness import RedisClusterServers, ServiceProcess, call, post_all
from sse_client import SseStream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture
def two_services(
    cluster: RedisClusterServers, service_factory: Callable[..., ServiceProcess]
) -> list[ServiceProcess]:
    env = {"REDIS_URL": cluster.url}
    return [service_factory(env=env), service_factory(env=env)]


def test_streams_spread_over_the_nodes_and_match_the_reference(
    cluster: RedisClusterServers,
    two_services: list[ServiceProcess],
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    streams, steps = 48, 12
    series = [sea_temperatures(steps, seed=200 + s) for s in range(streams)]
    got: list[list[float]] = [[] for _ in range(streams)]
    for k in range(steps):  # each round: every stream's next reading, all at once, both services
        requests = [
            (
                f"{two_services[(s + k) % 2].url}/v1/streams/{stream_id}-{s}/readings",
                {"values": [series[s][k]], "seq": k + 1},
            )
            for s in range(streams)
        ]
        for s, (status, body) in enumerate(asyncio.run(post_all(requests))):
            assert status == 200, body
            got[s].append(body["results"][0]["prediction"][0])
    for s in range(streams):
        expected = demo_reference.predictions(series[s])
        assert np.abs(np.array(got[s]) - expected).max() < demo_reference.tolerance
    per_node = [node.client().dbsize() for node in cluster.nodes]
    assert all(n > 0 for n in per_node), per_node  # every node holds some streams
    key = f"lstm:{{elnino:{stream_id}-0}}:state"
    assert cluster.client().exists(key) == 1


def test_simultaneous_posts_to_one_stream_apply_each_reading_once(
    two_services: list[ServiceProcess], stream_id: str, demo_reference: DemoReference
) -> None:
    n = 200
    values = sea_temperatures(n, seed=5)
    requests = [
        (f"{two_services[k % 2].url}/v1/streams/{stream_id}/readings", {"values": [v]})
        for k, v in enumerate(values)
    ]
    answers = asyncio.run(post_all(requests))
    assert all(status == 200 for status, _ in answers)
    seqs = [body["results"][0]["seq"] for _, body in answers]
    assert sorted(seqs) == list(range(1, n + 1))
    by_seq = sorted(zip(seqs, values, answers, strict=True))
    expected = demo_reference.predictions([v for _, v, _ in by_seq])
    got = np.array([body["results"][0]["prediction"][0] for _, _, (_, body) in by_seq])
    assert np.abs(got - expected).max() < demo_reference.tolerance


def test_retries_bulk_state_and_end_of_stream(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    a, b = two_services
    url = f"{a.url}/v1/streams/{stream_id}"
    first = call("POST", url + "/readings", {"values": [24.0], "seq": 1}).body
    retry = call("POST", f"{b.url}/v1/streams/{stream_id}/readings", {"values": [24.0], "seq": 1})
    assert retry.body["duplicate"] is True and retry.body["results"] == first["results"]
    bulk = call(
        "POST",
        f"{b.url}/v1/readings",
        {"readings": [{"stream": f"{stream_id}-{k}", "values": [24.0]} for k in range(20)]},
    )
    assert [r["results"][0]["prediction"] for r in bulk.body["results"]] == [
        first["results"][0]["prediction"]
    ] * 20
    assert call("GET", url).body["seq"] == 1
    assert call("DELETE", url).status == 204
    assert call("GET", url).status == 404


def test_a_node_that_lost_its_scripts_costs_no_step_twice(
    cluster: RedisClusterServers, two_services: list[ServiceProcess], stream_id: str
) -> None:
    service = two_services[0]
    streams = [f"{stream_id}-{k}" for k in range(30)]
    bulk = {"readings": [{"stream": s, "values": [24.0]} for s in streams]}  # no seqs
    assert call("POST", f"{service.url}/v1/readings", bulk).status == 200
    # One node forgets the commit script (as after a restart or a failover). Its streams' writes
    # are refused and resent; the other nodes' writes ran once and must not run again.
    cluster.nodes[0].client().script_flush()
    answer = call("POST", f"{service.url}/v1/readings", bulk)
    assert answer.status == 200
    assert [r["results"][0]["seq"] for r in answer.body["results"]] == [2] * len(streams)
    for s in streams:
        assert call("GET", f"{service.url}/v1/streams/{s}").body["seq"] == 2


def test_events_on_every_node_reach_a_subscriber_of_the_other_process(
    cluster: RedisClusterServers, two_services: list[ServiceProcess], stream_id: str
) -> None:
    """Sharded pub/sub: one subscriber connection per node carries the events of the streams
    whose slots it owns; each stream's log lives on its own node."""
    poster, listener = two_services
    streams = [f"{stream_id}-ev{s}" for s in range(9)]
    subscribers = [SseStream(f"{listener.url}/v1/streams/{s}/events") for s in streams]
    try:
        generations = {}
        for _ in range(4):
            for s in streams:
                answer = call("POST", f"{poster.url}/v1/streams/{s}/readings", {"values": [24.0]})
                assert answer.status == 200, answer.body
                generations[s] = answer.body["generation"]
        for s, events in zip(streams, subscribers, strict=True):
            ids = [e.id for e in events.take(4)]
            assert ids == [f"{generations[s]}-{k}" for k in range(1, 5)]
        pattern = f"lstm:{{elnino:{stream_id}-ev*}}:events"
        logs_per_node = [len(node.client().keys(pattern)) for node in cluster.nodes]
        assert sum(logs_per_node) == len(streams)
        assert sum(n > 0 for n in logs_per_node) >= 2, logs_per_node  # several nodes publish
        first = streams[0]
        with SseStream(f"{poster.url}/v1/streams/{first}/events?from=start") as replay:
            expected = [f"{generations[first]}-{k}" for k in range(1, 5)]
            assert [e.id for e in replay.take(4)] == expected
    finally:
        for events in subscribers:
            events.close()


def test_a_prefix_subscription_finds_streams_on_every_node(
    cluster: RedisClusterServers, two_services: list[ServiceProcess], stream_id: str
) -> None:
    """SCAN on every primary finds the streams that exist; the new-streams announcement (a plain
    PUBLISH, which the cluster bus carries to every node) brings the ones that begin later."""
    poster, listener = two_services
    prefix = f"{stream_id}-px-"
    early = [f"{prefix}{k}" for k in range(6)]
    for s in early:
        assert (
            call("POST", f"{poster.url}/v1/streams/{s}/readings", {"values": [24.0]}).status == 200
        )
    with SseStream(f"{listener.url}/v1/events?prefix={prefix}&from=start") as events:
        got = events.take(len(early) + 1)
        assert got[-1].kind == "streams" and sorted(got[-1].json()["streams"]) == sorted(early)
        assert sorted(e.json()["stream"] for e in got[:-1]) == sorted(early)
        late = [f"{prefix}late-{k}" for k in range(6)]
        for s in late:
            answer = call("POST", f"{poster.url}/v1/streams/{s}/readings", {"values": [24.0]})
            assert answer.status == 200
        # Each late stream's first event arrives; `streams` notices follow as streams start,
        # one per start or one for several that started together, the last listing them all.
        seen: list[str] = []
        listed: list[str] = []
        while len(seen) < len(late) or len(listed) < len(early) + len(late):
            event = events.next()
            assert event is not None, "the event stream ended"
            if event.kind == "message":
                seen.append(event.json()["stream"])
            elif event.kind == "streams":
                listed = event.json()["streams"]
        assert sorted(seen) == sorted(late)
        assert sorted(listed) == sorted(early + late)
