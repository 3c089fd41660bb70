"""Server-side batching: concurrent requests to the same model version and signature are
merged into one model call and split back (TF Serving's --enable_batching).

Semantics follow TF Serving's shared batch scheduler: `num_batch_threads` threads take work
from per-(servable, signature) queues; a batch is formed when it reaches `max_batch_size` or
its oldest request has waited `batch_timeout_micros` (0: as soon as a thread is free, so
requests that arrive while the model is busy ride together). A request bigger than
`max_batch_size` is INVALID_ARGUMENT; a full queue answers UNAVAILABLE at once. With
`enable_large_batch_splitting`, batches hold at most `max_execution_batch_size` items and
a request that does not fit the open batch is split: its first part fills that batch, the
rest go into the next ones (shared_batch_scheduler.h, ScheduleWithoutOrEagerSplitImpl), and
it is answered when every part has run, or with the first part's error. A batched
run that fails fails every request in it, with the same status, as in TF Serving. Like TF
Serving, a request's tensors are not checked against the signature before they join a batch
(predict_util.cc converts them, BatchingSession::Run checks only their 0th dimensions): a
tensor of another shape or dtype fails the merge (MergeInputTensors), and so every request
batched with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np

from serving.devserver.config import BatchingOptions
from serving.devserver.errors import (
    QUEUE_TIMED_OUT,
    ServingError,
    deadline_exceeded,
    failed_precondition,
    internal,
    invalid_argument,
    unavailable,
)

log = logging.getLogger(__name__)


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    deadline: float | None = None  # time.monotonic() by which it must be answered
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    taken: int = 0  # items already placed in a batch (splitting)
    parts: dict = field(default_factory=dict)  # start -> that part's outputs
    answered: int = 0  # items whose outputs are in `parts`

    def deliver(self, start: int, size: int, outputs: dict[str, np.ndarray]) -> None:
        """The outputs of `size` items from `start`; the task is answered once every part
        has run."""
        if self.future.done():  # another part failed it
            return
        self.parts[start] = outputs
        self.answered += size
        if self.answered < self.size:
            return
        ordered = [self.parts[k] for k in sorted(self.parts)]
        self.future.set_result(ordered[0] if len(ordered) == 1 else
                               {name: np.concatenate([p[name] for p in ordered])
                                for name in ordered[0]})

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Piece:
    """Items [start, stop) of a task, in one batch."""

    task: _Task
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def inputs(self) -> dict[str, np.ndarray]:
        if self.start == 0 and self.stop == self.task.size:
            return self.task.inputs
        return {k: v[self.start:self.stop] for k, v in self.task.inputs.items()}


@dataclass
class _Queue:
    servable: object
    signature: object
    tasks: deque = field(default_factory=deque)
    size: int = 0


class Batcher:
    def __init__(self, options: BatchingOptions, metrics=None):
        self.options = options
        self.metrics = metrics
        self._queues: dict[tuple, _Queue] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    def run(self, servable, signature, inputs: dict[str, np.ndarray],
            deadline: float | None = None) -> dict[str, np.ndarray]:
        sizes = {v.shape[0] if v.ndim else -1 for v in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise invalid_argument("Batching session Run() input tensors must have equal "
                                   "0th-dimension size")
        size = sizes.pop()
        limit = self.options.max_batch_size
        if size > limit:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{limit}")
        task = _Task(inputs, size, deadline)
        key = (id(servable), signature.name)
        with self._cond:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(servable, signature)
            capacity = self.options.max_enqueued_batches * self.options.execution_limit
            if queue.size + size > capacity:
                raise unavailable("The batch scheduling queue to which this task was submitted "
                                  "is full")
            queue.tasks.append(task)
            queue.size += size
            self._cond.notify()
        if self.metrics:
            self.metrics.batch_input(size)
        return task.future.result()

    def _ready_queue(self) -> tuple[_Queue | None, float | None]:
        """The queue whose oldest task should run now, or how long to wait for one."""
        now = time.monotonic()
        timeout = self.options.batch_timeout_micros / 1e6
        best, wait = None, None
        for queue in self._queues.values():
            if not queue.tasks:
                continue
            age = now - queue.tasks[0].enqueued
            if queue.size >= self.options.execution_limit or age >= timeout:
                if best is None or queue.tasks[0].enqueued < best.tasks[0].enqueued:
                    best = queue
            else:
                remaining = timeout - age
                wait = remaining if wait is None else min(wait, remaining)
        return best, wait

    def _take(self, queue: _Queue) -> list[_Piece]:
        """The next batch: whole tasks in arrival order while they fit; with splitting, the
        part of the next task that fills the batch (the rest stays first in line)."""
        limit, split = self.options.execution_limit, self.options.enable_large_batch_splitting
        batch, total = [], 0
        while queue.tasks:
            task = queue.tasks[0]
            left = task.size - task.taken
            if total + left <= limit:
                batch.append(_Piece(task, task.taken, task.size))
                total += left
                queue.tasks.popleft()
            elif split and total < limit:
                batch.append(_Piece(task, task.taken, task.taken + limit - total))
                task.taken += limit - total
                total = limit
            else:
                break
        queue.size -= total
        if not queue.tasks:
            self._queues = {k: q for k, q in self._queues.items() if q is not queue}
        return batch

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping and not self._queues:
                        return
                    queue, wait = self._ready_queue()
                    if queue is not None:
                        batch = self._take(queue)
                        break
                    self._cond.wait(wait)
            self._execute(queue, batch)

    def _padded_size(self, size: int) -> int:
        for allowed in self.options.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def _execute(self, queue: _Queue, batch: list[_Piece]) -> None:
        started = time.monotonic()
        tasks = [p.task for p in batch]
        # As TF Serving (batching/batching_session.cc, ProcessBatch): a batch whose tasks
        # all waited past their deadlines fails without running; otherwise it runs with the
        # latest deadline among its live tasks (none if any task has none).
        live = [t.deadline for t in tasks if t.deadline is None or t.deadline > started]
        if not live:
            error = ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUE_TIMED_OUT)
            for t in tasks:
                t.fail(error)
            return
        batch_deadline = None if None in live else max(live)
        try:
            merged = _merge([p.inputs() for p in batch])
            total = sum(p.size for p in batch)
            padded = self._padded_size(total)
            if padded > total:  # TF Serving pads with copies of the first row
                merged = {k: np.concatenate([v, np.repeat(v[:1], padded - total, axis=0)])
                          for k, v in merged.items()}
            outputs = queue.servable.run(queue.signature, merged)
            if batch_deadline is not None and time.monotonic() > batch_deadline:
                raise deadline_exceeded()
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != padded:
                    raise invalid_argument(f"Batched output tensor {name} has 0th dimension "
                                           f"{value.shape[0] if value.ndim else 'none'}, "
                                           f"expected {padded}")
        except ServingError as e:
            # As TF Serving: one status for the whole batch. A batched run that fails fails
            # every request merged into it (batching/batching_session.cc, ProcessBatch:
            # "Regardless of the outcome, we need to propagate the status to the individual
            # tasks"). The exported graph reports bad images per item instead of failing.
            for t in tasks:
                t.fail(e)
            return
        except Exception as e:  # never leave a caller waiting forever
            log.exception("batch execution failed")
            for t in tasks:
                t.fail(e)
            return
        if self.metrics:
            self.metrics.batch_processed(padded, total, self.options.thread_pool_name,
                                         [started - t.enqueued for t in tasks])
        offset = 0
        for p in batch:
            p.task.deliver(p.start, p.size,
                           {k: v[offset:offset + p.size] for k, v in outputs.items()})
            offset += p.size

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=60)


def _merge(inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """TF Serving's BatchingSession::MergeInputTensors: equal shapes past the 0th dimension
    (FAILED_PRECONDITION), then tensor::Concat, whose dtype check fails as INTERNAL."""
    from serving.devserver.servable import value_dtype_name

    merged = {}
    for name in inputs[0]:
        parts = [i[name] for i in inputs]
        if len({p.shape[1:] for p in parts}) > 1:
            raise failed_precondition(
                f"Tensors with name '{name}' from different tasks have different shapes and "
                "padding is turned off. Set pad_variable_length_inputs to true, or ensure that "
                "all tensors with the same name have equal dimensions starting with the first "
                "dim.")
        dtypes = [value_dtype_name(p) for p in parts]
        if other := next((d for d in dtypes if d != dtypes[0]), None):
            raise internal("Tensor concat operation failed: INVALID_ARGUMENT: Cannot "
                           "concatenate tensors that have different data types. Got "
                           f"{dtypes[0]} and {other}.")
        merged[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return merged
