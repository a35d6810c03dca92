"""A private ``redis-server`` for running without ``REDIS_URL``.

It listens only on a Unix socket in its own directory (no TCP port to collide with), keeps an
append-only file there, and is stopped when the service exits. With no data directory configured it
uses a temporary one and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

# A Unix socket path must fit in sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(
            "no REDIS_URL is set and no redis-server is on PATH: install Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
            "or point REDIS_URL at a running server"
        )
    return found


class EmbeddedRedis:
    def __init__(self, data_dir: Path | None) -> None:
        self._owned_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="lstm-serve-redis-")) if data_dir is None else data_dir
        )
        self._socket_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        base = self._socket_dir or self.data_dir
        return base / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = find_redis_server()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"cannot create the Redis directory {self.data_dir}: {exc}"
            ) from None
        if len(str(self.data_dir.resolve() / "redis.sock")) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="lstm-redis-"))
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", "redis.log",
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket_path.exists():
            if self.process.poll() is not None:
                log_file = self.data_dir / "redis.log"
                tail = log_file.read_text(errors="replace")[-500:] if log_file.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited at start-up: {tail.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"redis-server did not start within {timeout_s:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
