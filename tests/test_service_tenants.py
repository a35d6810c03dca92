"""Tenants as namespaces of streams: ``(tenant, model, stream)`` names a stream. Two tenants and the
default one use the same stream ids through the real app, real HTTP and a real redis-server, and
keep apart their state, their event logs, their live events (SSE and WebSocket) and what their
prefix subscriptions discover; the default tenant's keys are exactly those of before tenants; the
expiry watcher maps every tenant's expired keys to their streams; and ``max_streams`` refuses a
tenant's stream beyond its limit with 429, admits again once one ends or expires, repairs a count
that missed an expiry, and costs nothing on the steps of live streams.

The tenant of a request comes from a test-only header (``inprocess_service.py``) until
authentication sets it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis
from inprocess_service import InProcessService, as_tenant
from service_harness import RedisClusterServers, RedisServer, Response, call, metric, scrape_metrics
from sse_client import SseStream

from service.core.ids import DEFAULT_TENANT
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.step.expiry import ExpiryWatcher
from service.step.state_store import StateStore, StreamId

MODEL = "elnino"
QUOTA_COMMANDS = ("eval", "sadd", "scard", "sismember", "srem", "smembers")


def _tenant() -> str:
    """A tenant of its own for a test (the module's tests share one Redis)."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def service(redis_server: RedisServer) -> Iterator[InProcessService]:
    running = InProcessService(Settings(redis_url=redis_server.url)).start()
    yield running
    running.stop()


def _post(
    service: InProcessService, tenant: str | None, stream: str, n: int = 1, value: float = 24.0
) -> Response:
    body = {"readings": [{"values": [value + k / 10]} for k in range(n)]}
    url = f"{service.url}/v1/streams/{stream}/readings"
    return call("POST", url, body, headers=as_tenant(tenant))


def _ok(answer: Response) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    return dict(answer.body)


def _state(service: InProcessService, tenant: str | None, stream: str) -> Response:
    return call("GET", f"{service.url}/v1/streams/{stream}", headers=as_tenant(tenant))


def _delete(service: InProcessService, tenant: str | None, stream: str) -> Response:
    return call("DELETE", f"{service.url}/v1/streams/{stream}", headers=as_tenant(tenant))


def _v2(
    service: InProcessService,
    tenant: str | None,
    stream: str,
    start: bool = False,
    end: bool = False,
) -> Response:
    body = {
        "parameters": {"sequence_id": stream, "sequence_start": start, "sequence_end": end},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 1], "data": [24.0]}],
    }
    return call("POST", f"{service.url}/v2/models/{MODEL}/infer", body, headers=as_tenant(tenant))


def _quota_refusal(answer: Response, limit: int) -> None:
    assert answer.status == 429, answer.body
    error = answer.body["error"]
    assert error["code"] == "quota_exceeded" and error["max_streams"] == limit, error
    assert f"{limit} live streams" in error["message"], error


def _command_calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


# -- the key layout ------------------------------------------------------------------------------


def test_the_default_tenant_keeps_the_keys_of_before_tenants_and_others_get_a_namespace(
    service: InProcessService, redis_server: RedisServer, stream_id: str
) -> None:
    store = StateStore("", "lstm", Metrics(), 1)
    assert store.state_key(DEFAULT_TENANT, MODEL, "buoy-7") == "lstm:{elnino:buoy-7}:state"
    assert store.stream_keys(DEFAULT_TENANT, MODEL, "buoy-7") == (
        "lstm:{elnino:buoy-7}:state",
        "lstm:{elnino:buoy-7}:events",
        "lstm:{elnino:buoy-7}:live",
    )
    assert store.stream_keys("acme", MODEL, "a:b") == (
        "lstm:{acme/elnino:a:b}:state",
        "lstm:{acme/elnino:a:b}:events",
        "lstm:{acme/elnino:a:b}:live",
    )
    assert store.tenant_streams_key("acme") == "lstm:{acme}:streams"
    assert store.parse_state_key("lstm:{elnino:a:b}:state") == (DEFAULT_TENANT, MODEL, "a:b")
    assert store.parse_state_key("lstm:{acme/elnino:a:b}:state") == ("acme", MODEL, "a:b")
    for other in [
        "lstm:{elnino:a}:events",
        "other:{elnino:a}:state",
        "lstm:{default/elnino:a}:state",  # the default tenant's keys have no namespace
        "lstm:{a/b/elnino:a}:state",
        "lstm:{acme}:streams",
    ]:
        assert store.parse_state_key(other) is None, other

    # Through the service: the default tenant's steps make exactly the keys they made before
    # tenants; another tenant's the same keys with its namespace.
    tenant = _tenant()
    _ok(_post(service, None, stream_id))
    _ok(_post(service, tenant, stream_id))
    keys = sorted(k.decode() for k in redis_server.client().keys(f"*{stream_id}*"))
    assert keys == sorted(
        [
            f"lstm:{{elnino:{stream_id}}}:events",
            f"lstm:{{elnino:{stream_id}}}:state",
            f"lstm:{{{tenant}/elnino:{stream_id}}}:events",
            f"lstm:{{{tenant}/elnino:{stream_id}}}:state",
        ]
    )
    assert redis_server.client().exists(f"lstm:{{{tenant}}}:streams") == 0  # no limit, no set


