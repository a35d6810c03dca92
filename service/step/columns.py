"""The common case of a batch as columns: one array per field over many streams, no per-stream plan.

Most streams in a batch are simple: requests without v2's start and end flags (one unit each, in
order), a live state of the served model version or no state at all, and new seqs (each unit's
none given, or all above the seqs before them). For those, ``plan.py``'s rules reduce to array
operations: the records are decoded from one buffer (``record.head_dtype``), the seqs assigned
or checked as a whole, the model run once per shape (the units' reading counts), and the new
records encoded into one buffer (``record.record_dtype``) and cut into one string per stream.
Everything else (retries, stale seqs, v2's start and end flags, another version's state, an
ended stream's record, seqs that would pass ``SEQ_MAX``) is left to ``plan.py``, stream by
stream, with the same outcome either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .model import ServedModel
from .plan import SEQ_MAX, Unit
from .record import head_dtype, record_dtype

__all__ = ["Columns", "columns_of", "shape_of", "simple"]


def simple(units: list[Unit]) -> bool:
    """Whether a stream's units for this batch may take the columnar path."""
    return not any(u.start or u.end for u in units)


def shape_of(units: list[Unit]) -> tuple[int, ...]:
    """The reading counts of a stream's units, in order: streams of one shape share columns."""
    return tuple(len(u.readings) for u in units)


class Columns:
    """Streams of one model whose units have the reading counts ``shape`` (``steps`` readings in
    all), planned as arrays.

    ``keys``, ``units`` (each stream's units, in order) and ``guards`` are per stream (a guard is
    the compare-and-set guard, ``b""`` for a new stream); ``generation`` and ``last`` (the last
    applied seq, 0 for a new stream) are ``[B]``, ``seqs`` the assigned seqs ``[B, steps]``,
    ``x64`` the values as sent ``[B, steps, inputs]`` float64, ``h0``/``c0`` the state
    ``[layers, B, hidden]`` float32; ``fresh`` the indices of the new streams (which start a
    generation, so their tenant's ``max_streams`` counts them), usually none.
    """

    __slots__ = (
        "c0",
        "fresh",
        "generation",
        "guards",
        "h0",
        "keys",
        "last",
        "model",
        "seqs",
        "shape",
        "steps",
        "units",
        "x64",
    )

    def __init__(
        self,
        model: ServedModel,
        shape: tuple[int, ...],
        keys: list[str],
        units: list[list[Unit]],
        guards: list[bytes],
        generation: np.ndarray,
        last: np.ndarray,
        seqs: np.ndarray,
        x64: np.ndarray,
        h0: np.ndarray,
        c0: np.ndarray,
        fresh: np.ndarray,
    ) -> None:
        self.model = model
        self.shape = shape
        self.steps = sum(shape)
        self.keys = keys
        self.units = units
        self.guards = guards
        self.generation = generation
        self.last = last
        self.seqs = seqs
        self.x64 = x64
        self.h0 = h0
        self.c0 = c0
        self.fresh = fresh

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def merged(cls, parts: list[Columns]) -> Columns:
        """One set of columns from several of the same model and steps (a batch's streams
        planned from this process's cache, and those read from Redis)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            first.model,
            first.shape,
            [k for p in parts for k in p.keys],
            [u for p in parts for u in p.units],
            [g for p in parts for g in p.guards],
            np.concatenate([p.generation for p in parts]),
            np.concatenate([p.last for p in parts]),
            np.concatenate([p.seqs for p in parts]),
            np.concatenate([p.x64 for p in parts]),
            np.concatenate([p.h0 for p in parts], axis=1),
            np.concatenate([p.c0 for p in parts], axis=1),
            np.concatenate([p.fresh + at for p, at in zip(parts, _offsets(parts), strict=True)]),
        )

    def select(self, rows: list[int]) -> Columns | None:
        """The same columns for the streams at ``rows`` only (None if there are none): what
        remains when some streams may not start (their tenant is at its ``max_streams``)."""
        if not rows:
            return None
        take = np.asarray(rows, np.intp)
        return Columns(
            self.model,
            self.shape,
            [self.keys[i] for i in rows],
            [self.units[i] for i in rows],
            [self.guards[i] for i in rows],
            self.generation[take],
            self.last[take],
            self.seqs[take],
            self.x64[take],
            self.h0[:, take],
            self.c0[:, take],
            np.flatnonzero(np.isin(take, self.fresh)),
        )

    def records(
        self, now: float, y: np.ndarray, hn: np.ndarray, cn: np.ndarray
    ) -> tuple[bytes, int]:
        """Every stream's new record in one buffer, and the size of one: ``y [steps, B,
        outputs]``, ``hn``/``cn [layers, B, hidden]`` as the model returned them. A record holds
        the results of its stream's last unit."""
        model = self.model
        version = model.version.encode("ascii")
        held_n = self.shape[-1]
        dtype = record_dtype(len(version), model.state_shape, model.output_size, held_n)
        out = np.empty(len(self.keys), dtype)
        out["generation"] = self.generation
        out["seq"] = self.seqs[:, -1]
        out["updated_at"] = now
        out["state_nbytes"] = 4 * model.num_layers * model.hidden_size
        out["n_results"] = held_n
        out["version_len"] = len(version)
        out["version"] = version
        out["h"] = hn.transpose(1, 0, 2)
        out["c"] = cn.transpose(1, 0, 2)
        held = out["held"]
        held["seq"] = self.seqs[:, -held_n:]
        held["prediction"] = y[-held_n:].transpose(1, 0, 2)
        return out.tobytes(), dtype.itemsize


