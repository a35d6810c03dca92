"""``--seq-gaps refuse``: a client seq must be the stream's next, so that a client learns when a
stream's state rolled back (409 ``seq_gap`` with ``current_seq``) and re-sends from there.

The rule in both planners (the columnar one keeps to array checks and leaves a gap to the
per-stream one, which refuses it), then on the wire: ``/v1`` single and multi-reading requests,
bulk items, ``/v2``'s ``seq``, and ``lstm-replay`` recovering by itself from a stream whose state
and log were restored to an earlier snapshot (a failover that lost acknowledged-by-nobody steps
looks the same), its output ending with every row exactly once.
"""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import DemoReference, sea_temperatures
from service_harness import RedisServer, ServiceProcess, call
from test_service_columns import raw_record

from service.core.errors import SeqGap, StaleSeq
from service.step.columns import columns_of
from service.step.model import ServedModel, load_models
from service.step.plan import Applied, Duplicate, Reading, Unit, plan_stream
from service.step.record import StreamState


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return load_models((), threads=1)["elnino"]


def unit(model: ServedModel, *seqs: int | None, start: bool = False) -> Unit:
    loop = asyncio.new_event_loop()
    try:
        readings = [Reading([24.0], s) for s in seqs]
        return Unit(model, "s", readings, loop.create_future(), start=start)
    finally:
        loop.close()


def plan(model: ServedModel, units: list[Unit], raw: bytes | None, refuse: bool = True) -> list:
    state = (
        None
        if raw is None
        else StreamState.decode(raw, model.version, model.state_shape, model.output_size)
    )
    return plan_stream(
        model, "s", "k", units, state, "refuse", lambda: 1795805218300, refuse_gaps=refuse
    ).outcomes


# -- the planners --------------------------------------------------------------------------------


def test_the_stream_planner_refuses_a_seq_beyond_the_next(model: ServedModel) -> None:
    live = raw_record(model, 1795805218226, 4, [4])
    assert plan(model, [unit(model, 5)], live) == [Applied(0, 1)]
    [gap] = plan(model, [unit(model, 7)], live)
    assert isinstance(gap, SeqGap) and gap.details == {"current_seq": 4}
    assert "seq 7 would leave a gap" in gap.message and "send seq 5 next" in gap.message
    assert isinstance(plan(model, [unit(model, 4)], live)[0], Duplicate)  # as before
    assert isinstance(plan(model, [unit(model, 2)], live)[0], StaleSeq)  # as before
    assert plan(model, [unit(model, None)], live) == [Applied(0, 1)]  # the server's own seq
    # Several units of the stream in one batch: each must follow the one before.
    outcomes = plan(model, [unit(model, 5, 6), unit(model, 8), unit(model, 7)], live)
    assert outcomes[0] == Applied(0, 2) and outcomes[2] == Applied(2, 1)
    assert isinstance(outcomes[1], SeqGap) and outcomes[1].details == {"current_seq": 6}
    # Allowed, the same gap is applied.
    assert plan(model, [unit(model, 7)], live, refuse=False) == [Applied(0, 1)]


def test_new_and_ended_streams_and_new_generations_start_at_one(model: ServedModel) -> None:
    [gap] = plan(model, [unit(model, 3)], None)
    assert isinstance(gap, SeqGap) and gap.details == {"current_seq": 0}
    assert "it has no steps (new or ended)" in gap.message
    assert plan(model, [unit(model, 1)], None) == [Applied(0, 1)]
    ended = raw_record(model, 1795805218226, 9, [9], ended=True)
    assert isinstance(plan(model, [unit(model, 9)], ended)[0], Duplicate)  # its last request
    assert isinstance(plan(model, [unit(model, 10)], ended)[0], SeqGap)
    assert plan(model, [unit(model, 1)], ended) == [Applied(0, 1)]
    live = raw_record(model, 1795805218226, 4, [4])
    assert isinstance(plan(model, [unit(model, 5, start=True)], live)[0], SeqGap)
    assert plan(model, [unit(model, 1, start=True)], live) == [Applied(0, 1)]