def test_each_glob_matches_its_tenants_state_keys_and_nothing_else(
    redis_server: RedisServer,
) -> None:
    """The globs the expiry watcher and prefix discovery use, asked of Redis itself."""
    store = StateStore("", "glob?*", Metrics(), 1)  # glob characters in the prefix are escaped
    keys = {
        "default": store.state_key(DEFAULT_TENANT, MODEL, "s:1"),
        "acme": store.state_key("acme", MODEL, "s:1"),
        "acme-sst": store.state_key("acme", "sst", "s:1"),
        "beta": store.state_key("beta", MODEL, "s:2"),
        "default-sst": store.state_key(DEFAULT_TENANT, "sst", "s:1"),
        "named-like-a-model": store.state_key(MODEL, "sst", "s:1"),  # tenant "elnino"
        "events": store.stream_keys("acme", MODEL, "s:1").log,
        "set": store.tenant_streams_key("acme"),
        "set-default": store.tenant_streams_key(DEFAULT_TENANT),
        "other-prefix": StateStore("", "globx", Metrics(), 1).state_key("acme", MODEL, "s"),
    }
    client = redis_server.client()
    for key in keys.values():
        client.set(key, b"1")

    def matched(glob: str) -> set[str]:
        found = {k.decode() for k in client.keys(glob)}
        return {name for name, key in keys.items() if key in found}

    assert matched(store.state_key_glob(DEFAULT_TENANT, MODEL)) == {"default"}
    assert matched(store.state_key_glob("acme", MODEL)) == {"acme"}
    assert set().union(*map(matched, store.state_key_globs(MODEL))) == {"default", "acme", "beta"}
    assert set().union(*map(matched, store.state_key_globs("sst"))) == {
        "acme-sst",
        "default-sst",
        "named-like-a-model",
    }
    client.delete(*keys.values())


# -- state, events, subscriptions ------------------------------------------------------------------


def test_tenants_keep_separate_state_under_the_same_stream_ids(
    service: InProcessService, stream_id: str
) -> None:
    a, b = _tenant(), _tenant()
    first_a = _ok(_post(service, a, stream_id, 3))
    first_b = _ok(_post(service, b, stream_id, 1))
    first_default = _ok(_post(service, None, stream_id, 2))
    # Every one started from zero state: the same first reading, the same prediction.
    assert first_a["results"][0] == first_b["results"][0] == first_default["results"][0]
    assert [_state(service, t, stream_id).body["seq"] for t in (a, b, None)] == [3, 1, 2]
    stranger = _state(service, _tenant(), stream_id)
    assert stranger.status == 404 and stranger.body["error"]["code"] == "stream_not_found"

    # Ending b's stream ends only b's.
    assert _delete(service, b, stream_id).status == 204
    assert _delete(service, b, stream_id).status == 404
    assert _state(service, b, stream_id).status == 404
    assert [_state(service, t, stream_id).body["seq"] for t in (a, None)] == [3, 2]

    # Bulk and v2 requests are the tenant's too.
    bulk = call(
        "POST",
        f"{service.url}/v1/readings",
        {"readings": [{"stream": stream_id, "values": [24.0]}]},
        headers=as_tenant(b),
    )
    assert bulk.status == 200 and bulk.body["results"][0]["results"][0]["seq"] == 1
    v2 = _v2(service, a, stream_id)
    assert v2.status == 200, v2.body
    assert v2.body["parameters"]["seq"] == 4
    assert [_state(service, t, stream_id).body["seq"] for t in (a, b, None)] == [4, 1, 2]


