"""``lstm-replay``: send a CSV of readings into a stream and write the predictions.

Row k of the CSV (1-based, header excluded) is the reading with ``seq`` k, so a retry or a second
run can never apply a row twice: before it starts, the stream's last applied seq is asked for
and the rows up to it are skipped. Value columns are ``--columns``, or every column but ``ts``
(kept as the reading's own time). Without ``--rate``, rows go ``--batch`` at a time in one request
each (the readings of one stream, all or nothing); with ``--rate HZ``, one reading per request at
that pace. 503s are retried after their Retry-After, connection errors with back-off, each time
with the same seqs. Predictions go to stdout or ``--out`` as CSV: ``seq``, ``ts`` (when the input
has one) and one column per model output. When a run resumes, the predictions of rows applied by
an earlier run but missing from ``--out`` (a run killed between a request and its write) are taken
from the stream's event log, so ``--out`` ends with every row once. When the stream holds fewer
rows than ``--out`` (its state rolled back, say by a Redis failover, or it expired), or a request
is answered ``409 seq_gap`` (a service that refuses gaps saw the rollback), the rows after the
stream's last applied seq leave ``--out`` and are sent again.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from .auth import add_token_argument, auth_headers
from .sse import read_events

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8080"


class ReplayError(Exception):
    """Something the user must fix; printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-replay",
        description="Replay a CSV of readings into a stream; write the predictions as CSV.",
    )
    parser.add_argument("file", type=Path, metavar="FILE.csv", help="readings, with a header row")
    parser.add_argument("--stream", required=True, help="the stream id to send the readings to")
    parser.add_argument("--model", help="model name (default: the service's default model)")
    parser.add_argument(
        "--rate", type=float, help="readings per second (default: as fast as it can)"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    parser.add_argument("--columns", help="comma-separated value columns (default: all but ts)")
    parser.add_argument("--out", type=Path, help="write predictions here (default: stdout)")
    parser.add_argument(
        "--batch", type=int, default=500, help="readings per request without --rate (default 500)"
    )
    add_token_argument(parser)
    return parser


class _Client:
    """The service's HTTP API, with the retries a replay needs."""

    def __init__(self, session: aiohttp.ClientSession, base: str, model: str | None) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.model = model

    def path(self, suffix: str) -> str:
        model = f"/models/{quote(self.model)}" if self.model else ""
        return f"{self.base}/v1{model}{suffix}"

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON), retrying 503s, 429s (a tenant's quota) and connection failures until
        they stop, each after the wait the service asks for."""
        delay = 0.5
        while True:
            try:
                async with self.session.request(method, url, json=body) as answer:
                    text = await answer.text()
                    data: Any = json.loads(text) if text else None
                    if answer.status not in (429, 503):
                        return answer.status, data
                    wait = float(answer.headers.get("Retry-After", delay))
                    _note(f"service busy ({data['error']['code']}); retrying in {wait:g} s")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                wait = delay
                delay = min(delay * 2, 10.0)
                _note(f"no answer ({exc or type(exc).__name__}); retrying in {wait:g} s")
            await asyncio.sleep(wait)


def _note(message: str) -> None:
    print(f"\nlstm-replay: {message}", file=sys.stderr, flush=True)


def _read_rows(path: Path, columns: str | None) -> tuple[list[str], list[dict[str, Any]], bool]:
    """(value columns, readings without seq, whether the CSV has a ts column)."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from None
    if not header:
        raise ReplayError(f"{path} has no header row")
    names = [c.strip() for c in columns.split(",")] if columns else [c for c in header if c != "ts"]
    missing = [c for c in names if c not in header]
    if missing:
        raise ReplayError(f"{path} has no column {missing[0]!r} (columns: {', '.join(header)})")
    has_ts = "ts" in header
    readings = []
    for k, row in enumerate(rows, start=2):
        try:
            values = [float(row[c]) for c in names]
        except (TypeError, ValueError):
            raise ReplayError(f"{path}:{k}: a value column holds a non-number") from None
        if not all(math.isfinite(v) for v in values):
            raise ReplayError(f"{path}:{k}: a value is not finite")
        reading: dict[str, Any] = {"values": values}
        if has_ts and row["ts"] not in ("", None):
            reading["ts"] = _ts(row["ts"])
        readings.append(reading)
    return names, readings, has_ts


def _ts(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


class _Progress:
    """A progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, done: int) -> None:
        self.total = total
        self.done = done
        self.start_done = done
        self.started = time.monotonic()
        self.drawn = 0.0

    def advance(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not force and now - self.drawn < 0.1:
            return
        self.drawn = now
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        bar = "#" * filled + "-" * (width - filled)
        print(f"\r[{bar}] {self.done}/{self.total} rows, {rate:,.0f}/s ", end="", file=sys.stderr)
        sys.stderr.flush()


async def replay(args: argparse.Namespace) -> int:
    names, readings, has_ts = _read_rows(args.file, args.columns)
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise ReplayError("--rate must be a positive number of readings per second")
    if args.batch < 1:
        raise ReplayError("--batch must be at least 1")
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, headers=auth_headers(args.token)) as session:
        client = _Client(session, args.url, args.model)
        status, info = await client.request(
            "GET", client.path("") if args.model else f"{client.base}/v1/models"
        )
        if status != 200:
            raise ReplayError(f"{status}: {info}")
        model = info if args.model else _default_model(info)
        client.model = model["name"]
        if len(names) != model["input_size"]:
            raise ReplayError(
                f"model {model['name']} takes {model['input_size']} values per reading; the "
                f"value columns are {', '.join(names)} (choose them with --columns)"
            )
        stream_url = client.path(f"/streams/{quote(args.stream)}")
        status, state = await client.request("GET", stream_url)
        if status not in (200, 404):
            raise ReplayError(f"{status}: {state}")
        applied = int(state["seq"]) if status == 200 else 0
        header = ["seq", *(["ts"] if has_ts else []), *model["outputs"]]
        out, written = _open_out(args.out, header)
        try:
            writer = csv.writer(out)
            if args.out is not None and written < applied:  # applied by a killed run, unwritten
                await _recover(client, args.stream, state, (written, applied), readings, writer)
            elif args.out is not None and written > applied:  # rows the stream no longer holds
                _note(
                    f"the stream's last applied seq is {applied}, and {args.out} holds rows up to "
                    f"{written}: its state rolled back or expired; sending rows from "
                    f"{applied + 1} again"
                )
                out = _cut(out, args.out, applied)
                writer = csv.writer(out)
            progress = _Progress(len(readings), applied)
            size = 1 if args.rate else min(args.batch, 2000)
            started = time.monotonic()
            sent = 0  # requests, for --rate's pace
            first = applied + 1
            while first <= len(readings):
                seqs = list(range(first, min(first + size, len(readings) + 1)))
                if args.rate:
                    await asyncio.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
                sent += 1
                body = {"readings": [{**readings[s - 1], "seq": s} for s in seqs]}
                status, answer = await client.request("POST", stream_url + "/readings", body)
                code = answer["error"]["code"] if status == 409 else None
                if code == "stale_seq":
                    # Applied by someone else meanwhile (another replay of this file): skip on.
                    _note(f"seqs up to {answer['error']['current_seq']} were applied already")
                    first = seqs[-1] + 1
                    continue
                if code == "seq_gap":
                    # The stream is behind what it acknowledged: its state rolled back (a
                    # failover lost steps, or it expired). Rows after its last seq go again.
                    current = int(answer["error"]["current_seq"])
                    _note(
                        f"the stream's last applied seq is {current}, below the rows sent: its "
                        f"state rolled back; sending rows from {current + 1} again"
                    )
                    if args.out is not None:
                        out = _cut(out, args.out, current)
                        writer = csv.writer(out)
                    progress.advance(current - progress.done)
                    first = current + 1
                    continue
                if status != 200:
                    raise ReplayError(f"{status}: {answer['error']['message']}")
                for result in answer["results"]:
                    seq = result["seq"]
                    ts = [readings[seq - 1].get("ts", "")] if has_ts else []
                    writer.writerow([seq, *ts, *result["prediction"]])
                out.flush()
                progress.advance(len(seqs))
                first = seqs[-1] + 1
            progress.advance(0, force=True)
            print(file=sys.stderr)
        finally:
            if out is not sys.stdout:
                out.close()
    return 0


def _default_model(listing: dict[str, Any]) -> dict[str, Any]:
    name = listing["default_model"]
    if name is None:
        raise ReplayError("the service has several models and no default: give --model")
    return next(m for m in listing["models"] if m["name"] == name)


def _open_out(path: Path | None, header: list[str]) -> tuple[TextIO, int]:
    """The output and the last seq it already holds (a previous run's, when resuming)."""
    if path is None:
        csv.writer(sys.stdout).writerow(header)
        return sys.stdout, 0
    last = 0
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if rows and rows[0] != header:
            raise ReplayError(f"{path} exists with other columns; remove it or write elsewhere")
        last = max((int(r[0]) for r in rows[1:] if r), default=0)
        return path.open("a", newline=""), last
    handle = path.open("w", newline="")
    csv.writer(handle).writerow(header)
    return handle, 0


def _cut(out: TextIO, path: Path, last: int) -> TextIO:
    """Keep only the rows of ``path`` up to seq ``last`` (replacing the file in one rename);
    the handle to append to from there."""
    out.close()
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= last]
    scratch = path.with_name(path.name + ".part")
    with scratch.open("w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    scratch.replace(path)
    return path.open("a", newline="")


async def _recover(
    client: _Client,
    stream: str,
    state: dict[str, Any],
    span: tuple[int, int],
    readings: list[dict[str, Any]],
    writer: Any,
) -> None:
    """Predictions of seqs in (written, applied], from the stream's event log."""
    written, applied = span
    has_ts = any("ts" in r for r in readings)
    url = (
        client.path(f"/streams/{quote(stream)}/events") + f"?after={state['generation']}-{written}"
    )
    timeout = aiohttp.ClientTimeout(total=30)
    async with client.session.get(url, timeout=timeout) as response:
        async for event in read_events(response):
            if event.kind == "gap":
                _note(
                    f"predictions of seqs {written + 1}..{applied} (applied by an earlier run) "
                    "are no longer in the stream's log and are not written"
                )
                return
            if event.kind != "message":
                continue
            body = json.loads(event.data)
            seq = body["seq"]
            ts = [readings[seq - 1].get("ts", "")] if has_ts else []
            writer.writerow([seq, *ts, *body["prediction"]])
            if seq >= applied:
                return


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(replay(args))
    except ReplayError as exc:
        print(f"lstm-replay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlstm-replay: interrupted; run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