def test_the_column_planner_leaves_gaps_to_the_stream_planner(model: ServedModel) -> None:
    raws = [raw_record(model, 1795805218226 + k, 4, [4]) for k in range(4)] + [None, None]
    units = [[unit(model, s)] for s in (5, 6, None, 3, 1, 2)]
    keys = [f"k{k}" for k in range(len(units))]
    gens = iter(range(1795805219000, 1795805219100))
    refused, left = columns_of(model, (1,), keys, units, raws, lambda: next(gens), True)
    assert refused is not None and left == [1, 3, 5]  # 6 and 2: gaps; 3: stale (as always)
    assert refused.keys == ["k0", "k2", "k4"]
    assert refused.seqs[:, 0].tolist() == [5, 5, 1]
    allowed, left = columns_of(model, (1,), keys, units, raws, lambda: next(gens))
    assert allowed is not None and left == [3]
    # two units of a stream in one batch: the second must follow the first
    pairs = [[unit(model, 5), unit(model, 6)], [unit(model, 5), unit(model, 7)]]
    cols, left = columns_of(
        model, (1, 1), ["a", "b"], pairs, raws[:2], lambda: next(gens), refuse_gaps=True
    )
    assert cols is not None and cols.keys == ["a"] and left == [1]


# -- the service ---------------------------------------------------------------------------------


@pytest.fixture
def service(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> ServiceProcess:
    return service_factory(
        "--seq-gaps", "refuse", "--events-max-len", "1000", env={"REDIS_URL": redis_server.url}
    )


def _post(service: ServiceProcess, stream: str, body: dict) -> tuple[int, dict]:
    answer = call("POST", f"{service.url}/v1/streams/{stream}/readings", body)
    return answer.status, answer.body


def test_v1_single_and_multi_reading_requests(service: ServiceProcess, stream_id: str) -> None:
    status, body = _post(service, stream_id, {"values": [24.0], "seq": 2})
    assert status == 409 and body["error"]["code"] == "seq_gap"
    assert body["error"]["current_seq"] == 0
    assert _post(service, stream_id, {"values": [24.0], "seq": 1})[0] == 200
    status, body = _post(service, stream_id, {"values": [24.1], "seq": 3})
    assert status == 409 and body["error"]["current_seq"] == 1
    assert "send seq 2 next" in body["error"]["message"]
    readings = {"readings": [{"values": [24.2], "seq": 2}, {"values": [24.3], "seq": 3}]}
    assert _post(service, stream_id, readings)[0] == 200
    status, body = _post(service, stream_id, readings)
    assert status == 200 and body["duplicate"] is True  # a retry, as before
    status, body = _post(service, stream_id, {"values": [24.0], "seq": 1})
    assert status == 409 and body["error"]["code"] == "stale_seq"  # as before
    skipping = {"readings": [{"values": [24.4], "seq": 4}, {"values": [24.5], "seq": 6}]}
    status, body = _post(service, stream_id, skipping)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert "seqs must be consecutive" in body["error"]["message"]
    assert _post(service, stream_id, {"readings": [{"values": [24.4]}, {"values": [24.5]}]})[0] == (
        200
    )  # the server's own seqs: 4 and 5
    assert call("DELETE", f"{service.url}/v1/streams/{stream_id}").status == 204
    status, body = _post(service, stream_id, {"values": [24.0], "seq": 6})
    assert status == 409 and body["error"]["current_seq"] == 0
    assert _post(service, stream_id, {"values": [24.0], "seq": 1})[0] == 200


def test_v1_bulk_items(service: ServiceProcess, stream_id: str) -> None:
    for k in range(3):
        _post(service, f"{stream_id}-{k}", {"values": [20.0], "seq": 1})
    items = [
        {"stream": f"{stream_id}-0", "values": [21.0], "seq": 2},
        {"stream": f"{stream_id}-1", "values": [21.0], "seq": 3},
        {"stream": f"{stream_id}-2", "readings": [{"values": [1.0], "seq": 2},
                                                   {"values": [2.0], "seq": 4}]},
        {"stream": f"{stream_id}-3", "values": [21.0], "seq": 5},
        {"stream": f"{stream_id}-4", "values": [21.0], "seq": 1},
    ]  # fmt: skip
    answer = call("POST", f"{service.url}/v1/readings", {"readings": items})
    assert answer.status == 200
    results = answer.body["results"]
    assert results[0]["results"][0]["seq"] == 2
    assert results[1]["error"]["code"] == "seq_gap" and results[1]["error"]["current_seq"] == 1
    assert results[2]["error"]["code"] == "invalid_request"
    assert results[3]["error"] == {**results[3]["error"], "code": "seq_gap", "current_seq": 0}
    assert results[4]["results"][0]["seq"] == 1
    # Many streams at once, past the columnar path: the gaps among them are refused alone.
    many = [
        {"stream": f"{stream_id}-many-{k}", "values": [20.0], "seq": 1 if k % 3 else 2}
        for k in range(60)
    ]
    answer = call("POST", f"{service.url}/v1/readings", {"readings": many})
    codes = [r.get("error", {}).get("code") for r in answer.body["results"]]
    assert codes == [None if k % 3 else "seq_gap" for k in range(60)]


def test_v2_seq_follows_the_same_rules(service: ServiceProcess, stream_id: str) -> None:
    url = f"{service.url}/v2/models/elnino/infer"

    def infer(seq: int, steps: int = 1, start: bool = False) -> tuple[int, dict]:
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, steps, 1],
                        "data": [24.0] * steps}],
            "parameters": {"sequence_id": stream_id, "seq": seq, "sequence_start": start},
        }  # fmt: skip
        answer = call("POST", url, body)
        return answer.status, answer.body

    status, body = infer(3)
    assert status == 409 and "seq 3 would leave a gap" in body["error"]
    assert infer(1, steps=2)[0] == 200
    status, body = infer(4)
    assert status == 409 and "its last applied seq is 2" in body["error"]
    status, body = infer(3)
    assert status == 200 and body["parameters"]["seq"] == 3
    assert infer(3)[1]["parameters"]["duplicate"] is True
    assert infer(2, start=True)[0] == 409  # a new generation starts at 1
    assert infer(1, start=True)[0] == 200


