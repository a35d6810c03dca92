"""Redis that fails over, and what the failover tests run against it: a primary with replicas
watched by Redis Sentinel (real ``redis-server --sentinel`` processes); clients that post their own
streams' readings in order with seqs, retrying as a careful sensor would; subscribers that follow
streams over SSE and WebSocket and resume by id whenever the service ends their connection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from conftest import sea_temperatures
from service_harness import RedisServer, free_port

# -- Redis Sentinel -------------------------------------------------------------------------------


class SentinelServer:
    """One ``redis-server --sentinel`` process watching ``service`` on ``primary``; with ``tls``
    ({"cert", "key", "ca"}) it serves TLS only and talks TLS to the servers it watches."""

    def __init__(
        self,
        directory: Path,
        service: str,
        primary: RedisServer,
        password: str,
        quorum: int,
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        directory.mkdir(parents=True, exist_ok=True)
        listen = f"port {self.port}\n"
        if tls:
            listen = (
                f"port 0\ntls-port {self.port}\ntls-cert-file {tls['cert']}\n"
                f"tls-key-file {tls['key']}\ntls-ca-cert-file {tls['ca']}\n"
                "tls-auth-clients no\ntls-replication yes\n"
            )
        # Short timings, so that a failover takes about two seconds: the primary is down after
        # 500 ms without an answer, and a failover gets 2 s before another may be tried.
        (directory / "sentinel.conf").write_text(
            f"{listen}bind 127.0.0.1\ndir {directory}\nlogfile sentinel.log\n"
            f"requirepass {password}\nsentinel sentinel-pass {password}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary.port} {quorum}\n"
            f"sentinel auth-pass {service} {primary.password}\n"
            f"sentinel down-after-milliseconds {service} 500\n"
            f"sentinel failover-timeout {service} 2000\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        self.process = subprocess.Popen(
            ["redis-server", str(self.directory / "sentinel.conf"), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                # Sentinels find each other by what they publish every 2 s; 250 ms is quicker.
                self.client().execute_command("SENTINEL", "DEBUG", "publish-period", 250)
                return self
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server --sentinel did not start") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls["ca"])} if self.tls else {}
        return redis.Redis(port=self.port, password=self.password, socket_timeout=1, **tls)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class RedisSentinelServers:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels that fail it over; with
    ``tls`` ({"cert", "key", "ca"}) every one of them speaks TLS only."""

    def __init__(
        self,
        directory: Path,
        replicas: int = 2,
        sentinels: int = 3,
        service: str = "lstm-primary",
        password: str = "primary-secret",
        sentinel_password: str = "sentinel-secret",
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        # A replica's first sync starts at once (a primary waits 5 s by default for others).
        common = ["--masterauth", password, "--repl-diskless-sync-delay", "0"]
        common += ["--tls-replication", "yes"] if tls else []
        self.primary = RedisServer(directory / "redis-0", password, tls, common)
        replica_of = [*common, "--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replicas = [
            RedisServer(directory / f"redis-{k}", password, tls, replica_of)
            for k in range(1, replicas + 1)
        ]
        quorum = min(2, sentinels)
        self.sentinels = [
            SentinelServer(
                directory / f"sentinel-{k}", service, self.primary, sentinel_password, quorum, tls
            )
            for k in range(sentinels)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"localhost:{s.port}" for s in self.sentinels)
        scheme, tls = "redis+sentinel", ""
        if self.tls:
            scheme, tls = "rediss+sentinel", f"&ssl_ca_certs={self.tls['ca']}"
        return (
            f"{scheme}://:{self.password}@{hosts}/{self.service}/0"
            f"?sentinel_password={self.sentinel_password}{tls}"
        )

    def start(self) -> RedisSentinelServers:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not come to know the whole deployment")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        """Every replica synced, every sentinel knowing them and the other sentinels."""
        for replica in self.replicas:
            if replica.client().info("replication")["master_link_status"] != "up":
                return False
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.service)
            if (
                state["num-slaves"] != len(self.replicas)
                or state["num-other-sentinels"] != len(self.sentinels) - 1
            ):
                return False
        return True

    def named_primary(self) -> RedisServer | None:
        """The server the sentinels name as primary now (None while they disagree)."""
        ports = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            _, port = sentinel.client().sentinel_get_master_addr_by_name(self.service)
            ports.add(int(port))
        if len(ports) != 1:
            return None
        return next((s for s in self.servers if s.port in ports), None)

    def wait_for_failover(self, old: RedisServer, timeout_s: float = 30) -> RedisServer:
        """The replica promoted in place of ``old``, once every sentinel names it and it says
        it is a primary."""
        deadline = time.monotonic() + timeout_s
        while True:
            named = self.named_primary()
            if (
                named is not None
                and named is not old
                and named.client().info("replication")["role"] == "master"
            ):
                return named
            if time.monotonic() > deadline:
                raise AssertionError("Redis Sentinel did not fail over")
            time.sleep(0.02)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


# -- clients that post readings -------------------------------------------------------------------


@dataclass
class Attempt:
    """One POST: when it started and ended (monotonic s), its stream and its outcome."""

    stream: str
    seq: int
    start: float
    end: float
    status: int  # 0: the connection failed
    code: str = ""  # the error code of a 4xx/5xx answer
    retry_after: str | None = None


@dataclass
class StreamRecord:
    """What one stream's client saw."""

    series: list[float]
    acked: dict[tuple[int, int], float] = field(default_factory=dict)  # (gen, seq) -> prediction
    last: int = 0  # the last seq acknowledged
    resent: int = 0  # readings sent again after a 409 seq_gap said the stream was behind


class SeqClients:
    """``clients`` clients, each posting the readings of its own streams in order (one reading
    of each in turn), with seqs, retrying a 503 or a broken connection with the same seq. With
    ``seq_gaps``, a 409 ``seq_gap`` sends the readings after its ``current_seq`` again."""

    def __init__(
        self, url: str, streams: list[list[str]], steps: int = 5000, seq_gaps: bool = False
    ) -> None:
        self.url = url
        self.streams = streams
        self.seq_gaps = seq_gaps
        self.records = {
            s: StreamRecord(sea_temperatures(steps, seed=zlib.crc32(s.encode())))
            for group in streams
            for s in group
        }
        self.attempts: list[Attempt] = []
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=len(self.streams))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session, group) for group in self.streams))

    async def _client(self, session: aiohttp.ClientSession, streams: list[str]) -> None:
        while not self.stopping.is_set():
            for stream in streams:
                await self._post(session, stream)

    async def _post(self, session: aiohttp.ClientSession, stream: str) -> None:
        """The stream's next reading, until it is acknowledged."""
        record = self.records[stream]
        seq = record.last + 1
        while True:
            url = f"{self.url}/v1/streams/{stream}/readings"
            start = time.monotonic()
            try:
                async with session.post(
                    url, json={"values": [record.series[seq - 1]], "seq": seq}
                ) as answer:
                    body: Any = await answer.json()
                    status, headers = answer.status, answer.headers
            except (aiohttp.ClientError, TimeoutError):
                self.attempts.append(Attempt(stream, seq, start, time.monotonic(), 0))
                await asyncio.sleep(0.02)
                continue
            code = body["error"]["code"] if status != 200 else ""
            self.attempts.append(
                Attempt(
                    stream, seq, start, time.monotonic(), status, code, headers.get("Retry-After")
                )
            )
            if status == 200:
                result = body["results"][0]
                record.acked[(body["generation"], seq)] = result["prediction"][0]
                record.last = seq
                return
            if status == 409 and code == "seq_gap" and self.seq_gaps:
                # The stream lost steps it had acknowledged (a failover): send them again.
                current = int(body["error"]["current_seq"])
                record.resent += seq - 1 - current
                record.last = current
                seq = current + 1
                continue
            assert status == 503, body
            await asyncio.sleep(0.02)

    def failures(self, streams: set[str] | None = None) -> list[Attempt]:
        return [
            a for a in self.attempts if a.status != 200 and (streams is None or a.stream in streams)
        ]