def test_each_tenants_event_log_and_live_events_hold_only_its_own_steps(
    service: InProcessService, stream_id: str
) -> None:
    a, b = _tenant(), _tenant()
    url = f"{service.url}/v1/streams/{stream_id}/events"
    with SseStream(url, headers=as_tenant(a)) as live_a:
        assert live_a.status == 200
        _ok(_post(service, None, stream_id, 2))
        _ok(_post(service, b, stream_id, 3))
        gen_a = _ok(_post(service, a, stream_id, 2))["generation"]
        got = [e for e in live_a.take(2)]
        assert [e.id for e in got] == [f"{gen_a}-1", f"{gen_a}-2"]
        assert all(e.json()["stream"] == stream_id for e in got)
    gen_b = _state(service, b, stream_id).body["generation"]
    with SseStream(url + "?from=start", headers=as_tenant(b)) as log_b:
        assert [e.id for e in log_b.take(3)] == [f"{gen_b}-{k}" for k in (1, 2, 3)]
    with SseStream(url + "?from=start") as log_default:
        gen = _state(service, None, stream_id).body["generation"]
        assert [e.id for e in log_default.take(2)] == [f"{gen}-1", f"{gen}-2"]
    # A tenant that never wrote the stream has no log of it: a resume says the gap.
    with SseStream(url + "?after=1-1", headers=as_tenant(_tenant())) as stranger:
        gap = stranger.next()
        assert gap is not None and gap.kind == "gap" and gap.json()["lost_through"] is None


async def _ws(service: InProcessService, tenant: str | None) -> tuple[Any, Any]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(
        f"{service.url}/v1/events/ws", headers=as_tenant(tenant), heartbeat=None
    )
    return session, ws


async def _until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await ws.receive_json(timeout=10)
        if message["type"] == kind:
            return message
        assert message["type"] == "streams", message


async def _events(ws: Any, quiet_s: float = 0.7) -> list[tuple[str, str]]:
    """(stream, id) of every event until the connection is quiet for ``quiet_s``."""
    got = []
    while True:
        try:
            message = await ws.receive_json(timeout=quiet_s)
        except TimeoutError:
            return got
        if message["type"] == "event":
            got.append((message["stream"], message["id"]))


def test_websocket_and_prefix_subscriptions_reach_only_their_tenants_streams(
    service: InProcessService, stream_id: str
) -> None:
    a, b = _tenant(), _tenant()
    prefix = f"{stream_id}-p-"
    old_a, old_b = prefix + "old-a", prefix + "old-b"
    _ok(_post(service, a, old_a))
    _ok(_post(service, b, old_b))
    _ok(_post(service, None, old_b))

    async def scenario() -> None:
        session, ws = await _ws(service, a)
        try:
            await ws.send_json({"op": "subscribe", "prefix": prefix, "ref": 1})
            assert (await _until(ws, "subscribed"))["streams"] == [old_a]
            await ws.send_json({"op": "subscribe", "streams": [stream_id], "ref": 2})
            assert (await _until(ws, "subscribed"))["streams"] == [stream_id]
            # The same ids, written by b and by the default tenant: nothing reaches a.
            for tenant in (b, None):
                _ok(_post(service, tenant, stream_id))
                _ok(_post(service, tenant, old_a))
                _ok(_post(service, tenant, prefix + "new"))
            assert await _events(ws) == []
            g_new = _ok(_post(service, a, prefix + "new"))["generation"]
            g_one = _ok(_post(service, a, stream_id))["generation"]
            g_old = _ok(_post(service, a, old_a))["generation"]
            assert sorted(await _events(ws)) == sorted(
                [
                    (prefix + "new", f"{g_new}-1"),
                    (stream_id, f"{g_one}-1"),
                    (old_a, f"{g_old}-2"),
                ]
            )
        finally:
            await ws.close()
            await session.close()

    asyncio.run(scenario())
    # Multi-stream SSE by prefix: the streams it finds are the tenant's.
    c = _tenant()
    _ok(_post(service, c, prefix + "c-only"))
    with SseStream(f"{service.url}/v1/events?prefix={prefix}", headers=as_tenant(c)) as multi:
        first = multi.next()
        assert first is not None and first.kind == "streams"
        assert first.json()["streams"] == [prefix + "c-only"]