def columns_of(
    model: ServedModel,
    shape: tuple[int, ...],
    keys: Sequence[str],
    units: Sequence[list[Unit]],
    raws: Sequence[bytes | None],
    new_generation: Callable[[], int],
) -> tuple[Columns | None, list[int]]:
    """Plan simple streams (``simple``) of one model whose units have the reading counts
    ``shape``, from their stored records (None: no state). Returns the planned columns (None if
    no stream qualified) and the indices of the streams they leave to ``plan.py``."""
    version = model.version.encode("ascii")
    layers, hidden = model.state_shape
    steps = sum(shape)
    dtype = head_dtype(len(version), model.state_shape)
    size = dtype.itemsize
    blank = bytes(size)
    # A record shorter than the head (an ended stream's, another version's) is padded: its
    # state_nbytes or version then fails the check below, and it goes to plan.py.
    heads = np.frombuffer(
        b"".join([blank if r is None else r[:size].ljust(size, b"\0") for r in raws]), dtype
    )
    exists = np.fromiter((r is not None for r in raws), bool, len(raws))
    ok = ~exists | (
        (heads["state_nbytes"] == 4 * layers * hidden)
        & (heads["version_len"] == len(version))
        & (heads["version"] == version)
    )
    given = np.array(
        [r.seq or 0 for stream in units for u in stream for r in u.readings], np.int64
    ).reshape(len(units), steps)
    last = np.where(exists, heads["seq"], 0).astype(np.int64)
    # Each unit's seqs: given, all above the seqs before it (they increase within the unit, the
    # wire checked); none given, the next ones, as long as they stay within SEQ_MAX.
    seqs = np.empty_like(given)
    before = last
    at = 0
    for count in shape:
        first = given[:, at]
        has_seq = first > 0
        ok &= np.where(has_seq, first > before, before <= SEQ_MAX - count)
        seqs[:, at : at + count] = np.where(
            has_seq[:, None], given[:, at : at + count], before[:, None] + np.arange(1, count + 1)
        )
        before = seqs[:, at + count - 1]
        at += count
    left = np.flatnonzero(~ok).tolist()
    take = np.flatnonzero(ok)
    if not len(take):
        return None, left
    if left:
        heads, exists, last, seqs = heads[take], exists[take], last[take], seqs[take]
        chosen = take.tolist()
        keys = [keys[i] for i in chosen]
        units = [units[i] for i in chosen]
        raws = [raws[i] for i in chosen]
    generation = heads["generation"].astype(np.int64)
    guards = [b"" if r is None else r[:16] for r in raws]
    fresh = np.flatnonzero(~exists)
    if len(fresh):
        generation[fresh] = [new_generation() for _ in range(len(fresh))]
    x64 = np.array(
        [r.values for stream in units for u in stream for r in u.readings], np.float64
    ).reshape(len(units), steps, model.input_size)
    h0 = np.ascontiguousarray(heads["h"].transpose(1, 0, 2))
    c0 = np.ascontiguousarray(heads["c"].transpose(1, 0, 2))
    columns = Columns(
        model, shape, list(keys), list(units), guards, generation, last, seqs, x64, h0, c0, fresh
    )
    return columns, left


def _offsets(parts: list[Columns]) -> list[int]:
    """Where each part's streams begin in the merged columns."""
    at, offsets = 0, []
    for part in parts:
        offsets.append(at)
        at += len(part)
    return offsets
