"""Concurrent requests for one stream, through two service processes sharing one Redis, never lose
or double a step; batching across streams changes no prediction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from conftest import DemoReference, sea_temperatures
from service_harness import RedisServer, ServiceProcess, call, post_all


@pytest.fixture
def two_services(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> list[ServiceProcess]:
    env = {"REDIS_URL": redis_server.url}
    return [service_factory(env=env), service_factory(env=env)]


@pytest.mark.slow
def test_simultaneous_posts_to_one_stream_apply_each_reading_exactly_once(
    two_services: list[ServiceProcess], stream_id: str, demo_reference: DemoReference
) -> None:
    # Whether the two processes' writes collide is up to timing; a burst in which none did would
    # not test the race, so bursts (each on a fresh stream, each checked in full) repeat until
    # one did, a few times at most.
    for attempt in range(4):
        _burst_to_one_stream(two_services, f"{stream_id}-{attempt}", demo_reference)
        if sum(_conflicts(s) for s in two_services) > 0:
            break
    # The two processes really raced: some of their writes lost a compare-and-set and were redone.
    assert sum(_conflicts(s) for s in two_services) > 0


def _burst_to_one_stream(
    two_services: list[ServiceProcess], stream_id: str, demo_reference: DemoReference
) -> None:
    n = 400
    values = sea_temperatures(n, seed=3)
    requests = [
        (
            f"{two_services[k % 2].url}/v1/models/elnino/streams/{stream_id}/readings",
            {"values": [v]},
        )
        for k, v in enumerate(values)
    ]
    answers = asyncio.run(post_all(requests))
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    seqs = [body["results"][0]["seq"] for _, body in answers]
    assert sorted(seqs) == list(range(1, n + 1))  # every step once: none lost, none doubled
    assert len({body["generation"] for _, body in answers}) == 1

    # Replay the readings in the order the service applied them: step k's prediction must be
    # what k sequential steps give.
    by_seq = sorted(zip(seqs, values, answers, strict=True))
    applied_order = [v for _, v, _ in by_seq]
    expected = demo_reference.predictions(applied_order)
    got = np.array([body["results"][0]["prediction"][0] for _, _, (_, body) in by_seq])
    assert np.abs(got - expected).max() < demo_reference.tolerance

    state = call("GET", f"{two_services[0].url}/v1/models/elnino/streams/{stream_id}").body
    assert state["seq"] == n


def _conflicts(service: ServiceProcess) -> float:
    for line in call("GET", service.url + "/metrics").body.splitlines():
        if line.startswith("lstm_cas_conflicts_total "):
            return float(line.split()[1])
    raise AssertionError("no lstm_cas_conflicts_total in /metrics")


@pytest.mark.slow
def test_a_retry_storm_of_one_reading_applies_it_once(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    path = f"/v1/models/elnino/streams/{stream_id}/readings"
    call("POST", two_services[0].url + path, {"values": [24.0], "seq": 1})
    body = {"values": [25.0], "seq": 2}
    answers = asyncio.run(post_all([(s.url + path, body) for s in two_services] * 50))
    assert all(status == 200 for status, _ in answers)
    fresh = [b for _, b in answers if not b.get("duplicate")]
    assert len(fresh) == 1  # applied by exactly one request; the other 99 were answered as retries
    assert all(b["results"] == fresh[0]["results"] for _, b in answers)
    assert call("GET", two_services[1].url + path.removesuffix("/readings")).body["seq"] == 2


@pytest.mark.slow
def test_many_streams_at_once_match_each_stream_alone(
    two_services: list[ServiceProcess], stream_id: str, demo_reference: DemoReference
) -> None:
    streams, steps = 64, 15
    series = [sea_temperatures(steps, seed=100 + s) for s in range(streams)]

    async def feed() -> list[list[float]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:

            async def one_stream(s: int) -> list[float]:
                out = []
                for k, v in enumerate(series[s], start=1):
                    url = two_services[(s + k) % 2].url
                    path = f"/v1/models/elnino/streams/{stream_id}-{s}/readings"
                    async with session.post(url + path, json={"values": [v], "seq": k}) as answer:
                        body = await answer.json()
                        assert answer.status == 200, body
                        out.append(body["results"][0]["prediction"][0])
                return out

            return await asyncio.gather(*(one_stream(s) for s in range(streams)))

    results = asyncio.run(feed())
    for s in range(streams):
        expected = demo_reference.predictions(series[s])
        assert np.abs(np.array(results[s]) - expected).max() < demo_reference.tolerance


@pytest.mark.slow
def test_ending_a_stream_while_it_is_being_fed_splits_it_into_two_whole_generations(
    two_services: list[ServiceProcess], stream_id: str, demo_reference: DemoReference
) -> None:
    n = 300
    values = sea_temperatures(n, seed=4)
    state_url = f"{two_services[0].url}/v1/models/elnino/streams/{stream_id}"

    posts = [
        (
            f"{two_services[k % 2].url}/v1/models/elnino/streams/{stream_id}/readings",
            {"values": [v]},
        )
        for k, v in enumerate(values)
    ]

    async def feed_and_end() -> list[tuple[int, dict[str, Any]]]:
        async def end() -> None:
            async with aiohttp.ClientSession() as session, session.delete(state_url) as answer:
                assert answer.status == 204

        # A third before the end, a third racing with it, a third after it.
        third = n // 3
        before = await post_all(posts[:third], limit=50)
        racing, _ = await asyncio.gather(post_all(posts[third : 2 * third], limit=50), end())
        after = await post_all(posts[2 * third :], limit=50)
        return [*before, *racing, *after]

    answers = asyncio.run(feed_and_end())
    assert all(status == 200 for status, _ in answers)
    generations: dict[int, list[tuple[int, float, float]]] = {}
    for (_, body), v in zip(answers, values, strict=True):
        result = body["results"][0]
        generations.setdefault(body["generation"], []).append(
            (result["seq"], v, result["prediction"][0])
        )
    assert len(generations) == 2  # the old life and the new one, each whole
    for steps in generations.values():
        steps.sort()
        # Each generation is whole: seqs 1..k with no gap, and each prediction follows from
        # exactly the readings before it in that generation, from zero state.
        assert [s for s, _, _ in steps] == list(range(1, len(steps) + 1))
        expected = demo_reference.predictions([v for _, v, _ in steps])
        assert (
            np.abs(np.array([p for _, _, p in steps]) - expected).max() < demo_reference.tolerance
        )


def test_a_retry_is_answered_from_redis_not_from_a_process_cached_record(
    two_services: list[ServiceProcess], stream_id: str
) -> None:
    """Process A caches the record it wrote; the stream is then ended and started again through
    process B up to the same seq. A retry of that seq sent to A must be the new generation's
    stored answer: A's cached record is stale, and an answer that writes nothing never comes
    from it."""
    a, b = two_services
    path = f"/v1/models/elnino/streams/{stream_id}"
    first = call("POST", a.url + path + "/readings", {"values": [24.0], "seq": 1})
    assert first.status == 200
    assert call("DELETE", b.url + path).status == 204
    second = call("POST", b.url + path + "/readings", {"values": [30.0], "seq": 1})
    assert second.status == 200 and second.body["generation"] != first.body["generation"]
    retry = call("POST", a.url + path + "/readings", {"values": [30.0], "seq": 1})
    assert retry.status == 200 and retry.body.get("duplicate") is True
    assert retry.body["generation"] == second.body["generation"]
    assert retry.body["results"] == second.body["results"]
    # and a new step through A continues B's generation, not A's cached one
    step = call("POST", a.url + path + "/readings", {"values": [29.0], "seq": 2})
    assert step.status == 200 and step.body["generation"] == second.body["generation"]
    assert call("GET", a.url + path).body["seq"] == 2
