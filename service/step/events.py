"""Prediction events: their ids and their encodings.

Every applied step is one event, id ``{generation}-{seq}``. The batcher's commit appends the events
to the stream's log and announces them on the stream's shard channel in the same script call
(``state_store.COMMIT_SCRIPT``). This module encodes what that call carries (``log_append``) and
decodes what subscribers receive, from an announcement (``decode_message``) or from the log
(``events_from_log``), into SSE frames built once per event, however many subscribers it has.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..core.errors import InvalidRequest
from .state_store import LogAppend

__all__ = [
    "Event",
    "EventId",
    "LiveBatch",
    "decode_message",
    "events_from_log",
    "format_id",
    "log_append",
    "log_append_packed",
    "parse_event_id",
]

EventId = tuple[int, int]  # (generation, seq)

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1
# inputs, outputs, events, commit time (Unix ms), model version length
_MESSAGE_HEAD = struct.Struct("<HHIQB")
_PAIR = struct.Struct("<QQ")  # an event id in a message: generation, seq


def parse_event_id(text: str, where: str) -> EventId:
    """``"{generation}-{seq}"`` as a pair; raises InvalidRequest naming ``where``."""
    match = _ID.fullmatch(text.strip())
    if match is None or int(match[1]) > _U64 or int(match[2]) > _U64:
        raise InvalidRequest(
            f"{where} must be an event id '{{generation}}-{{seq}}' as sent in 'id:' lines, "
            f"not {text!r}"
        )
    return int(match[1]), int(match[2])


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def _id_of(text: str) -> EventId | None:
    """An id written by Redis or by the commit script; None for "" (unknown)."""
    if not text:
        return None
    generation, _, seq = text.partition("-")
    return int(generation), int(seq)


# -- what a commit carries ------------------------------------------------------------------


def log_append(
    version: str,
    generation: int,
    seqs: Sequence[int],
    values: np.ndarray,
    predictions: np.ndarray,
    reading_ts: Sequence[float | str | None],
    prev: EventId | None,
    now_ms: int,
) -> LogAppend:
    """The events of one stream's write: ``values`` float64 ``[n, inputs]``, ``predictions``
    float32 ``[n, outputs]``, one per seq, in order."""
    x = np.ascontiguousarray(values, np.float64)
    y = np.ascontiguousarray(predictions, np.float32)
    return log_append_packed(
        version, generation, seqs, x.tobytes(), y.tobytes(), reading_ts, prev, now_ms
    )


def log_append_packed(
    version: str,
    generation: int,
    seqs: Sequence[int],
    values: bytes,
    predictions: bytes,
    reading_ts: Sequence[float | str | None],
    prev: EventId | None,
    now_ms: int,
) -> LogAppend:
    """``log_append`` from the raw bytes: float64 values and float32 predictions, row after row
    (the batcher slices them out of a whole batch's arrays)."""
    n = len(seqs)
    x_size = len(values) // n
    y_size = len(predictions) // n
    ids = [f"{generation}-{seq}" for seq in seqs]
    if any(t is not None for t in reading_ts):
        ts = [b"" if t is None else json.dumps(t).encode() for t in reading_ts]
        stamped = b"[" + b",".join(t or b"null" for t in ts) + b"]"
    else:
        ts = [b""] * n
        stamped = b""
    if n == 1:
        entries = [(ids[0], values, predictions, ts[0])]
        pairs = _PAIR.pack(generation, seqs[0])
    else:
        entries = [
            (
                ids[i],
                values[i * x_size : (i + 1) * x_size],
                predictions[i * y_size : (i + 1) * y_size],
                ts[i],
            )
            for i in range(n)
        ]
        pairs = struct.pack(f"<{2 * n}Q", *[v for seq in seqs for v in (generation, seq)])
    vbytes = version.encode("ascii")
    message = b"".join(
        [
            _MESSAGE_HEAD.pack(x_size // 8, y_size // 4, n, now_ms, len(vbytes)),
            vbytes,
            pairs,
            values,
            predictions,
            stamped,
        ]
    )
    return LogAppend(
        prev=f"{prev[0]}-{prev[1]}" if prev is not None else "",
        floor=f"{generation}-{seqs[0] - 1}",
        version=version,
        entries=entries,
        message=message,
    )


# -- what subscribers get -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: EventId
    frame: bytes  # the whole SSE event: "id: ...\ndata: {...}\n\n"
    data: str  # the event JSON alone, shared by every multi-stream and WebSocket subscriber

    @cached_property
    def ws_text(self) -> str:
        """The WebSocket message: the event JSON with its type and id first, built on first use
        and then shared by every WebSocket subscriber of the stream."""
        return f'{{"type":"event","id":"{self.id[0]}-{self.id[1]}",{self.data[1:]}'


@dataclass(frozen=True)
class LiveBatch:
    prev: EventId | None  # the event just before these (None: unknown, a new generation)
    events: list[Event]


def _frame(
    model: str,
    version: str,
    stream: str,
    event_id: EventId,
    values: list[float],
    prediction: list[float],
    t_ms: int,
    reading_ts: Any,
) -> Event:
    body: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "stream": stream,
        "generation": event_id[0],
        "seq": event_id[1],
        "values": values,
        "prediction": prediction,
        "ts": t_ms / 1000,
    }
    if reading_ts is not None:
        body["reading_ts"] = reading_ts
    data = json.dumps(body, separators=(",", ":"))
    frame = f"id: {event_id[0]}-{event_id[1]}\ndata: {data}\n\n".encode()
    return Event(event_id, frame, data)


def decode_message(model: str, stream: str, message: bytes) -> LiveBatch:
    """A channel message (the script's ``prev + "\\n"`` and ``log_append``'s body)."""
    prev, _, body = message.partition(b"\n")
    inputs, outputs, n, t_ms, vlen = _MESSAGE_HEAD.unpack_from(body)
    at = _MESSAGE_HEAD.size
    version = body[at : at + vlen].decode("ascii")
    at += vlen
    pairs = np.frombuffer(body, "<u8", 2 * n, at).reshape(n, 2).tolist()
    at += 16 * n
    x = np.frombuffer(body, "<f8", n * inputs, at).reshape(n, inputs).tolist()
    at += 8 * n * inputs
    y = np.frombuffer(body, "<f4", n * outputs, at).reshape(n, outputs).tolist()
    at += 4 * n * outputs
    stamps = json.loads(body[at:]) if len(body) > at else [None] * n
    events = [
        _frame(model, version, stream, (g, s), x[i], y[i], t_ms, stamps[i])
        for i, (g, s) in enumerate(pairs)
    ]
    return LiveBatch(_id_of(prev.decode("ascii")), events)


def events_from_log(
    model: str, stream: str, entries: list[tuple[str, dict[bytes, bytes]]]
) -> list[Event]:
    """Log entries (``StateStore.read_log``) as events."""
    events = []
    for entry_id, fields in entries:
        event_id = _id_of(entry_id)
        assert event_id is not None
        stamp = fields[b"r"]
        events.append(
            _frame(
                model,
                fields[b"v"].decode("ascii"),
                stream,
                event_id,
                np.frombuffer(fields[b"x"], "<f8").tolist(),
                np.frombuffer(fields[b"y"], "<f4").tolist(),
                int(fields[b"t"]),
                json.loads(stamp) if stamp else None,
            )
        )
    return events
