"""SIGTERM under load: the service stops taking work, finishes every reading it accepted, stops its
private redis-server and exits 0. What clients saw and what Redis holds must agree: a reading
answered 200 was applied, and a reading applied was answered 200 or failed in a way a client
retries (a 503 with Retry-After, or no answer at all: refused, reset or cut connections)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis
from service_harness import ServiceProcess, call

STREAMS = 24
SIGNAL_AFTER = 300  # readings answered before SIGTERM, so that it lands mid-load


@dataclass
class Stream:
    """What one sequential client saw: the last seq answered 200, and every other outcome."""

    name: str
    answered: int = 0
    last_failure: dict[int, str] = field(default_factory=dict)  # seq -> "503" / "no answer"
    refused: list[tuple[int, int, object]] = field(default_factory=list)  # not retryable


class Load:
    def __init__(self, service: ServiceProcess, prefix: str) -> None:
        self.service = service
        self.streams = [Stream(f"{prefix}-{k}") for k in range(STREAMS)]
        self.total_answered = 0
        self.exited = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                self._signal_mid_load(),
                *(self._client(session, s) for s in self.streams),
            )

    async def _signal_mid_load(self) -> None:
        while self.total_answered < SIGNAL_AFTER:
            await asyncio.sleep(0.002)
        process = self.service.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        while process.poll() is None:
            await asyncio.sleep(0.01)
        self.exited.set()

    async def _client(self, session: aiohttp.ClientSession, stream: Stream) -> None:
        """Send seq 1, 2, 3, ... retrying a seq until it is answered, as a sensor would."""
        url = f"{self.service.url}/v1/streams/{stream.name}/readings"
        seq = 1
        while not self.exited.is_set():
            try:
                async with session.post(url, json={"values": [24.0], "seq": seq}) as answer:
                    status = answer.status
                    body = await answer.json()
                    retry_after = answer.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                stream.last_failure[seq] = "no answer"  # refused, reset or cut: not answered
                await asyncio.sleep(0.01)
                continue
            if status == 200:
                assert body["results"][0]["seq"] == seq
                stream.answered = seq
                self.total_answered += 1
                seq += 1
            elif status == 503 and retry_after is not None:
                stream.last_failure[seq] = "503"
                await asyncio.sleep(0.01)
            else:
                stream.refused.append((seq, status, body))
                return


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_loses_nothing_and_exits_0(
    workers: int, service_factory: Callable[..., ServiceProcess], tmp_path: Path, stream_id: str
) -> None:
    data = tmp_path / "redis-data"  # kept, so that a second service can read what was applied
    service = service_factory("--workers", str(workers), "--redis-dir", str(data))
    if workers > 1:  # the harness returns once one worker answers; load both
        while "workers serving on" not in service.log():
            time.sleep(0.05)
    load = Load(service, stream_id)
    asyncio.run(load.run())
    assert service.stop() == 0, service.log()
    log = service.log()
    assert "stopping" in log
    private = re.search(r"a private .+ server \(.+\) on 127\.0\.0\.1:(\d+)", log)
    assert private is not None
    with pytest.raises(redis.ConnectionError):  # stopped with the service: no orphan
        redis.Redis(port=int(private.group(1)), socket_connect_timeout=1).ping()

    # What was applied, read by a fresh service over the same (persisted) Redis data.
    reader = service_factory("--redis-dir", str(data))
    for stream in load.streams:
        assert not stream.refused, (stream.name, stream.refused)
        state = call("GET", f"{reader.url}/v1/streams/{stream.name}")
        applied = state.body["seq"] if state.status == 200 else 0
        assert applied >= stream.answered, stream  # every answered reading was applied
        # At most the one reading in flight at the stop is applied unanswered, and its client
        # was told to retry (or got no answer), never a final error.
        assert applied <= stream.answered + 1, stream
        if applied == stream.answered + 1:
            assert stream.last_failure[applied] in ("503", "no answer"), stream
    assert load.total_answered >= SIGNAL_AFTER
