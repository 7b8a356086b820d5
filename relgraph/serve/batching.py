"""Dynamic batching: one worker thread owns the explainer; requests queue their samples and wait.

The worker takes the oldest request, keeps taking queued ones for at most ``max_wait`` or until ``max_batch``
samples, runs them as one batch and hands each request its rows. Under load the queue is never empty and
batches fill without waiting; alone, a request waits at most ``max_wait``. A request that finds the queue full
is refused (503) at once rather than piling latency onto everyone.

Requests wait either on a thread (``explain``) or on an asyncio future (``submit``). The worker hands each
batch's answers to the event loop in one call (``call_soon_threadsafe`` wakes the loop through a pipe, so one
wake-up per batch rather than per request), and calls a thread's ``finish`` itself.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Callable

import numpy as np

from .errors import HTTPError

OUTPUTS = ("logits", "relevance", "bias_relevance", "target")


class Job:
    """One request's samples on their way through the batcher; ``finish(result, error)`` is called once, on
    ``loop``'s thread when the request waits on an event loop."""

    __slots__ = ("x", "target", "inputs", "queued", "finish", "loop")

    def __init__(self, x: np.ndarray, target: np.ndarray, finish: Callable[[dict | None, Exception | None], None],
                 inputs: dict | None = None, loop: asyncio.AbstractEventLoop | None = None):
        self.x, self.target, self.finish, self.loop = x, target, finish, loop
        self.inputs = inputs or {}  # the model's other inputs (a text's attention mask), [N, ...] each
        self.queued = time.monotonic()


_STOP = object()


class Batcher:
    """Dynamic batching in front of one explainer: a bounded queue and the one thread that runs it.

    ``on_batch(samples)`` is called after every session call (the metrics count batch sizes with it).
    """

    def __init__(self, explainer, *, max_batch: int = 32, max_wait: float = 0.005, queue_size: int = 256,
                 on_batch: Callable[[int], None] | None = None):
        self.explainer, self.max_batch, self.max_wait = explainer, max_batch, max_wait
        self.on_batch = on_batch
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.batches = self.samples = 0  # session calls, and the samples they explained
        self._thread = threading.Thread(target=self._run, name="relgraph-batcher", daemon=True)
        self._thread.start()

    def _put(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise HTTPError(503, f"the server is busy: {self.queue.maxsize} requests are queued; "
                                 "retry later") from None

    def explain(self, x: np.ndarray, target: np.ndarray, inputs: dict | None = None) -> dict:
        """Queue [N, ...] inputs and their targets (and the model's other inputs by name); block the calling
        thread until the worker has answered."""
        done, answer = threading.Event(), []

        def finish(result, error):
            answer.append((result, error))
            done.set()

        self._put(Job(x, target, finish, inputs))
        done.wait()
        result, error = answer[0]
        if error is not None:
            raise error
        return result

    def submit(self, x: np.ndarray, target: np.ndarray, inputs: dict | None = None) -> asyncio.Future:
        """Queue [N, ...] inputs and their targets (and the model's other inputs by name) from the event loop;
        the future holds the answer."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result, error):  # a request that went away has a cancelled future
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._put(Job(x, target, settle, inputs, loop))
        return future

    def stop(self) -> None:
        """Finish the batch in hand, answer whatever is still queued with 503, end the worker."""
        while self._thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                deliver([(job, None, HTTPError(503, "the server is shutting down"))])

    def _run(self) -> None:
        pending = None  # a job taken from the queue that did not fit the last batch
        while True:
            first = pending if pending is not None else self.queue.get()
            if first is _STOP:
                return
            batch, pending = self._gather(first)
            self._answer(batch)
            if pending is _STOP:
                return

    def _gather(self, first: Job) -> tuple[list[Job], object]:
        """Jobs of one sample shape and one set of other inputs, in arrival order, up to ``max_batch`` samples,
        or until the first has waited ``max_wait`` since it was queued (time spent behind the previous batch
        counts)."""
        batch, size = [first], len(first.x)
        deadline = first.queued + self.max_wait
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:  # once the wait is over, still take what is already queued: under load batches fill
                job = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or size + len(job.x) > self.max_batch or job.x.shape[1:] != first.x.shape[1:] \
                    or job.inputs.keys() != first.inputs.keys():
                return batch, job
            batch.append(job)
            size += len(job.x)
        return batch, None

    def _answer(self, batch: list[Job]) -> None:
        try:
            out = self._explain(np.concatenate([j.x for j in batch]), np.concatenate([j.target for j in batch]),
                                {k: np.concatenate([j.inputs[k] for j in batch]) for k in batch[0].inputs})
        except Exception as exc:  # the session failed: every request in the batch hears why, the worker lives
            error = exc if isinstance(exc, HTTPError) else HTTPError(500, f"explaining failed: "
                                                                          f"{str(exc).splitlines()[0]}")
            deliver([(job, None, error) for job in batch])
            return
        answers, start = [], 0
        for job in batch:
            rows = slice(start, start + len(job.x))
            answers.append((job, {k: v[rows] for k, v in out.items()}, None))
            start = rows.stop
        deliver(answers)

    def _explain(self, x: np.ndarray, target: np.ndarray, inputs: dict) -> dict:
        """One session call per ``max_batch`` rows (only a request bigger than a batch needs several)."""
        parts = []
        for start in range(0, len(x), self.max_batch):
            rows = slice(start, start + self.max_batch)
            other = {"inputs": {k: v[rows] for k, v in inputs.items()}} if inputs else {}  # a text's mask
            out = self.explainer.explain(x[rows], target[rows], **other)
            parts.append({k: out[k] for k in OUTPUTS})
            self.batches += 1
            self.samples += len(out["target"])
            if self.on_batch is not None:
                self.on_batch(len(out["target"]))
        return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}


def deliver(answers: list[tuple[Job, dict | None, Exception | None]]) -> None:
    """Call each job's ``finish(result, error)``: a thread's here, an event loop's on that loop, all of one
    loop's in one callback."""
    by_loop: dict = {}
    for job, result, error in answers:
        if job.loop is None:
            job.finish(result, error)
        else:
            by_loop.setdefault(job.loop, []).append((job.finish, result, error))
    for loop, calls in by_loop.items():
        try:
            loop.call_soon_threadsafe(_finish_all, calls)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _finish_all(calls: list) -> None:
    for finish, result, error in calls:
        finish(result, error)
