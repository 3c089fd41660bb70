"""The development server's batch scheduler against TF Serving's rules
(shared_batch_scheduler.h, batching_session.cc), with a model that doubles its input and
records the batches it ran, so what a client gets and how it was batched are both visible."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from serving.devserver.batching import Batcher
from serving.devserver.config import BatchingOptions
from serving.devserver.errors import ServingError

SIGNATURE = SimpleNamespace(name="serving_default")


class Doubler:
    """y = 2x; refuses a batch holding a negative value, as a graph's assertion would."""

    def __init__(self, seconds: float = 0.0):
        self.batches: list[list[float]] = []
        self.seconds = seconds

    def run(self, signature, inputs):
        x = inputs["x"]
        self.batches.append(x.tolist())
        time.sleep(self.seconds)
        if (x < 0).any():
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        return {"y": x * 2}


def batcher(**options) -> Batcher:
    return Batcher(BatchingOptions(num_batch_threads=1, **options))


def send(b: Batcher, model: Doubler, values: list[float]):
    return b.run(model, SIGNATURE, {"x": np.array(values, dtype=np.float32)})


def test_a_large_request_is_split_into_execution_sized_batches_and_answered_whole():
    b, model = batcher(max_batch_size=10, enable_large_batch_splitting=True,
                       max_execution_batch_size=4), Doubler()
    try:
        out = send(b, model, list(range(10)))
    finally:
        b.stop()
    assert out["y"].tolist() == [2 * v for v in range(10)]
    assert [len(x) for x in model.batches] == [4, 4, 2]


def test_without_splitting_the_same_request_is_refused_as_tf_serving_refuses_it():
    b, model = batcher(max_batch_size=4), Doubler()
    try:
        with pytest.raises(ServingError, match="Task size 10 is larger than maximum input "
                                               "batch size 4"):
            send(b, model, list(range(10)))
    finally:
        b.stop()
    assert model.batches == []


def test_the_first_part_fills_the_open_batch_and_each_client_gets_its_own_items():
    """Requests of 3 and 3 with batches of 4: [a a a b] then [b b]; one thread, so the
    second request waits while the first batch runs."""
    b, model = batcher(max_batch_size=8, enable_large_batch_splitting=True,
                       max_execution_batch_size=4, batch_timeout_micros=200_000), Doubler()
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, b, model, [1, 2, 3])
            time.sleep(0.05)
            second = pool.submit(send, b, model, [10, 20, 30])
            answers = first.result(10)["y"].tolist(), second.result(10)["y"].tolist()
    finally:
        b.stop()
    assert answers == ([2, 4, 6], [20, 40, 60])
    assert model.batches == [[1, 2, 3, 10], [20, 30]]


def test_a_full_execution_batch_runs_without_waiting_for_the_timeout():
    b, model = batcher(max_batch_size=32, enable_large_batch_splitting=True,
                       max_execution_batch_size=4, batch_timeout_micros=5_000_000), Doubler()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda v: send(b, model, [v]), [1, 2, 3, 4]))
        elapsed = time.monotonic() - started
    finally:
        b.stop()
    assert sorted(r["y"][0] for r in results) == [2, 4, 6, 8]
    assert [len(x) for x in model.batches] == [4]
    assert elapsed < 4  # the 5 s timeout did not hold the full batch


def test_a_part_that_fails_fails_its_request_and_the_batch_it_ran_in():
    """TF Serving gives every task of a failed batch its status; a split request takes the
    status of any part that failed (batching_session.cc, the split tasks' shared status)."""
    b, model = batcher(max_batch_size=8, enable_large_batch_splitting=True,
                       max_execution_batch_size=2), Doubler()
    try:
        with pytest.raises(ServingError, match="negative input"):
            send(b, model, [1, 2, -3, 4, 5])
        assert send(b, model, [7])["y"].tolist() == [14]  # the batcher still works
    finally:
        b.stop()
    assert [len(x) for x in model.batches[:3]] == [2, 2, 1]


def test_queue_capacity_counts_execution_batches():
    """max_enqueued_batches is in batches of max_execution_batch_size: 2 x 2 items here,
    so while one item runs, a request of 5 more is refused at once."""
    b, model = batcher(max_batch_size=8, enable_large_batch_splitting=True,
                       max_execution_batch_size=2, max_enqueued_batches=2), Doubler(0.5)
    gate = threading.Event()
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(lambda: (gate.set(), send(b, model, [1]))[1])
            gate.wait()
            time.sleep(0.1)
            with pytest.raises(ServingError, match="queue .* is full") as refused:
                send(b, model, [1, 2, 3, 4, 5])
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert send(b, model, [1, 2, 3, 4])["y"].tolist() == [2, 4, 6, 8]
            running.result(10)
    finally:
        b.stop()