# -- subscribers that resume ----------------------------------------------------------------------


@dataclass
class Received:
    """What one subscriber got, per stream: every event's (generation, seq) and prediction in
    the order sent, the gaps it was told of, and why its connections were ended."""

    events: dict[str, list[tuple[tuple[int, int], float]]] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    refused: int = 0  # subscription attempts answered with an error (Redis failing over)

    def add(self, event: dict[str, Any]) -> None:
        key = (int(event["generation"]), int(event["seq"]))
        self.events.setdefault(event["stream"], []).append((key, event["prediction"][0]))

    def last_seq(self, stream: str) -> int:
        got = self.events.get(stream)
        return got[-1][0][1] if got else 0


async def _sse_lines(answer: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str | None, str]]:
    """(kind, id, data) of each event on an SSE response."""
    kind, event_id, data = "message", None, []
    async for raw in answer.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or kind != "message":
                yield kind, event_id, "\n".join(data)
            kind, event_id, data = "message", None, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "event":
                kind = value


async def follow_sse(url: str, got: Received, stop: asyncio.Event) -> None:
    """Follow an SSE route until ``stop``, resuming with Last-Event-ID whenever the service
    ends the connection or refuses it."""
    last_id: str | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=30)) as session:
        while not stop.is_set():
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with session.get(url, headers=headers) as answer:
                    if answer.status != 200:
                        got.refused += 1
                        await asyncio.sleep(0.1)
                        continue
                    async for kind, event_id, data in _sse_lines(answer):
                        if event_id:
                            last_id = event_id
                        if kind == "message":
                            got.add(json.loads(data))
                        elif kind == "gap":
                            got.gaps.append(json.loads(data))
                        elif kind == "closed":
                            got.closed.append(json.loads(data)["code"])
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)


async def follow_ws(url: str, streams: list[str], got: Received, stop: asyncio.Event) -> None:
    """Follow ``streams`` over a WebSocket until ``stop``, from the start of their logs,
    subscribing again after each stream's last id whenever the service ends the connection or
    refuses the subscription."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.ws_connect(url, heartbeat=None) as ws:
                    after = {
                        s: f"{got.events[s][-1][0][0]}-{got.events[s][-1][0][1]}"
                        for s in streams
                        if got.events.get(s)
                    }
                    await ws.send_json(
                        {"op": "subscribe", "streams": streams, "after": after, "from": "start"}
                    )
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        body = message.json()
                        if body["type"] == "event":
                            got.add(body)
                        elif body["type"] == "gap":
                            got.gaps.append(body)
                        elif body["type"] == "closed":
                            got.closed.append(body["code"])
                        elif body["type"] == "error":
                            got.refused += 1
                            break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)


async def read_logs(url: str, finals: dict[str, int]) -> Received:
    """Every event the streams' logs hold (one multi-stream SSE replay), up to each stream's
    final seq."""
    got = Received()
    query = f"streams={','.join(finals)}&from=start"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(f"{url}/v1/events?{query}") as answer,
    ):
        assert answer.status == 200, await answer.text()
        async for kind, _, data in _sse_lines(answer):
            if kind == "message":
                got.add(json.loads(data))
            if all(got.last_seq(s) >= final for s, final in finals.items()):
                return got
    raise AssertionError("the replay ended before every stream's final seq")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