def test_gaps_are_allowed_by_default(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(env={"REDIS_URL": redis_server.url})
    assert _post(service, stream_id, {"values": [24.0], "seq": 5})[0] == 200
    body = {"readings": [{"values": [24.0], "seq": 7}, {"values": [24.0], "seq": 9}]}
    assert _post(service, stream_id, body)[0] == 200


# -- lstm-replay ---------------------------------------------------------------------------------


def _csv(path: Path, values: list[float]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sst"])
        writer.writerows([v] for v in values)
    return path


def _replay(service: ServiceProcess, source: Path, stream: str, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lstm_clients.replay", str(source), "--stream", stream,
            "--url", service.url, "--out", str(out), *args]  # fmt: skip


@pytest.mark.slow
def test_replay_recovers_by_itself_from_a_rolled_back_stream(
    service: ServiceProcess,
    redis_server: RedisServer,
    stream_id: str,
    tmp_path: Path,
    demo_reference: DemoReference,
) -> None:
    values = sea_temperatures(160, seed=5)
    out = tmp_path / "predictions.csv"
    first = subprocess.run(
        _replay(service, _csv(tmp_path / "first.csv", values[:100]), stream_id, out),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    redis = redis_server.client()
    keys = [f"lstm:{{elnino:{stream_id}}}:state", f"lstm:{{elnino:{stream_id}}}:events"]
    snapshot = {key: redis.dump(key) for key in keys}  # the stream at seq 100
    source = _csv(tmp_path / "all.csv", values)
    paced = subprocess.Popen(
        _replay(service, source, stream_id, out, "--rate", "40"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while call("GET", f"{service.url}/v1/streams/{stream_id}").body["seq"] < 115:
            assert time.monotonic() < deadline and paced.poll() is None
            time.sleep(0.05)
        # Redis loses the steps after seq 100, state and log alike, as a failover to a replica
        # that had not received them would.
        for key, dumped in snapshot.items():
            redis.restore(key, 0, dumped, replace=True)
        _, stderr = paced.communicate(timeout=60)
    finally:
        paced.kill()
    assert paced.returncode == 0, stderr
    assert "last applied seq is 100, below the rows sent" in stderr
    assert "sending rows from 101 again" in stderr
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 161))  # every row exactly once
    got = np.array([float(r[1]) for r in rows[1:]])
    assert np.abs(got - demo_reference.predictions(values)).max() < 1e-3
    assert call("GET", f"{service.url}/v1/streams/{stream_id}").body["seq"] == 160


@pytest.mark.slow
def test_replay_drops_rows_the_stream_no_longer_holds_before_it_starts(
    service: ServiceProcess, stream_id: str, tmp_path: Path
) -> None:
    values = sea_temperatures(60, seed=6)
    out = tmp_path / "predictions.csv"
    source = _csv(tmp_path / "all.csv", values)
    assert subprocess.run(_replay(service, source, stream_id, out), timeout=60).returncode == 0
    assert call("DELETE", f"{service.url}/v1/streams/{stream_id}").status == 204
    again = subprocess.run(
        _replay(service, source, stream_id, out), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "holds rows up to 60" in again.stderr
    with out.open(newline="") as handle:
        assert [int(r[0]) for r in list(csv.reader(handle))[1:]] == list(range(1, 61))
