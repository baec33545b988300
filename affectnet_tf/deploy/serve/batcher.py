"""Batching: the images of concurrent requests gathered into one model call.

Each image prepared for the model (resized, or its face crops) is one item on an asyncio queue;
one worker takes up to ``max_batch_size`` waiting items, waiting at most ``batch_timeout_ms``
for more after the first, and runs them as one call in a thread of its own, so that the event
loop goes on accepting requests meanwhile. When a batched call raises, its items are run one by
one, so that only the request whose image made it fail gets the error.

Example:

```python
async def main():
    batcher = Batcher(lambda items: [item.upper() for item in items], max_batch_size=8)
    batcher.start()
    try:
        print(await asyncio.gather(batcher.submit("a"), batcher.submit("b")))  # ['A', 'B']
    finally:
        await batcher.stop()

asyncio.run(main())
```
"""

import asyncio
import concurrent.futures
import contextlib
import logging

__all__ = ["Batcher"]

logger = logging.getLogger(__name__)


class Batcher:
    """Gathers items submitted by concurrent requests into batches for one function.

    ``await batcher.submit(item)`` puts the item on an asyncio queue and waits for its result.
    One worker task takes the first waiting item, then more until ``max_batch_size`` or until
    ``batch_timeout_ms`` have passed, and runs ``function(items)`` (one result per item) in a
    one-thread executor, so the event loop goes on accepting requests meanwhile. When a call on
    several items raises, each item runs alone, so that only the items that make ``function``
    fail get its exception and the others their results. The queue holds what the requests in
    progress submitted (the server bounds those with ``max_queued_requests``); an item whose
    future is cancelled (its request failed or timed out) is not run.

    Attributes:
        batches: how many times ``function`` ran successfully (model calls).
        items: how many items went through it.
        largest_batch: the largest batch so far.
        failures: how many items made ``function`` raise when run alone.
    """

    def __init__(self, function, max_batch_size=32, batch_timeout_ms=5.0):
        self.function = function
        self.max_batch_size = int(max_batch_size)
        self.timeout = float(batch_timeout_ms) / 1000.0
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.failures = 0
        self.executor = None
        self._queue = None
        self._task = None

    def start(self):
        """Starts the worker on the running event loop."""
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serve-model")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        """Stops the worker; items still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("The server is stopping"))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, item):
        """A future of ``item``'s result."""
        if self._task is None:
            raise RuntimeError("The batcher is not running: call start() on the event loop")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return future

    def _name(self):
        """The function's name, for the log lines."""
        return getattr(self.function, "__qualname__", repr(self.function))

    def queued(self):
        """How many items wait for the model."""
        return 0 if self._queue is None else self._queue.qsize()

    async def _gather(self):
        """The next batch: the first waiting item, then those that come within the timeout,
        up to ``max_batch_size``; those whose future is done (cancelled) are left out."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.timeout
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]

    def _call(self, items, release=False):
        """``function(items)``, checked to answer one result per item (in the model thread)."""
        results = list(self.function(items))
        if len(results) != len(items):
            raise RuntimeError(
                f"The model function answered {len(results)} results for {len(items)} items"
            )
        if release:  # the thread lets go of the items (decoded images) before it answers
            items.clear()
        return results

    def _one_by_one(self, items):
        """Each item alone: its result, or the exception it raised; and the calls that ran."""
        results, calls = [], 0
        for item in items:
            try:
                (result,) = self._call([item])
            except Exception as error:
                logger.exception("%s failed on one item", self._name())
                results.append(error)
            else:
                results.append(result)
                calls += 1
        return results, calls

    async def _work(self):
        """The worker: gathers a batch, runs it and answers its futures, until cancelled."""
        while True:
            batch = await self._gather()
            if batch:
                await self._run(batch)
            batch = None  # nothing of the batch is kept while the next one is awaited

    async def _run(self, batch):
        """Runs one batch of ``(item, future)`` and sets each future's result or exception."""
        items = [item for item, _ in batch]
        futures = [future for _, future in batch]
        batch.clear()
        results, calls = await self._results(items)
        items = None
        succeeded = sum(not isinstance(result, Exception) for result in results)
        self.failures += len(results) - succeeded
        self.batches += calls
        self.items += succeeded
        if calls:
            self.largest_batch = max(self.largest_batch, succeeded // calls)
        for future, result in zip(futures, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _results(self, items):
        """``(results, calls)`` of a batch: one call on all its items, or when that raises, one
        call on each (an item's result is then the exception it raised)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._call, items, True), 1
        except Exception as error:
            if len(items) == 1:
                logger.exception("%s failed on a batch of 1", self._name())
                return [error], 0
            # find the items that fail: the others get their answers
            logger.warning(
                "%s failed on a batch of %d (%s: %s); running its items one by one",
                self._name(),
                len(items),
                type(error).__name__,
                error,
            )
            return await loop.run_in_executor(self.executor, self._one_by_one, items)
