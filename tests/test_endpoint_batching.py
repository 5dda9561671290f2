"""Dynamic batching in the local model server: concurrent requests share forward passes, each gets its own rows."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from conftest import ROOT
from swan_anomaly.serving.server import MicroBatcher


def enc(text: str) -> str:
    """A request's base64 value, as clients send image bytes."""
    return base64.b64encode(text.encode()).decode()


class SlowModel:
    """Stands in for the pyfunc (which gets bytes): doubles each row's number, takes 50 ms a call, refuses the row "bad"."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        with self.lock:
            self.calls.append(len(frame))
        time.sleep(0.05)
        values = [v.decode() for v in frame.image]
        if "bad" in values:
            raise ValueError("row 'bad' is not an image")
        return pd.DataFrame({"score": [2 * int(v) for v in values]})


def _scores(records: list[dict]) -> list[int]:
    return [r["score"] for r in records]


async def _score_all(batcher: MicroBatcher, model, requests: list[list[str]]):
    return await asyncio.gather(*(batcher.score(model, [enc(v) for v in r]) for r in requests), return_exceptions=True)


def test_concurrent_requests_are_scored_together_and_each_gets_its_own_rows():
    model, batcher = SlowModel(), MicroBatcher(max_rows=256)
    requests = [[str(10 * i + j) for j in range(1 + i % 3)] for i in range(40)]
    results = asyncio.run(_score_all(batcher, model, requests))
    for request, out in zip(requests, results):
        assert _scores(out) == [2 * int(v) for v in request]  # its rows, in its order
    assert sum(model.calls) == sum(len(r) for r in requests)
    assert len(model.calls) < 10, f"40 concurrent requests took {len(model.calls)} forward passes"
    assert batcher.requests == 40 and batcher.batches == len(model.calls)


def test_a_lone_request_is_scored_at_once_and_a_batch_never_exceeds_the_row_limit():
    model, batcher = SlowModel(), MicroBatcher(max_rows=5)
    [out] = asyncio.run(_score_all(batcher, model, [["7"]]))
    assert _scores(out) == [14] and model.calls == [1]
    asyncio.run(_score_all(batcher, model, [["1", "2"] for _ in range(10)]))
    assert max(model.calls) <= 5


def test_one_bad_request_in_a_batch_fails_alone():
    model, batcher = SlowModel(), MicroBatcher()
    requests = [["1"], ["bad"], ["3", "4"]]

    async def go():
        first = asyncio.ensure_future(batcher.score(model, [enc("0")]))  # keeps the model busy
        await asyncio.sleep(0.01)
        rest = await _score_all(batcher, model, requests)  # these three queue up and share one batch
        return [await first, *rest]

    results = asyncio.run(go())
    assert _scores(results[0]) == [0]
    assert _scores(results[1]) == [2] and _scores(results[3]) == [6, 8]
    assert isinstance(results[2], ValueError) and "bad" in str(results[2])
    assert 4 in model.calls  # the three were tried together first (4 rows), then alone


def test_models_are_never_mixed_in_one_batch():
    old, new, batcher = SlowModel(), SlowModel(), MicroBatcher()

    async def go():
        return await asyncio.gather(*(batcher.score(old if i % 2 else new, [enc(str(i))]) for i in range(10)))

    outs = asyncio.run(go())
    assert [_scores(o) for o in outs] == [[2 * i] for i in range(10)]
    assert sum(old.calls) == 5 and sum(new.calls) == 5


@pytest.mark.slow
def test_under_stress_the_server_answers_every_good_request_refuses_the_bad_ones_and_stays_within_its_memory_bound(tmp_path):
    """bench/serve_load.py --stress: 80 single-image clients, two 256-image clients, bodies over the limit and
    too many rows, at once, against the real server with a real pyfunc."""
    out = tmp_path / "stress.json"
    cmd = [sys.executable, str(ROOT / "bench" / "serve_load.py"), "--stress", "--seconds", "8", "--port", "5081", "--json", str(out)]
    subprocess.run(cmd, check=True, timeout=600)
    stress = json.loads(out.read_text())["stress"]
    assert stress["server_alive"] and stress["good"]["sent"] > 0 and stress["good"]["lost"] == 0, stress
    assert stress["good"]["answered"] == stress["good"]["sent"]
    for kind in ("body_over_limit", "too_many_rows"):  # 413, or 429 when refused first for the requests in flight
        assert "413" in stress["bad"][kind] and set(stress["bad"][kind]) <= {"413", "429"}, stress["bad"]
    assert stress["peak_rss_mb"] < stress["rss_bound_mb"], stress
