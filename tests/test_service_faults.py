"""Faults and lifetimes: Redis dying under load, the service crashing under load, idle streams
expiring, and state written by another model version."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from conftest import DEMO_WEIGHTS_DIR, DemoReference, sea_temperatures
from service_harness import RedisServer, ServiceProcess, call, metric, scrape_metrics

from model_export import Scaling, export


class Feeder:
    """Clients that each send one stream's readings in order with seqs, retrying every 503 or
    broken connection with the same seq, as a careful sensor would."""

    def __init__(self, urls: list[str], streams: list[str], steps: int) -> None:
        self.urls = urls
        self.streams = streams
        self.series = {s: sea_temperatures(steps, seed=hash(s) % 1000) for s in streams}
        self.predictions: dict[str, list[float]] = {s: [] for s in streams}
        self.unavailable: list[dict[str, str]] = []  # headers + code of each 503
        self.broken = 0  # connection errors (a crashed service)
        self.sent = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.gather(*(self._stream(session, s) for s in self.streams))

    async def _stream(self, session: aiohttp.ClientSession, stream: str) -> None:
        for seq, value in enumerate(self.series[stream], start=1):
            attempt = 0
            while True:
                url = self.urls[(seq + attempt) % len(self.urls)]
                path = f"/v1/models/elnino/streams/{stream}/readings"
                attempt += 1
                try:
                    async with session.post(url + path, json={"values": [value], "seq": seq}) as r:
                        body = await r.json()
                        if r.status == 503:
                            self.unavailable.append(
                                {"code": body["error"]["code"], **dict(r.headers)}
                            )
                            await asyncio.sleep(0.05)
                            continue
                        assert r.status == 200, body
                        self.predictions[stream].append(body["results"][0]["prediction"][0])
                        self.sent += 1
                        break
                except (aiohttp.ClientError, TimeoutError):
                    self.broken += 1
                    await asyncio.sleep(0.05)

    def check(self, reference: DemoReference) -> None:
        for stream in self.streams:
            expected = reference.predictions(self.series[stream])
            got = np.array(self.predictions[stream])
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() < reference.tolerance, stream


async def _when(feeder: Feeder, sent: int, action: Callable[[], Awaitable[None]]) -> None:
    while feeder.sent < sent:
        await asyncio.sleep(0.005)
    await action()


@pytest.mark.slow
def test_redis_killed_mid_run_answers_503_then_recovers_with_no_half_step(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    redis = redis_factory()
    service = service_factory(env={"REDIS_URL": redis.url, "LSTM_REDIS_TIMEOUT_S": "0.5"})
    feeder = Feeder([service.url], [f"{stream_id}-{k}" for k in range(8)], steps=60)
    seen_while_down: dict[str, int] = {}

    async def outage() -> None:
        redis.kill()
        await asyncio.sleep(0.8)  # clients keep posting into the outage
        seen_while_down["readyz"] = call("GET", service.url + "/readyz").status
        samples = await asyncio.to_thread(scrape_metrics, service.url)
        seen_while_down["redis_up"] = int(metric(samples, "lstm_redis_up"))
        await asyncio.to_thread(redis.start)  # same port, same append-only file

    async def main() -> None:
        await asyncio.gather(feeder.run(), _when(feeder, 150, outage))

    asyncio.run(main())
    assert feeder.unavailable, "no request met the outage"
    assert {u["code"] for u in feeder.unavailable} == {"redis_unavailable"}
    assert all(u.get("Retry-After") == "1" for u in feeder.unavailable)
    assert seen_while_down["readyz"] == 503
    assert seen_while_down["redis_up"] == 0  # the scrape's own PING says so
    assert call("GET", service.url + "/readyz").status == 200  # recovered without a restart
    # Every stream reached its last seq and every prediction (first answers and retries alike)
    # is the reference's: no step was lost, doubled or half-applied.
    feeder.check(demo_reference)
    for stream in feeder.streams:
        assert call("GET", f"{service.url}/v1/streams/{stream}").body["seq"] == 60
    samples = scrape_metrics(service.url)
    assert metric(samples, "lstm_redis_errors_total", operation="load") > 0
    assert metric(samples, "lstm_redis_up") == 1
    # Every 503 redis_unavailable is counted by its code: the clients' and the /readyz above.
    assert metric(samples, "lstm_http_errors_total", code="redis_unavailable") == (
        len(feeder.unavailable) + 1
    )


@pytest.mark.slow
def test_a_crashed_service_leaves_every_stream_whole(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    env = {"REDIS_URL": redis_server.url}
    doomed, survivor = service_factory(env=env), service_factory(env=env)
    feeder = Feeder([doomed.url, survivor.url], [f"{stream_id}-{k}" for k in range(8)], steps=50)

    async def crash() -> None:
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)  # no chance to finish anything
        feeder.urls = [survivor.url]

    async def main() -> None:
        await asyncio.gather(feeder.run(), _when(feeder, 120, crash))

    asyncio.run(main())
    feeder.check(demo_reference)


def test_idle_streams_expire_after_the_ttl(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory("--state-ttl-s", "0.5", env={"REDIS_URL": redis_server.url})
    url = f"{service.url}/v1/streams/{stream_id}"
    first = call("POST", url + "/readings", {"values": [24.0], "seq": 1}).body
    state = call("GET", url).body
    assert state["expires_at"] is not None
    time.sleep(1.0)
    assert call("GET", url).status == 404
    again = call("POST", url + "/readings", {"values": [24.0], "seq": 1}).body
    assert again["generation"] > first["generation"] and again["results"] == first["results"]


def test_a_ttl_of_zero_never_expires(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(env={"REDIS_URL": redis_server.url, "LSTM_STATE_TTL_S": "0"})
    url = f"{service.url}/v1/streams/{stream_id}"
    call("POST", url + "/readings", {"values": [24.0]})
    assert call("GET", url).body["expires_at"] is None
    assert redis_server.client().pttl(f"lstm:{{elnino:{stream_id}}}:state") == -1


@pytest.fixture(scope="module")
def retrained_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model under the same name, another version (other scaling)."""
    out = tmp_path_factory.mktemp("retrained") / "elnino"
    scaling = Scaling.from_dict(
        {"input_mean": [22.0], "input_std": [2.5], "output_mean": [22.0], "output_std": [2.5]},
        1,
        1,
    )
    export(DEMO_WEIGHTS_DIR / "elnino.npz", out, name="elnino", scaling=scaling)
    return out


