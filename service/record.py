"""The state record: one Redis string per (model, stream), so that a 2-layer, 64-unit stream
costs one allocation of about 1.1 KiB::

    offset  size  field
    0       8     generation      u64 LE   \\ the first 16 bytes are the compare-and-set guard
    8       8     seq             u64 LE   /
    16      8     updated_at      f64 LE   Unix seconds
    24      4     state_nbytes    u32 LE   bytes of h (and of c)
    28      2     n_results       u16 LE   results of the last applied request
    30      1     version_len     u8
    31      v     model version   ASCII
    ..      S     h               float32 [layers, hidden]
    ..      S     c               float32 [layers, hidden]
    ..      n*(8+4*O)  results    (seq u64, prediction float32[O]) per reading

The commit script compares the guard and the first 24 bytes (``state_store.COMMIT_SCRIPT``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GUARD_BYTES", "StreamState", "encode_record", "guard_of"]

_HEAD = struct.Struct("<QQdIHB")
GUARD_BYTES = 16


@dataclass(frozen=True)
class StreamState:
    """A decoded record. ``h``/``c`` are None when another model version wrote the record."""

    guard: bytes
    generation: int
    seq: int
    updated_at: float
    model_version: str
    h: np.ndarray | None
    c: np.ndarray | None
    results: dict[int, np.ndarray]  # seq -> prediction [O], of the last applied request

    @classmethod
    def decode(
        cls, raw: bytes, version: str, state_shape: tuple[int, int], outputs: int
    ) -> StreamState:
        generation, seq, updated_at, nbytes, n_results, vlen = _HEAD.unpack_from(raw)
        at = _HEAD.size
        stored_version = raw[at : at + vlen].decode("ascii")
        at += vlen
        if stored_version != version or nbytes != state_shape[0] * state_shape[1] * 4:
            return cls(
                raw[:GUARD_BYTES], generation, seq, updated_at, stored_version, None, None, {}
            )
        h = np.frombuffer(raw, np.float32, state_shape[0] * state_shape[1], at).reshape(state_shape)
        c = np.frombuffer(raw, np.float32, h.size, at + nbytes).reshape(state_shape)
        at += 2 * nbytes
        held = np.frombuffer(raw, _results_dtype(outputs), n_results, at)
        results = dict(zip(held["seq"].tolist(), held["prediction"], strict=True))
        return cls(raw[:GUARD_BYTES], generation, seq, updated_at, stored_version, h, c, results)

    def last_prediction(self) -> list[float] | None:
        pred = self.results.get(self.seq)
        return None if pred is None else pred.tolist()


def encode_record(
    generation: int,
    seq: int,
    updated_at: float,
    version: str,
    h: bytes,
    c: bytes,
    result_seqs: Sequence[int],
    result_preds: np.ndarray,
) -> bytes:
    """Pack a record; ``result_preds`` is float32 ``[len(result_seqs), O]``."""
    vbytes = version.encode("ascii")
    parts = [_HEAD.pack(generation, seq, updated_at, len(h), len(result_seqs), len(vbytes))]
    parts += [vbytes, h, c]
    held = np.empty(len(result_seqs), _results_dtype(result_preds.shape[1]))
    held["seq"] = result_seqs
    held["prediction"] = result_preds
    parts.append(held.tobytes())
    return b"".join(parts)


def _results_dtype(outputs: int) -> np.dtype:
    """One held result: its seq and its prediction, packed (8 + 4 * outputs bytes)."""
    return np.dtype([("seq", "<u8"), ("prediction", "<f4", (outputs,))])


def guard_of(generation: int, seq: int) -> bytes:
    return struct.pack("<QQ", generation, seq)
