"""Two tenants, one Redis, two service processes, real tokens: the same stream ids are different
streams, and nothing of one tenant's reaches the other, over every transport (POST answers, state,
the single-stream SSE route, the WebSocket prefix subscription, both command-line clients)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DemoReference, sea_temperatures
from service_harness import ROOT, RedisServer, ServiceProcess, call
from sse_client import SseStream
from ws_client import WsSubscriber, quiet

from service.core.auth import hash_token
from service.process.tokens_cli import new_token

TENANTS = ("plant-a", "plant-b")


class Tenancy:
    """A tokens file with a read-and-write token per tenant (and for the default tenant), and two
    service processes reading it, on one Redis."""

    def __init__(self, directory: Path, redis: RedisServer) -> None:
        self.tokens = {tenant: new_token() for tenant in (*TENANTS, "default")}
        entries = [
            {"name": f"{t}-rw", "sha256": hash_token(tok), "tenant": t, "scopes": ["write", "read"]}
            for t, tok in self.tokens.items()
        ]
        path = directory / "tokens.json"
        path.write_text(json.dumps({"tokens": entries}))
        env = {"REDIS_URL": redis.url, "LSTM_AUTH_TOKENS": str(path)}
        self.services = [ServiceProcess(directory, env=env).start() for _ in range(2)]

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[tenant]}"}

    def post(self, process: int, tenant: str, stream: str, values: list[float]) -> dict[str, Any]:
        body = {"readings": [{"values": [v]} for v in values]}
        url = f"{self.services[process].url}/v1/streams/{stream}/readings"
        answer = call("POST", url, body, headers=self.headers(tenant))
        assert answer.status == 200, answer.body
        return dict(answer.body)

    def state(self, process: int, tenant: str, stream: str) -> Any:
        url = f"{self.services[process].url}/v1/streams/{stream}"
        return call("GET", url, headers=self.headers(tenant))

    def stop(self) -> None:
        for service in self.services:
            service.stop()


@pytest.fixture
def tenancy(tmp_path: Path, redis_server: RedisServer) -> Iterator[Tenancy]:
    made = Tenancy(tmp_path, redis_server)
    yield made
    made.stop()


def _predictions(answer: dict[str, Any]) -> list[float]:
    return [r["prediction"][0] for r in answer["results"]]


def test_one_stream_id_is_a_stream_per_tenant_across_processes(
    tenancy: Tenancy, stream_id: str, demo_reference: DemoReference
) -> None:
    series = {t: sea_temperatures(12, seed=k) for k, t in enumerate((*TENANTS, "default"))}
    # Interleaved, and each tenant's readings split over both processes.
    for half in (slice(0, 6), slice(6, 12)):
        for k, tenant in enumerate(series):
            tenancy.post((k + half.start) % 2, tenant, stream_id, series[tenant][half])
    for k, (tenant, values) in enumerate(series.items()):
        state = tenancy.state(k % 2, tenant, stream_id)
        assert state.status == 200 and state.body["seq"] == 12
        expected = demo_reference.predictions(values)[-1]
        assert state.body["last_prediction"] == pytest.approx(
            [expected], abs=demo_reference.tolerance
        )
    # A tenant's own stream of another id is not found by the other tenants: never a hint.
    only_a = stream_id + "-only-a"
    tenancy.post(0, "plant-a", only_a, [24.0])
    for tenant in ("plant-b", "default"):
        for process in (0, 1):
            missing = tenancy.state(process, tenant, only_a)
            assert missing.status == 404 and missing.body["error"]["code"] == "stream_not_found"
        gone = call("DELETE", f"{tenancy.services[1].url}/v1/streams/{only_a}",
                    headers=tenancy.headers(tenant))  # fmt: skip
        assert gone.status in (403, 404)  # rw tokens lack admin; either way nothing is deleted
    assert tenancy.state(1, "plant-a", only_a).body["seq"] == 1


def test_events_and_prefix_subscriptions_stay_inside_their_tenant(
    tenancy: Tenancy, stream_id: str
) -> None:
    prefix = stream_id + "-p-"
    shared = prefix + "shared"
    first = {t: tenancy.post(0, t, shared, [20.0 + k]) for k, t in enumerate(TENANTS)}
    a, b = tenancy.services

    async def scenario() -> None:
        # Tenant B follows its prefix on process 1; tenant A's single-stream SSE on process 0.
        url = f"{b.url}/v1/models/elnino/events/ws?access_token={tenancy.tokens['plant-b']}"
        ws = await WsSubscriber.open(url)
        sse = SseStream(
            f"{a.url}/v1/streams/{shared}/events?from=start&access_token={tenancy.tokens['plant-a']}"
        )
        try:
            assert sse.status == 200
            await ws.send({"op": "subscribe", "prefix": prefix, "ref": 1})
            ack = await ws.until("subscribed")
            assert ack["streams"] == [shared]
            # New streams of both tenants under the prefix, and more steps of the shared id.
            tenancy.post(1, "plant-a", prefix + "new-a", [21.0])
            new_b = tenancy.post(0, "plant-b", prefix + "new-b", [22.0, 22.5])
            more_a = tenancy.post(1, "plant-a", shared, [23.0])
            more_b = tenancy.post(0, "plant-b", shared, [24.0])
            got = await ws.events(3)
            expected_b = {
                (prefix + "new-b", f"{new_b['generation']}-1"),
                (prefix + "new-b", f"{new_b['generation']}-2"),
                (shared, f"{more_b['generation']}-2"),
            }
            assert {(e["stream"], e["id"]) for e in got} == expected_b
            assert [m for m in await quiet(ws, 1.0) if m["type"] == "event"] == []
            assert more_b["generation"] == first["plant-b"]["generation"]
            # Tenant A's SSE: its own two steps of the shared id, none of B's.
            seen = []
            while len(seen) < 2:
                event = await asyncio.to_thread(sse.next)
                assert event is not None
                if event.kind == "message":
                    seen.append(event.json())
            gen = first["plant-a"]["generation"]
            assert [(e["generation"], e["seq"], e["values"]) for e in seen] == [
                (gen, 1, [20.0]),
                (more_a["generation"], 2, [23.0]),
            ]
        finally:
            sse.close()
            await ws.close()

    asyncio.run(scenario())


def _client(module: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LSTM_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_line_clients_present_the_tenants_token(
    tenancy: Tenancy, stream_id: str, tmp_path: Path, demo_reference: DemoReference
) -> None:
    values = sea_temperatures(20, seed=5)
    csv = tmp_path / "readings.csv"
    csv.write_text("sst\n" + "\n".join(str(v) for v in values) + "\n")
    out = tmp_path / "predictions.csv"
    url = tenancy.services[0].url
    tenancy.post(1, "plant-b", stream_id, [30.0])  # the same id in the other tenant

    replayed = _client("lstm_clients.replay", tenancy.tokens["plant-a"], str(csv), "--stream",
                       stream_id, "--url", url, "--out", str(out))  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    rows = out.read_text().splitlines()[1:]
    got = np.array([float(r.split(",")[-1]) for r in rows])
    np.testing.assert_allclose(
        got, demo_reference.predictions(values), atol=demo_reference.tolerance
    )
    assert tenancy.tokens["plant-a"] not in replayed.stderr

    tailed = _client("lstm_clients.tail", tenancy.tokens["plant-a"], stream_id, "--from-start",
                     "--count", "20", "--url", tenancy.services[1].url)  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    events = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, 21))
    assert [e["values"][0] for e in events] == values  # tenant A's, not B's 30.0

    refused = _client("lstm_clients.tail", "lstm_not-a-token", stream_id, "--count", "1",
                      "--url", url)  # fmt: skip
    assert refused.returncode == 1 and "401" in refused.stderr
    without = _client("lstm_clients.replay", "", str(csv), "--stream", stream_id, "--url", url)
    assert without.returncode != 0 and "401" in without.stderr