def test_state_of_another_model_version_is_refused(
    service: ServiceProcess,
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    retrained_demo: Path,
    stream_id: str,
) -> None:
    old = call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [24.0]}).body
    new = service_factory("--model", str(retrained_demo), env={"REDIS_URL": redis_server.url})
    url = f"{new.url}/v1/streams/{stream_id}"
    refused = call("POST", url + "/readings", {"values": [25.0]})
    assert refused.status == 409
    assert refused.body["error"]["code"] == "model_version_mismatch"
    assert refused.body["error"]["stream_version"] == old["model_version"]
    state = call("GET", url).body
    assert state["seq"] == 1 and state["model_version"] == old["model_version"]  # untouched
    assert call("DELETE", url).status == 204
    fresh = call("POST", url + "/readings", {"values": [25.0]}).body
    assert fresh["results"][0]["seq"] == 1 and fresh["model_version"] != old["model_version"]


def test_state_of_another_model_version_is_reset_when_configured(
    service: ServiceProcess,
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    retrained_demo: Path,
    stream_id: str,
) -> None:
    base = f"/v1/streams/{stream_id}"
    old = call("POST", service.url + base + "/readings", {"values": [24.0], "seq": 7}).body
    new = service_factory(
        "--model", str(retrained_demo), "--on-version-mismatch", "reset",
        env={"REDIS_URL": redis_server.url},
    )  # fmt: skip
    reset = call("POST", new.url + base + "/readings", {"values": [24.0]}).body
    assert reset["generation"] > old["generation"]
    assert reset["results"][0]["seq"] == 1  # a new generation counts from 1, from zero state
    twin = call("POST", new.url + base + "-twin/readings", {"values": [24.0]}).body
    assert reset["results"] == twin["results"]
    # The old version's service now sees the new version's state: refused, never mixed.
    back = call("POST", service.url + base + "/readings", {"values": [24.0]})
    assert back.status == 409 and back.body["error"]["code"] == "model_version_mismatch"


def test_a_full_queue_answers_503_overloaded_and_applies_only_what_it_answered(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(
        "--queue-max-readings", "4", "--request-max-readings", "4",
        env={"REDIS_URL": redis_server.url},
    )  # fmt: skip

    async def flood() -> list[tuple[int, dict[str, str], dict]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as session:

            async def one(k: int) -> tuple[int, dict[str, str], dict]:
                url = f"{service.url}/v1/streams/{stream_id}-{k}/readings"
                async with session.post(url, json={"values": [24.0]}) as r:
                    return r.status, dict(r.headers), await r.json()

            return await asyncio.gather(*(one(k) for k in range(300)))

    answers = asyncio.run(flood())
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 503}, set(statuses)
    samples = scrape_metrics(service.url)
    assert metric(samples, "lstm_http_errors_total", code="overloaded") == statuses.count(503)
    for k, (status, headers, body) in enumerate(answers):
        state = call("GET", f"{service.url}/v1/streams/{stream_id}-{k}")
        if status == 503:
            assert body["error"]["code"] == "overloaded" and headers["Retry-After"] == "1"
            assert state.status == 404  # refused readings were not applied
        else:
            assert state.status == 200 and state.body["seq"] == 1


def test_a_client_that_hangs_up_still_gets_its_step_applied_once(
    service: ServiceProcess, stream_id: str
) -> None:
    body = b'{"values": [24.0], "seq": 1}'
    path = f"/v1/models/elnino/streams/{stream_id}/readings"
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
    # The connection is gone before any answer. The step was accepted, so it is applied...
    deadline = time.monotonic() + 5
    while call("GET", f"{service.url}{path.removesuffix('/readings')}").status != 200:
        assert time.monotonic() < deadline, "the hung-up request was never applied"
        time.sleep(0.02)
    # ...and the client's retry gets its result instead of a second step.
    retry = call("POST", service.url + path, raw=body)
    assert retry.status == 200 and retry.body["duplicate"] is True
    assert call("GET", f"{service.url}{path.removesuffix('/readings')}").body["seq"] == 1


def test_a_service_started_before_its_redis_waits_for_it(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    redis = RedisServer(tmp_path / "late")  # its port is chosen, nothing listens on it yet
    service = service_factory(env={"REDIS_URL": redis.url, "LSTM_REDIS_TIMEOUT_S": "0.5"})
    url = f"{service.url}/v1/streams/{stream_id}"
    early = call("POST", url + "/readings", {"values": [24.0], "seq": 1})
    assert early.status == 503 and early.body["error"]["code"] == "redis_unavailable"
    assert call("GET", service.url + "/readyz").status == 503
    redis.start()
    try:
        assert call("GET", service.url + "/readyz").status == 200
        assert call("POST", url + "/readings", {"values": [24.0], "seq": 1}).status == 200
        assert call("GET", url).body["seq"] == 1
    finally:
        redis.stop()
