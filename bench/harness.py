"""What the service benchmarks share: a private redis-server, the service (or the no-op floor)
as a subprocess, and wrk runs parsed into numbers.

Nothing here is imported by the service or its tests; the benchmarks import it as a sibling
module (``python bench/<script>.py`` puts ``bench/`` on the path).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent

# Appended to every wrk script: counts non-200 answers and prints the figures in one parseable
# form (wrk's own summary rounds latencies to two digits).
WRK_REPORT = """
local non200 = 0
local shown = 0
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if shown < 3 then
      shown = shown + 1
      io.stderr:write("non-200 answer: " .. status .. " " .. string.sub(body, 1, 300) .. "\\n")
    end
  end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors_status=%d errors_socket=%d duration_us=%d\\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration))
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("LATENCY p%s=%d\\n", p, latency:percentile(p)))
  end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (Debian: apt-get install wrk redis-server)")


# Commands Redis's command stats leave out of its own time per reading: the benchmark's and the
# service's probes, not the work being measured.
NOT_WORK = ("info", "config", "ping")


def script_commands(*roots: Path) -> set[str]:
    """Every command the service's Lua scripts call (``redis.call('NAME', ...)``) in the
    checkouts ``roots``, in lower case. Redis counts a command a script calls in that command's
    stats and again in the script's own (EVALSHA's time includes it), so a sum over all
    commands leaves these out; the service sends none of them outside a script."""
    found: set[str] = set()
    for root in roots:
        for path in (root / "service").rglob("*.py"):
            found.update(n.lower() for n in re.findall(r"redis\.call\('(\w+)'", path.read_text()))
    return found


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]
    # what the scripts call (see script_commands); a comparison adds its baseline's
    in_scripts: set[str] = field(default_factory=lambda: script_commands(ROOT))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def reset_stats(self) -> None:
        self.client().config_resetstat()

    def command_usec(self) -> dict[str, int]:
        """Microseconds per command since ``reset_stats`` (``INFO commandstats``; a command with
        subcommands under its ``name|subcommand``), every command but NOT_WORK. A script's time
        includes the commands it called, which are also listed on their own."""
        stats = self.client().info("commandstats")
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items()}
        return {k: v for k, v in usec.items() if k.partition("|")[0] not in NOT_WORK}

    def busy_us(self, in_scripts: Iterable[str] | None = None) -> float:
        """Microseconds Redis spent executing commands since ``reset_stats``: every command's
        time but NOT_WORK, each script's counted once with everything it called (the commands in
        ``in_scripts``, by default ``self.in_scripts``, are left out as already counted)."""
        nested = set(self.in_scripts if in_scripts is None else in_scripts)
        return float(
            sum(v for k, v in self.command_usec().items() if k.partition("|")[0] not in nested)
        )


@contextlib.contextmanager
def redis_server(
    work: Path, binary: str = "redis-server", extra: Sequence[str] = ()
) -> Iterator[RedisProcess]:
    """A redis-server (or ``binary``, another Redis-compatible server) of its own, no
    persistence unless ``extra`` says otherwise, in ``work``."""
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
         "--save", "", "--appendonly", "no", "--logfile", f"redis-{port}.log", *extra],
    )  # fmt: skip
    server = RedisProcess(port, process)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.client().ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def http_process(
    argv: Sequence[str],
    work: Path,
    name: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[str]:
    """A server subprocess listening on a free port (``argv`` gets ``--port``); yields its base
    URL once ``/readyz`` answers, and stops it with SIGTERM."""
    port = free_port()
    log = (work / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [*argv, "--port", str(port)],
        env={**os.environ, **(env or {})},
        cwd=cwd,  # `python -m service` runs the service package found here
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextlib.contextmanager
def checkout(ref: str, work: Path) -> Iterator[Path]:
    """A detached work tree of ``ref`` (a commit of this repository) for the duration."""
    tree = work / f"checkout-{ref.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref],
                   check=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False)  # fmt: skip


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non_200: int
    socket_errors: int
    latency_ms: dict[str, float]  # "50", "90", "99", "99.9"

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    script: str,
    url: str,
    work: Path,
    *,
    concurrency: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: int = 10,
) -> WrkResult:
    """One wrk run of ``script`` (its request() or wrk.body; WRK_REPORT is appended)."""
    path = work / f"wrk-{abs(hash(script))}.lua"
    path.write_text(script + WRK_REPORT)
    seconds = max(1, math.ceil(duration_s))  # wrk takes whole seconds
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s",
         "--timeout", f"{timeout_s}s", "-s", str(path), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = dict(re.findall(r"(\w+)=(\d+)", out.split("RESULT", 1)[1]))
    latency = {p: int(us) / 1000 for p, us in re.findall(r"LATENCY p([\d.]+)=(\d+)", out)}
    return WrkResult(
        int(result["requests"]),
        int(result["duration_us"]) / 1e6,
        int(result["errors_status"]),
        int(result["errors_socket"]),
        latency,
    )


def metric_total(base: str, name: str, labels: str = "") -> float:
    """A counter's value from the service's /metrics (0 when absent)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def metric_samples(base: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in the service's /metrics with its labels (label order differs
    between one process and the summed output of several, so they are parsed, not matched)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: list[tuple[dict[str, str], float]] = []
    for labels, value in re.findall(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", text, re.M):
        samples.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)), float(value)))
    return samples


def applied_steps(base: str) -> int:
    return int(metric_total(base, "lstm_readings_total", '{outcome="applied"}'))


def service_argv(workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "service", "--workers", str(workers), *extra]


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """``rows`` (all with the keys of the first, in its order) as a Markdown table, numbers with
    thousands separators, so that a run's output pastes into bench/README.md as it is."""

    def cell(value: object) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
