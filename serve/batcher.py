"""Batching that never waits on a timer. A request that finds the model idle runs at once; the
requests that arrive while a model call runs wait and go together into the next call, up to
``max_rows`` rows. A lone client pays no batching delay, and under load every call takes all that
queued during the last one.

``@serve.batch`` forms each batch ``batch_wait_timeout_s`` after its first request, whether or not
the model is free: a lone request waits out the timer, and with a short timer, batches formed
while the model is busy stay small (each waits its turn at the model with whatever arrived in its
own window). Plain asyncio: no Ray here, so it is tested in process."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """``await batcher.submit(item)`` -> that item's result from ``run(items)``, which maps a list
    of items to their results in order. Items are taken first come, first served; ``rows(item)``
    is its share of ``max_rows`` (an item over it alone still runs, alone). A caller that is
    cancelled while waiting is dropped before its call starts; one cancelled during a call is
    the call's business (``run`` may stop early and answer None for it)."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_rows: int,
                 rows: Callable[[Item], int] = lambda _: 1) -> None:
        self.run, self.max_rows, self.rows = run, max_rows, rows
        self.waiting: deque[tuple[Item, asyncio.Future]] = deque()
        self.sizes: deque[int] = deque(maxlen=500)  # items per call, most recent last
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future  # cancelling the caller cancels the future

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch, used = [], 0
        while self.waiting:
            item, future = self.waiting[0]
            if future.cancelled():  # its caller left before the call started
                self.waiting.popleft()
                continue
            if batch and used + self.rows(item) > self.max_rows:
                break
            batch.append(self.waiting.popleft())
            used += self.rows(item)
        return batch

    async def _drain(self) -> None:
        while batch := self._next_batch():
            self.sizes.append(len(batch))
            try:
                results = await self.run([item for item, _ in batch])
            except asyncio.CancelledError:  # the replica is shutting down
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as err:  # noqa: BLE001 - every caller of the call gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
