"""Following several streams on one connection, with real Redis, real service processes and
aiohttp's real WebSocket client: WebSocket subscribe/unsubscribe by list and prefix on a live
connection, resume by id per stream, bad control messages; multi-stream SSE resumed with the
Last-Event-ID cursor; streams found by prefix after subscribing; Redis restarts; a few hundred
subscribers at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from service_harness import RedisServer, ServiceProcess, call, metric, scrape_metrics
from sse_client import SseEvent, SseStream
from ws_client import WsSubscriber, quiet


def _post(service: ServiceProcess, stream: str, n: int = 1) -> dict[str, Any]:
    body = {"readings": [{"values": [24.0 + k / 10]} for k in range(n)]}
    answer = call("POST", f"{service.url}/v1/streams/{stream}/readings", body)
    assert answer.status == 200, answer.body
    return dict(answer.body)


def _ws_url(service: ServiceProcess) -> str:
    return f"{service.url}/v1/models/elnino/events/ws"


def _ids(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["stream"], e["id"]) for e in events]


def _data(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.kind == "message"]


def test_websocket_list_subscription_add_and_drop_live(
    service: ServiceProcess, stream_id: str
) -> None:
    a, b, c = (f"{stream_id}-{k}" for k in "abc")

    async def scenario() -> None:
        ws = await WsSubscriber.open(_ws_url(service))
        try:
            await ws.send({"op": "subscribe", "streams": [a, b], "ref": 7})
            ack = await ws.until("subscribed")
            assert ack == {"type": "subscribed", "ref": 7, "streams": [a, b]}
            ga = _post(service, a, 2)["generation"]
            gb = _post(service, b, 1)["generation"]
            _post(service, c, 1)  # not followed
            got = await ws.events(3)
            assert _ids(got) == [(a, f"{ga}-1"), (a, f"{ga}-2"), (b, f"{gb}-1")]
            assert got[0]["model"] == "elnino" and got[0]["seq"] == 1
            assert isinstance(got[0]["prediction"], list) and "ts" in got[0]

            # Add c on the live connection, replaying its log; drop a.
            await ws.send({"op": "subscribe", "streams": [c], "from": "start"})
            gc = (await ws.events(1))[0]["generation"]
            assert (await ws.until("subscribed"))["streams"] == [c]
            await ws.send({"op": "unsubscribe", "streams": [a, "never-followed"], "ref": "x"})
            assert await ws.until("unsubscribed") == {
                "type": "unsubscribed",
                "ref": "x",
                "streams": [a],
            }
            _post(service, a, 1)
            _post(service, c, 1)
            _post(service, b, 1)
            assert _ids(await ws.events(2)) == [(c, f"{gc}-2"), (b, f"{gb}-2")]
            assert [m for m in await quiet(ws, 0.5) if m["type"] == "event"] == []
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_websocket_resume_by_id_per_stream_and_bad_messages(
    service: ServiceProcess, stream_id: str
) -> None:
    a, b = f"{stream_id}-a", f"{stream_id}-b"
    ga = _post(service, a, 5)["generation"]
    gb = _post(service, b, 3)["generation"]

    async def scenario() -> None:
        ws = await WsSubscriber.open(_ws_url(service))
        try:
            bad: list[Any] = [
                "not json",
                [1, 2],
                {"op": "watch", "streams": [a]},
                {"op": "subscribe"},
                {"op": "subscribe", "streams": [a], "prefix": "x"},
                {"op": "subscribe", "streams": "a"},
                {"op": "subscribe", "streams": ["bad id"]},
                {"op": "subscribe", "streams": [7]},
                {"op": "subscribe", "streams": [a], "after": {a: "12"}},
                {"op": "subscribe", "streams": [a], "after": [a]},
                {"op": "subscribe", "streams": [a], "from": "end"},
                {"op": "subscribe", "streams": [a], "colour": "red", "ref": 3},
                {"op": "subscribe", "prefix": "bad prefix*"},
            ]
            for message in bad:
                if isinstance(message, str):
                    await ws.ws.send_str(message)
                else:
                    await ws.send(message)
                error = await ws.until("error")
                expected = "invalid_stream_id" if "bad id" in str(message) else "invalid_request"
                assert error["code"] == expected, (message, error)
                assert error["message"] and "Traceback" not in error["message"]
                assert error.get("ref") == (
                    message.get("ref") if isinstance(message, dict) else None
                )
            await ws.ws.send_bytes(b"\x00")
            assert (await ws.until("error"))["code"] == "invalid_request"

            # After all that, the connection still works: resume each stream after its own id.
            after = {a: f"{ga}-3", b: f"{gb}-1"}
            await ws.send({"op": "subscribe", "streams": [a, b], "after": after})
            got = await ws.events(4)
            assert sorted(_ids(got)) == sorted(
                [(a, f"{ga}-4"), (a, f"{ga}-5"), (b, f"{gb}-2"), (b, f"{gb}-3")]
            )
            await ws.until("subscribed")
            _post(service, b, 1)
            assert _ids(await ws.events(1)) == [(b, f"{gb}-4")]
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_websocket_prefix_finds_existing_and_new_streams(
    service: ServiceProcess, stream_id: str
) -> None:
    prefix = f"{stream_id}-p-"
    old = prefix + "old"
    g_old = _post(service, old, 2)["generation"]
    _post(service, f"{stream_id}-q-other", 1)

    async def scenario() -> None:
        ws = await WsSubscriber.open(_ws_url(service))
        try:
            await ws.send({"op": "subscribe", "prefix": prefix, "ref": 1})
            ack = await ws.until("subscribed")
            assert ack["streams"] == [old] and ack["prefix"] == prefix
            # A stream that begins after the subscription: all of it, from its first event.
            new = prefix + "new"
            g_new = _post(service, new, 3)["generation"]
            _post(service, old, 1)
            _post(service, f"{stream_id}-q-other", 1)
            got = await ws.events(4)
            assert sorted(_ids(got)) == sorted(
                [(new, f"{g_new}-1"), (new, f"{g_new}-2"), (new, f"{g_new}-3"), (old, f"{g_old}-3")]
            )
            # Dropping the prefix drops its streams.
            await ws.send({"op": "unsubscribe", "prefix": prefix})
            assert sorted((await ws.until("unsubscribed"))["streams"]) == sorted([old, new])
            _post(service, new, 1)
            _post(service, prefix + "third", 1)
            assert [m for m in await quiet(ws, 0.5) if m["type"] == "event"] == []
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_too_many_streams_is_refused_on_both_transports(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(
        "--subscription-max-streams", "3", env={"REDIS_URL": redis_server.url}
    )
    prefix = f"{stream_id}-m-"
    for k in range(4):
        _post(service, f"{prefix}{k}")
    with SseStream(f"{service.url}/v1/events?prefix={prefix}") as answer:
        assert answer.status == 400
        assert "--subscription-max-streams" in answer.body()["error"]["message"]
    names = ",".join(f"{stream_id}-{k}" for k in range(4))
    with SseStream(f"{service.url}/v1/events?streams={names}") as answer:
        assert answer.status == 400

    async def scenario() -> None:
        ws = await WsSubscriber.open(f"{service.url}/v1/events/ws")
        try:
            await ws.send({"op": "subscribe", "prefix": prefix})
            assert (await ws.until("error"))["code"] == "too_many_streams"
            # Within the bound it works, and a new stream past it is refused by name.
            await ws.send({"op": "subscribe", "streams": [f"{prefix}{k}" for k in range(2)]})
            await ws.until("subscribed")
            await ws.send({"op": "subscribe", "prefix": f"{stream_id}-n-"})
            await ws.until("subscribed")
            _post(service, f"{stream_id}-n-1")
            assert (await ws.events(1))[0]["stream"] == f"{stream_id}-n-1"  # the third: followed
            _post(service, f"{stream_id}-n-2")
            error = await ws.until("error")
            assert error["code"] == "too_many_streams" and error["stream"] == f"{stream_id}-n-2"
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_multi_stream_sse_resumes_every_stream_from_the_cursor(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    env = {"REDIS_URL": redis_server.url}
    one, two = service_factory(env=env), service_factory(env=env)
    a, b, c = (f"{stream_id}-{k}" for k in "abc")
    ga = _post(one, a, 2)["generation"]  # before the subscription: not sent (live)
    url = f"{two.url}/v1/models/elnino/events?streams={a},{b},{c}"
    with SseStream(url) as events:
        assert events.status == 200
        first = events.next()
        assert first is not None and first.kind == "streams"
        assert first.json() == {"streams": [a, b, c]}
        assert first.id == f"{a}~{ga}-2,{b}~0-0,{c}~0-0"  # where each stream starts
        _post(one, a, 1)
        gb = _post(one, b, 2)["generation"]
        got = _data(events.take(3))
        bodies = [e.json() for e in got]
        assert [(d["stream"], d["seq"]) for d in bodies] == [(a, 3), (b, 1), (b, 2)]
        cursor = got[-1].id or ""
        assert sorted(cursor.split(",")) == sorted([f"{a}~{ga}-3", f"{b}~{gb}-2", f"{c}~0-0"])
        middle = got[1].id or ""
    # Meanwhile every stream moves on, c for the first time.
    _post(one, a, 1)
    _post(one, b, 1)
    gc = _post(one, c, 2)["generation"]
    with SseStream(url, {"Last-Event-ID": cursor}) as resumed:
        got = _data(resumed.take(5))
        seen = sorted((e.json()["stream"], e.json()["seq"]) for e in got if e.data)
        assert seen == [(a, 4), (b, 3), (c, 1), (c, 2)]
        assert got[-1].id is not None and f"{c}~{gc}-2" in got[-1].id.split(",")
    # An older cursor (taken mid-batch) resumes exactly after that event; ?after= works too.
    with SseStream(url + "&after=" + middle) as again:
        got = [e for e in _data(again.take(6)) if e.data]
        assert sorted((e.json()["stream"], e.json()["seq"]) for e in got) == [
            (a, 4), (b, 2), (b, 3), (c, 1), (c, 2),
        ]  # fmt: skip
    for query, status in [("", 400), ("streams=a&prefix=b", 400), ("streams=a&after=x", 400)]:
        with SseStream(f"{two.url}/v1/events?{query}") as answer:
            assert answer.status == status, query
            assert answer.body()["error"]["code"] == "invalid_request"


def test_multi_stream_sse_prefix_sends_streams_that_begin_later(
    service: ServiceProcess, stream_id: str
) -> None:
    prefix = f"{stream_id}-s-"
    with SseStream(f"{service.url}/v1/events?prefix={prefix}") as events:
        first = events.next()
        assert first is not None and first.kind == "streams" and first.json()["streams"] == []
        generation = _post(service, prefix + "late", 2)["generation"]
        got = events.take(3)
        kinds = [e.kind for e in got]
        assert kinds.count("message") == 2 and kinds.count("streams") == 1
        data = [e.json() for e in got if e.kind == "message"]
        assert [(d["stream"], d["generation"], d["seq"]) for d in data] == [
            (prefix + "late", generation, 1),
            (prefix + "late", generation, 2),
        ]


@pytest.mark.slow
def test_a_redis_restart_under_websocket_and_sse_subscribers_loses_no_event(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    redis = redis_factory()
    service = service_factory(env={"REDIS_URL": redis.url})
    a, b = f"{stream_id}-a", f"{stream_id}-b"

    def post_retrying(stream: str, seq: int) -> int:
        deadline = time.monotonic() + 20
        while True:
            answer = call(
                "POST",
                f"{service.url}/v1/streams/{stream}/readings",
                {"values": [24.0], "seq": seq},
            )
            if answer.status == 200 or time.monotonic() > deadline:
                assert answer.status == 200, answer.body
                return int(answer.body["generation"])
            time.sleep(0.2)

    async def scenario() -> None:
        ws = await WsSubscriber.open(_ws_url(service))
        sse = SseStream(f"{service.url}/v1/events?streams={a},{b}", timeout=30)
        try:
            await ws.send({"op": "subscribe", "streams": [a, b]})
            await ws.until("subscribed")
            ga = await asyncio.to_thread(post_retrying, a, 1)
            gb = await asyncio.to_thread(post_retrying, b, 1)
            assert _ids(await ws.events(2)) == [(a, f"{ga}-1"), (b, f"{gb}-1")]
            redis.kill()
            redis.start()
            for seq in range(2, 6):
                await asyncio.to_thread(post_retrying, a, seq)
                await asyncio.to_thread(post_retrying, b, seq)
            got = await ws.events(8, timeout=30)
            assert [i for s, i in _ids(got) if s == a] == [f"{ga}-{k}" for k in range(2, 6)]
            assert [i for s, i in _ids(got) if s == b] == [f"{gb}-{k}" for k in range(2, 6)]
            events = await asyncio.to_thread(lambda: _data(sse.take(11)))
            seen = [(e.json()["stream"], e.json()["seq"]) for e in events if e.data]
            assert sorted(seen) == sorted((s, k) for s in (a, b) for k in range(1, 6))
        finally:
            sse.close()
            await ws.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_few_hundred_mixed_subscribers_each_get_every_event(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    # A quickish heartbeat: an SSE subscriber that left is noticed at the next write. (Not much
    # quicker: a WebSocket that does not answer a ping within half of it is closed.)
    service = service_factory("--sse-heartbeat-s", "3", env={"REDIS_URL": redis_server.url})
    streams = [f"{stream_id}-{k}" for k in range(4)]
    count, rounds = 300, 3

    async def scenario() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        ready: list[int] = []

        async def subscriber(
            session: aiohttp.ClientSession, k: int, mine: list[str]
        ) -> list[tuple[str, int]]:
            """Subscribes, then reads all along (a WebSocket answers pings as it reads)."""
            got: list[tuple[str, int]] = []
            if k % 2:
                async with session.ws_connect(f"{service.url}/v1/events/ws") as ws:
                    await ws.send_json({"op": "subscribe", "streams": mine})
                    while len(got) < 2 * rounds:
                        body = await ws.receive_json(timeout=60)
                        if body["type"] == "subscribed":
                            ready.append(k)
                        elif body["type"] == "event":
                            got.append((body["stream"], body["seq"]))
                        else:
                            assert body["type"] == "streams", body
                return got
            url = f"{service.url}/v1/events?streams={','.join(mine)}"
            async with session.get(url) as answer:
                assert answer.status == 200, await answer.text()
                while len(got) < 2 * rounds:
                    line = await asyncio.wait_for(answer.content.readline(), 60)
                    if line.startswith(b"event: streams"):
                        ready.append(k)
                    elif line.startswith(b'data: {"model"'):
                        body = json.loads(line[6:])
                        got.append((body["stream"], body["seq"]))
            return got

        async with aiohttp.ClientSession(connector=connector) as session:
            mine = [[streams[k % 4], streams[(k + 1) % 4]] for k in range(count)]
            tasks = [asyncio.create_task(subscriber(session, k, mine[k])) for k in range(count)]
            deadline = time.monotonic() + 60
            while len(ready) < count and time.monotonic() < deadline:
                done = [t for t in tasks if t.done()]
                assert not done, done[0].result()
                await asyncio.sleep(0.05)
            samples = await asyncio.to_thread(scrape_metrics, service.url)
            assert metric(samples, "lstm_subscribers", transport="ws") == count // 2
            assert metric(samples, "lstm_subscribers", transport="sse") == count // 2
            assert metric(samples, "lstm_subscribed_streams") == 4
            for _ in range(rounds):
                await asyncio.to_thread(
                    call,
                    "POST",
                    f"{service.url}/v1/readings",
                    {"readings": [{"stream": s, "values": [24.0]} for s in streams]},
                )
            results = await asyncio.gather(*tasks)
            for k, got in enumerate(results):
                assert sorted(got) == sorted((s, r) for s in mine[k] for r in range(1, rounds + 1))

    asyncio.run(scenario())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        samples = scrape_metrics(service.url)
        left = [
            metric(samples, "lstm_subscribed_streams"),
            *(metric(samples, "lstm_subscribers", transport=t) for t in ("ws", "sse")),
        ]
        if left == [0, 0, 0]:
            break
        time.sleep(0.1)
    assert metric(samples, "lstm_subscribers", transport="ws") == 0
    assert metric(samples, "lstm_subscribers", transport="sse") == 0
    assert metric(samples, "lstm_subscribed_streams") == 0


def test_shutdown_closes_websocket_subscribers_with_a_reason(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(env={"REDIS_URL": redis_server.url})

    async def scenario() -> None:
        ws = await WsSubscriber.open(f"{service.url}/v1/events/ws")
        try:
            await ws.send({"op": "subscribe", "streams": [stream_id]})
            await ws.until("subscribed")
            started = time.monotonic()
            assert await asyncio.to_thread(service.stop) == 0
            assert time.monotonic() - started < 10
            closed = await ws.until("closed")
            assert closed["code"] == "shutting_down"
            assert await ws.next() is None
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_plain_get_on_the_websocket_path_is_a_json_error(service: ServiceProcess) -> None:
    answer = call("GET", f"{service.url}/v1/events/ws")
    assert answer.status == 400 and answer.body["error"]["code"] == "invalid_request"
