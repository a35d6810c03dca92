"""Real processes for the service tests: redis-server on a free port in a temporary directory, the
service itself (``python -m service``), and a small HTTP client that returns status, headers and
JSON without raising on 4xx/5xx."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.core.auth import hash_token

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tls_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1, made with openssl."""
    directory.mkdir()
    run = functools.partial(subprocess.run, cwd=directory, check=True, capture_output=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA"])  # fmt: skip
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
         "-out", "server.csr", "-subj", "/CN=localhost"])  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "1", "-out", "server.pem", "-extfile", "san.ext"])  # fmt: skip
    return {
        "cert": directory / "server.pem",
        "key": directory / "server.key",
        "ca": directory / "ca.pem",
    }


class RedisServer:
    """A private redis-server; ``kill`` and ``start`` again keep its port and its data."""

    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        tls: dict[str, Path] | None = None,
        extra_args: list[str] | None = None,
        binary: str = "redis-server",
    ) -> None:
        self.directory = directory
        self.binary = binary  # redis-server, or another Redis-compatible server (valkey-server)
        self.password = password
        self.extra_args = extra_args or []
        self.tls = tls  # {"cert", "key", "ca"}: serve TLS only, on the port
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0?ssl_ca_certs={self.tls['ca']}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # appendfsync always: a SIGKILL loses nothing that was acknowledged, so a test can tell
        # the service's guarantees apart from Redis's own durability window.
        port_args = ["--port", str(self.port)]
        if self.tls:
            port_args = [
                "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                "--tls-cert-file", str(self.tls["cert"]), "--tls-key-file", str(self.tls["key"]),
                "--tls-ca-cert-file", str(self.tls["ca"]),
            ]  # fmt: skip
        args = [
            self.binary,
            *port_args,
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", "redis.log",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client(socket_timeout=0.5).ping()
                return self
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.tls:
            return redis.Redis.from_url(self.url, **kwargs)
        return redis.Redis(port=self.port, password=self.password, **kwargs)

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


class RedisClusterServers:
    """A Redis Cluster made with ``redis-cli --cluster create``: three primaries by default, each
    with ``replicas`` replicas (none by default). ``extra_args`` go to every node."""

    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        extra_args: list[str] | None = None,
        binary: str = "redis-server",
    ) -> None:
        cluster_args = [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), *(extra_args or []),
            # A replica's first sync starts at once (a primary waits 5 s by default for others).
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.replicas = replicas
        # The cluster bus needs a port too (by default port + 10000, which may not exist).
        self.nodes = [
            RedisServer(
                directory / f"node-{k}",
                extra_args=[*cluster_args, "--cluster-port", str(free_port())],
                binary=binary,
            )
            for k in range(nodes * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url  # any node: the client discovers the rest

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(self._ready(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.05)
        return self

    def _ready(self, node: RedisServer) -> bool:
        """The node sees the cluster whole and, as a replica, has synced with its primary (a
        replica that never synced cannot take over)."""
        client = node.client()
        if client.cluster("INFO")["cluster_state"] != "ok":
            return False
        replication = client.info("replication")
        if replication["role"] == "slave":
            return bool(replication["master_link_status"] == "up")
        return bool(replication.get("connected_slaves", 0) == self.replicas)

    def primary_for(self, key: str) -> RedisServer:
        """The node serving ``key`` now, as a running node's slot map says."""
        client = next(n for n in self.nodes if n.process is not None).client()
        slot = client.cluster("KEYSLOT", key)
        for start, end, primary, *_ in client.cluster("SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no node serves {key}")

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON, or None when empty


def call(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, got_headers, payload = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        status, got_headers, payload = exc.code, exc.headers, exc.read()
    text = payload.decode()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Response(status, dict(got_headers.items()), parsed)


class ServiceProcess:
    """``python -m service`` on a free port; its log is kept for failing tests to show."""

    def __init__(
        self,
        log_dir: Path,
        args: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.args = args or []
        # Nothing from the outer environment configures the service: only what the test says.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("LSTM_") and k != "REDIS_URL"
        }
        # Text logs: the log is read by a person when a test fails. Tests of the JSON format
        # (the service's default) ask for it in ``env``.
        self.env = {**inherited, "LSTM_LOG_FORMAT": "text", **(env or {})}
        self.log_path = log_dir / f"service-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "--port", str(self.port), *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited at start-up:\n{self.log()}")
            try:
                if call("GET", self.url + "/healthz", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code


async def post_all(
    requests: list[tuple[str, dict[str, Any]]], limit: int = 1000
) -> list[tuple[int, dict[str, Any]]]:
    """POST every (url, JSON body) at once, up to ``limit`` connections; (status, JSON) each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:

        async def one(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.post(url, json=body) as answer:
                return answer.status, await answer.json()

        return await asyncio.gather(*(one(url, body) for url, body in requests))


def scrape_metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` parsed with the Prometheus text parser: (sample name, labels) -> value."""
    answer = call("GET", url + "/metrics")
    assert answer.status == 200, answer.body
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(answer.body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value; a missing sample is an error, not 0."""
    return samples[(name, frozenset(labels.items()))]


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return children


def json_log_records(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON log, parsed; a line that is not one JSON object fails the test."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def write_tokens_file(
    path: Path,
    tokens: Mapping[str, tuple[str, str, list[str]]],
    tenants: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """A tokens file: ``tokens`` maps an entry's name to (token, tenant, scopes)."""
    doc: dict[str, Any] = {
        "tokens": [
            {"name": name, "sha256": hash_token(token), "tenant": tenant, "scopes": scopes}
            for name, (token, tenant, scopes) in tokens.items()
        ]
    }
    if tenants is not None:
        doc["tenants"] = tenants
    path.write_text(json.dumps(doc, indent=1))
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
