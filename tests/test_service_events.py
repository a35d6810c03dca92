"""Prediction events over Server-Sent Events, with real Redis and two service processes: delivery
across processes in order, resume without loss or repeats, replay, gaps said out loud, new ids for
a restarted stream, slow subscribers, Redis restarts and shutdown."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from service_harness import RedisServer, ServiceProcess, call
from sse_client import SseEvent, SseStream


@pytest.fixture
def two_services(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> list[ServiceProcess]:
    env = {"REDIS_URL": redis_server.url}
    args = ("--sse-heartbeat-s", "0.5")
    return [service_factory(*args, env=env), service_factory(*args, env=env)]


def _post(service: ServiceProcess, stream: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = call("POST", f"{service.url}/v1/streams/{stream}/readings", body)
    assert answer.status == 200, answer.body
    return dict(answer.body)


def _events_url(service: ServiceProcess, stream: str, query: str = "") -> str:
    return f"{service.url}/v1/models/elnino/streams/{stream}/events" + (
        f"?{query}" if query else ""
    )


def _ids(events: list[SseEvent]) -> list[str]:
    return [e.id or "" for e in events]


def test_events_reach_a_subscriber_of_another_process_in_order(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    poster, listener = two_services
    with SseStream(_events_url(listener, stream_id)) as events:
        assert events.status == 200
        assert events.headers["Content-Type"] == "text/event-stream"
        posted: list[tuple[int, list[float], list[float], Any]] = []  # seq, values, prediction, ts
        for k in range(12):
            values = [20.0 + k / 4]
            answer = _post(poster, stream_id, {"values": values, "seq": k + 1, "ts": 1e9 + k})
            posted.append((k + 1, values, answer["results"][0]["prediction"], 1e9 + k))
        several = [{"values": [25.0 + k], "seq": 13 + k} for k in range(3)]
        answer = _post(poster, stream_id, {"readings": several})
        for item, result in zip(several, answer["results"], strict=True):
            posted.append((result["seq"], item["values"], result["prediction"], None))
        bulk = call(
            "POST",
            f"{poster.url}/v1/readings",
            {"readings": [{"stream": stream_id, "values": [21.5]}]},
        )
        result = bulk.body["results"][0]["results"][0]
        posted.append((result["seq"], [21.5], result["prediction"], None))
        generation = answer["generation"]

        got = events.take(len(posted))
        assert _ids(got) == [f"{generation}-{seq}" for seq, *_ in posted]
        for event, (seq, values, prediction, ts) in zip(got, posted, strict=True):
            body = event.json()
            assert event.kind == "message"
            assert body["model"] == "elnino" and body["stream"] == stream_id
            assert re.fullmatch(r"[0-9a-f]{16}", body["model_version"])
            assert (body["generation"], body["seq"]) == (generation, seq)
            assert body["values"] == values
            assert body["prediction"] == prediction  # exactly what the POST answered
            assert abs(body["ts"] - time.time()) < 120
            assert body.get("reading_ts") == ts
        # Heartbeats keep a quiet stream open.
        time.sleep(1.2)
        _post(poster, stream_id, {"values": [22.0]})
        assert events.take(1)[0].id == f"{generation}-{len(posted) + 1}"
        assert events.comments >= 1


def test_resuming_after_a_dropped_connection_loses_and_repeats_nothing(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    a, b = two_services
    with SseStream(_events_url(a, stream_id)) as first:
        generation = _post(b, stream_id, {"values": [24.0]})["generation"]
        for k in range(9):
            _post(b, stream_id, {"values": [24.0 + k / 10]})
        seen = first.take(5)
    assert _ids(seen) == [f"{generation}-{k}" for k in range(1, 6)]
    for k in range(10):  # posted while nobody listens
        _post(a, stream_id, {"values": [23.0 + k / 10]})

    expected = [f"{generation}-{k}" for k in range(6, 21)]
    with SseStream(_events_url(b, stream_id), {"Last-Event-ID": seen[-1].id or ""}) as again:
        assert _ids(again.take(15)) == expected
        _post(a, stream_id, {"values": [22.0]})
        assert _ids(again.take(1)) == [f"{generation}-21"]  # then live, with nothing repeated
    with SseStream(_events_url(a, stream_id, f"after={generation}-5")) as by_query:
        assert _ids(by_query.take(16)) == [*expected, f"{generation}-21"]
    # A reconnecting EventSource repeats its URL: the header wins over the query.
    header = {"Last-Event-ID": f"{generation}-19"}
    with SseStream(_events_url(a, stream_id, f"after={generation}-5"), header) as both:
        assert _ids(both.take(2)) == [f"{generation}-20", f"{generation}-21"]


def test_replay_from_the_start_and_gaps_said_out_loud(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory("--events-max-len", "5", env={"REDIS_URL": redis_server.url})
    generation = _post(service, stream_id, {"readings": [{"values": [24.0]}] * 12})["generation"]
    held = [f"{generation}-{k}" for k in range(8, 13)]
    with SseStream(_events_url(service, stream_id, "from=start")) as replay:
        assert _ids(replay.take(5)) == held
    with SseStream(_events_url(service, stream_id, f"after={generation}-2")) as behind:
        gap = behind.next()
        assert gap is not None and gap.kind == "gap" and gap.id is None
        body = gap.json()
        assert body["after"] == f"{generation}-2"
        assert body["lost_through"] == f"{generation}-7"
        assert body["first_held"] == f"{generation}-8"
        assert "5 events" in body["message"]
        assert _ids(behind.take(5)) == held
    # An id from the log's own range is not a gap.
    with SseStream(_events_url(service, stream_id, f"after={generation}-9")) as fine:
        assert _ids(fine.take(3)) == held[2:]
    # A stream with no log at all says so rather than waiting in silence.
    with SseStream(_events_url(service, "never-written-" + stream_id, "after=5-5")) as none:
        gap = none.next()
        assert gap is not None and gap.kind == "gap" and gap.json()["lost_through"] is None


def test_ending_a_stream_and_starting_it_again_gives_new_ids(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    a, b = two_services
    with SseStream(_events_url(a, stream_id)) as events:
        first = _post(b, stream_id, {"readings": [{"values": [24.0]}] * 3})["generation"]
        assert call("DELETE", f"{b.url}/v1/streams/{stream_id}").status == 204
        second = _post(b, stream_id, {"readings": [{"values": [24.0]}] * 2})["generation"]
        assert second > first
        expected = [f"{first}-1", f"{first}-2", f"{first}-3", f"{second}-1", f"{second}-2"]
        assert _ids(events.take(5)) == expected
    with SseStream(_events_url(b, stream_id), {"Last-Event-ID": f"{first}-3"}) as resumed:
        assert _ids(resumed.take(2)) == expected[3:]


def test_bad_requests_get_json_errors(service: ServiceProcess, stream_id: str) -> None:
    cases = {
        "after=12": "invalid_request",
        "after=a-b": "invalid_request",
        "from=end": "invalid_request",
        "since=1-1": "invalid_request",
    }
    for query, code in cases.items():
        with SseStream(_events_url(service, stream_id, query)) as answer:
            assert answer.status == 400, query
            assert answer.body()["error"]["code"] == code
    with SseStream(f"{service.url}/v1/models/nope/streams/{stream_id}/events") as answer:
        assert answer.status == 404 and answer.body()["error"]["code"] == "model_not_found"
    with SseStream(f"{service.url}/v1/streams/bad%20id/events") as answer:
        assert answer.status == 400 and answer.body()["error"]["code"] == "invalid_stream_id"
    head = call("HEAD", _events_url(service, stream_id), timeout=5)
    assert head.status == 405 and head.headers["Allow"] == "GET"


def _closed_too_slow(service: ServiceProcess) -> float:
    metrics = call("GET", service.url + "/metrics").body
    found = re.search(r'^lstm_subscribers_closed_total\{reason="too_slow"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_a_slow_subscriber_is_closed_with_a_reason_and_resumes_without_loss(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(
        "--subscriber-buffer-events",
        "50",
        "--events-max-len",
        "5000",
        env={"REDIS_URL": redis_server.url},
    )
    total = 4000
    fast_got: list[SseEvent] = []
    slow = SseStream(_events_url(service, stream_id), rcvbuf=4096)  # and never read, for now
    fast = SseStream(_events_url(service, stream_id))
    reader = threading.Thread(target=lambda: fast_got.extend(fast.take(total)))
    reader.start()
    generation = 0
    for _ in range(total // 500):
        generation = _post(service, stream_id, {"readings": [{"values": [24.0]}] * 500})[
            "generation"
        ]
    reader.join(timeout=60)
    fast.close()
    # The fast subscriber got everything, in order, while the slow one sat on its events.
    assert _ids(fast_got) == [f"{generation}-{k}" for k in range(1, total + 1)]
    deadline = time.monotonic() + 20
    while _closed_too_slow(service) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _closed_too_slow(service) == 1

    # Now the slow reader reads: a prefix of the events, then why it was closed, then the end.
    got: list[SseEvent] = []
    while (event := slow.next()) is not None:
        got.append(event)
    slow.close()
    closed = got.pop()
    assert closed.kind == "closed" and closed.json()["code"] == "subscriber_too_slow"
    assert "Last-Event-ID" in closed.json()["message"]
    assert 0 < len(got) < total
    assert _ids(got) == [f"{generation}-{k}" for k in range(1, len(got) + 1)]
    with SseStream(_events_url(service, stream_id), {"Last-Event-ID": got[-1].id or ""}) as rest:
        assert _ids(rest.take(total - len(got))) == [
            f"{generation}-{k}" for k in range(len(got) + 1, total + 1)
        ]


@pytest.mark.slow
def test_a_redis_restart_under_a_subscriber_loses_no_event(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    redis = redis_factory()
    service = service_factory(env={"REDIS_URL": redis.url})
    with SseStream(_events_url(service, stream_id), timeout=30) as events:
        generation = _post(service, stream_id, {"values": [24.0], "seq": 1})["generation"]
        assert _ids(events.take(1)) == [f"{generation}-1"]
        redis.kill()
        redis.start()  # its append-only file brings back state and log
        for seq in range(2, 8):
            deadline = time.monotonic() + 20
            while True:  # a sensor retrying with its seq until Redis is back
                answer = call(
                    "POST",
                    f"{service.url}/v1/streams/{stream_id}/readings",
                    {"values": [24.0], "seq": seq},
                )
                if answer.status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert answer.status == 200, answer.body
        assert _ids(events.take(6)) == [f"{generation}-{k}" for k in range(2, 8)]


def test_shutdown_ends_event_streams_with_a_reason(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(env={"REDIS_URL": redis_server.url})
    events = SseStream(_events_url(service, stream_id))
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 10  # not held until the shutdown timeout
    closed = events.next()
    assert closed is not None and closed.kind == "closed"
    assert closed.json()["code"] == "shutting_down"
    assert events.next() is None
    events.close()