def test_a_prefix_of_nothing_follows_every_stream_of_its_tenant_and_only_those(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()  # a Redis of its own: "" matches every stream there
    service = InProcessService(Settings(redis_url=server.url)).start()
    a = _tenant()
    try:
        _ok(_post(service, None, "d-1"))
        _ok(_post(service, a, "a-1"))
        _ok(_post(service, a, "d-1"))

        async def scenario() -> None:
            sessions = []
            try:
                default_session, default_ws = await _ws(service, None)
                a_session, a_ws = await _ws(service, a)
                sessions = [(default_session, default_ws), (a_session, a_ws)]
                await default_ws.send_json({"op": "subscribe", "prefix": ""})
                assert (await _until(default_ws, "subscribed"))["streams"] == ["d-1"]
                await a_ws.send_json({"op": "subscribe", "prefix": ""})
                assert sorted((await _until(a_ws, "subscribed"))["streams"]) == ["a-1", "d-1"]
                g_d = _ok(_post(service, None, "d-2"))["generation"]
                g_a = _ok(_post(service, a, "a-2"))["generation"]
                _ok(_post(service, _tenant(), "x-1"))
                assert await _events(default_ws) == [("d-2", f"{g_d}-1")]
                assert await _events(a_ws) == [("a-2", f"{g_a}-1")]
            finally:
                for session, ws in sessions:
                    await ws.close()
                    await session.close()

        asyncio.run(scenario())
    finally:
        service.stop()


# -- expiry ----------------------------------------------------------------------------------------


def test_the_expiry_watcher_maps_every_tenants_expired_keys_to_their_streams(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    store = StateStore(server.url, "lstm", Metrics(), 2)
    metrics = Metrics()
    got: list[StreamId] = []

    async def on_expired(streams: Any) -> None:
        got.extend(streams)

    async def scenario() -> None:
        globs = [*store.state_key_globs(MODEL)]
        watcher = ExpiryWatcher(store.clients, globs, store.parse_state_key, metrics, on_expired)
        task = asyncio.create_task(watcher.run())
        client = server.client()
        try:
            deadline = time.monotonic() + 10
            while client.execute_command("PUBSUB", "NUMPAT") < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            watched = [
                StreamId(DEFAULT_TENANT, MODEL, "buoy:7"),
                StreamId("acme", MODEL, "buoy:7"),
                StreamId("beta", MODEL, "b"),
            ]
            for stream in watched:
                client.set(store.state_key(*stream), b"1", px=50)
            # Not state keys of a served model's stream: expire unnoticed.
            for key in [
                store.state_key("acme", "sst", "buoy:7"),
                store.state_key(DEFAULT_TENANT, "sst", "x"),
                store.stream_keys("acme", MODEL, "buoy:7").log,
                store.tenant_streams_key("acme"),
                "other:{elnino:x}:state",
            ]:
                client.set(key, b"1", px=50)
            while len(got) < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # anything else would have arrived by now
            assert sorted(got) == sorted(watched)
            assert metric(_samples(metrics), "lstm_streams_expired_total", model=MODEL) == 3
        finally:
            await watcher.stop(task)
            await store.close()

    asyncio.run(scenario())


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in metrics.collect()
        for s in family.samples
    }


def test_expired_streams_of_every_tenant_are_counted_and_leave_their_tenants_count(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    a, b = _tenant(), _tenant()
    limits = {a: 1, DEFAULT_TENANT: 1}  # the default tenant may have a limit too
    service = InProcessService(Settings(redis_url=server.url, state_ttl_s=1.0), limits).start()
    client = server.client()
    try:
        for tenant in (a, None):
            _ok(_post(service, tenant, "s1"))
            _quota_refusal(_post(service, tenant, "s2"), 1)
        _ok(_post(service, b, "s1"))  # no limit
        _ok(_post(service, b, "s2"))
        # Each tenant's streams expire; the watcher takes them out of their tenants' sets
        # (before a refusal at the limit would have repaired the set: checked first).
        deadline = time.monotonic() + 30
        sets = [f"lstm:{{{a}}}:streams", f"lstm:{{{DEFAULT_TENANT}}}:streams"]
        assert all(client.scard(s) == 1 for s in sets)
        while any(client.scard(s) for s in sets):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while _expired(service) < 4:  # b's streams too, written a moment later
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        assert _expired(service) == 4
        for tenant in (a, None):
            _ok(_post(service, tenant, "s2"))
            _quota_refusal(_post(service, tenant, "s1"), 1)
        assert client.smembers(sets[0]) == {f"lstm:{{{a}/elnino:s2}}:state".encode()}
        assert client.smembers(sets[1]) == {b"lstm:{elnino:s2}:state"}
        assert client.exists(f"lstm:{{{b}}}:streams") == 0
    finally:
        service.stop()


def _expired(service: InProcessService) -> float:
    return metric(scrape_metrics(service.url), "lstm_streams_expired_total", model=MODEL)


# -- max_streams -----------------------------------------------------------------------------------


def test_max_streams_refuses_a_new_stream_beyond_the_limit_until_one_ends(
    service: InProcessService, stream_id: str
) -> None:
    a, b = _tenant(), _tenant()
    service.limits[a] = 2
    s1, s2, s3, s4 = (f"{stream_id}-{k}" for k in range(1, 5))
    _ok(_post(service, a, s1))
    _ok(_post(service, a, s2))
    _quota_refusal(_post(service, a, s3), 2)
    assert _state(service, a, s3).status == 404  # nothing of it was written
    _ok(_post(service, a, s1))  # live streams go on
    for stream in (s1, s2, s3):  # another tenant, without a limit, is not concerned
        _ok(_post(service, b, stream))
    bulk = call(
        "POST",
        f"{service.url}/v1/readings",
        {"readings": [{"stream": s, "values": [24.0]} for s in (s1, s3)]},
        headers=as_tenant(a),
    )
    assert bulk.status == 200
    assert bulk.body["results"][0]["results"][0]["seq"] == 3
    assert bulk.body["results"][1]["error"]["code"] == "quota_exceeded"
    # v2: its error form, and a sequence_start of a live stream is no new stream to count.
    refused = _v2(service, a, s3)
    assert refused.status == 429 and "2 live streams" in refused.body["error"], refused.body
    assert _v2(service, a, s1, start=True).status == 200
    # Ending a stream lets another start: DELETE, then v2's sequence_end.
    assert _delete(service, a, s1).status == 204
    _ok(_post(service, a, s3))
    _quota_refusal(_post(service, a, s4), 2)
    ended = _v2(service, a, s2, end=True)
    assert ended.status == 200, ended.body
    _ok(_post(service, a, s4))  # at once: the end was answered after the count let s2 go
    _quota_refusal(_post(service, a, s1), 2)
    # A new reading of the ended s2 starts it afresh, which counts again.
    _quota_refusal(_post(service, a, s2), 2)


def test_a_step_of_a_live_stream_costs_no_quota_command(
    service: InProcessService, redis_server: RedisServer, stream_id: str
) -> None:
    a, b = _tenant(), _tenant()
    service.limits[a] = 5
    client = redis_server.client()
    _ok(_post(service, a, stream_id))
    client.config_resetstat()
    for _ in range(3):
        _ok(_post(service, a, stream_id))
        _ok(_post(service, b, stream_id))
    _ok(_post(service, b, f"{stream_id}-new"))  # a new stream of a tenant without a limit
    _ok(_post(service, None, f"{stream_id}-new"))
    calls = _command_calls(client)
    assert not set(QUOTA_COMMANDS) & set(calls), calls
    # A new stream of a tenant with a limit: one script call, in one round trip.
    client.config_resetstat()
    _ok(_post(service, a, f"{stream_id}-new"))
    calls = _command_calls(client)
    assert calls["eval"] == 1 and calls["sadd"] == 1, calls


def test_a_count_that_missed_an_expiry_is_repaired_at_the_limit(
    service: InProcessService, redis_server: RedisServer, stream_id: str
) -> None:
    a = _tenant()
    service.limits[a] = 1
    _ok(_post(service, a, f"{stream_id}-1"))
    # The stream's record goes without the watcher hearing of it (as when it expires while no
    # watcher listens).
    client = redis_server.client()
    client.delete(f"lstm:{{{a}/elnino:{stream_id}-1}}:state")
    client.config_resetstat()
    _ok(_post(service, a, f"{stream_id}-2"))
    calls = _command_calls(client)
    assert calls["smembers"] == 1 and calls["srem"] == 1, calls
    assert client.smembers(f"lstm:{{{a}}}:streams") == {
        f"lstm:{{{a}/elnino:{stream_id}-2}}:state".encode()
    }
    # At the limit with every stream alive, a refusal reads the set at most once per interval.
    client.config_resetstat()
    for _ in range(3):
        _quota_refusal(_post(service, a, f"{stream_id}-3"), 1)
    calls = _command_calls(client)
    assert calls.get("smembers", 0) == 0 and calls["eval"] == 3, calls


def test_the_state_store_counts_each_tenant_in_one_round_trip(redis_server: RedisServer) -> None:
    store = StateStore(redis_server.url, "count", Metrics(), 2)
    a, b = _tenant(), _tenant()
    keys = [store.state_key(a, MODEL, f"s{k}") for k in range(4)]
    other = store.state_key(b, MODEL, "s0")

    async def scenario() -> None:
        try:
            refused = await store.admit_streams({a: (2, keys[:3]), b: (1, [other])})
            assert refused == {keys[2]}
            # A member asks again (a new generation of a live stream): admitted, not counted.
            assert await store.admit_streams({a: (2, [keys[0], keys[3]])}) == {keys[3]}
            await store.release_streams({a: [keys[0]]})
            assert await store.admit_streams({a: (2, [keys[3]])}) == set()
            # Neither of a's members has a record: a repair drops both.
            assert await store.prune_streams(a) == 2
            assert await store.prune_streams(b) == 1
        finally:
            await store.close()

    asyncio.run(scenario())


# -- a Redis Cluster -------------------------------------------------------------------------------


@pytest.mark.slow
def test_on_a_cluster_tenants_stay_apart_and_their_counts_hold(tmp_path: Any) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    a = _tenant()
    service = InProcessService(Settings(redis_url=cluster.url), {a: 2}).start()
    client = cluster.client()
    try:
        streams = [f"c-{k}" for k in range(6)]
        for stream in streams:
            _ok(_post(service, None, stream))
        gen = {s: _ok(_post(service, a, s))["generation"] for s in streams[:2]}
        assert all(client.exists(f"lstm:{{elnino:{s}}}:state") for s in streams)
        assert client.exists(*(f"lstm:{{{a}/elnino:{s}}}:state" for s in streams)) == 2
        members = {f"lstm:{{{a}/elnino:{s}}}:state".encode() for s in streams[:2]}
        assert client.smembers(f"lstm:{{{a}}}:streams") == members
        # A record gone without notice: the repair at the limit checks every member on its
        # node (the set lives in a slot of its own).
        client.delete(f"lstm:{{{a}/elnino:{streams[1]}}}:state")
        _ok(_post(service, a, streams[2]))
        _quota_refusal(_post(service, a, streams[3]), 2)
        # A DELETE removes the record and the member, on their nodes, in one pipeline.
        assert _delete(service, a, streams[0]).status == 204
        _ok(_post(service, a, streams[3]))
        _quota_refusal(_post(service, a, streams[4]), 2)
        # Discovery on every node finds only the tenant's streams.
        with SseStream(f"{service.url}/v1/events?prefix=c-", headers=as_tenant(a)) as multi:
            first = multi.next()
            assert first is not None and first.kind == "streams"
            assert sorted(first.json()["streams"]) == streams[:4]  # logs outlive their records
        with SseStream(
            f"{service.url}/v1/streams/{streams[1]}/events?from=start", headers=as_tenant(a)
        ) as log:
            assert log.next().id == f"{gen[streams[1]]}-1"  # type: ignore[union-attr]
    finally:
        service.stop()
        cluster.stop()
