"""serve/batcher.py in process: no timer, no waiting when idle, everything queued during a call
goes into the next, row limits, cancelled waiters dropped, errors to every caller of a call."""

import asyncio

import pytest

from serve.batcher import Batcher


class Model:
    """A model call that takes ``seconds`` and answers each item doubled, recording its batches."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds, self.calls = seconds, []

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await asyncio.sleep(self.seconds)
        if -1 in items:
            raise ValueError("no negative items")
        return [2 * i for i in items]


class GatedModel:
    """A model call that waits for a permit (``allow``) before it answers each item doubled:
    the test decides when each call ends, and ``running`` counts the calls that have started."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.permits: asyncio.Queue[None] = asyncio.Queue()

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await self.permits.get()
        if -1 in items:
            raise ValueError("no negative items")
        return [2 * i for i in items]

    def allow(self, calls: int = 1) -> None:
        for _ in range(calls):
            self.permits.put_nowait(None)


async def ticks(n: int = 3) -> None:
    """Let the event loop run ``n`` rounds: no time passes, so no timer can fire."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_lone_request_runs_at_once_and_later_arrivals_share_the_next_call():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model.run, max_rows=64)
        first = asyncio.create_task(batcher.submit(1))
        await ticks()  # no batching timer in front of a lone request: its call has started
        assert model.calls == [[1]]
        rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5)]
        await ticks()  # these four wait while the first call runs
        assert model.calls == [[1]] and not first.done()
        model.allow()
        assert await first == 2
        model.allow()
        assert await asyncio.gather(*rest) == [4, 6, 8, 10]
        return model.calls, list(batcher.sizes)

    assert asyncio.run(scenario()) == ([[1], [2, 3, 4, 5]], [1, 4])


def test_rows_cap_a_call_first_come_first_served():
    model = Model()
    batcher = Batcher(model.run, max_rows=10, rows=lambda i: i)

    async def scenario():
        return await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 3, 12, 1)))

    assert asyncio.run(scenario()) == [8, 10, 6, 24, 2]
    # 4 + 5 fit in 10; 3 does not fit beside them; 12 is over the cap and runs alone
    assert model.calls == [[4, 5], [3], [12], [1]]


def test_a_caller_that_leaves_while_waiting_is_dropped_and_errors_reach_every_caller():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model.run, max_rows=64)
        first = asyncio.create_task(batcher.submit(1))
        await ticks()
        leaving = asyncio.create_task(batcher.submit(2))
        staying = asyncio.create_task(batcher.submit(3))
        await ticks()
        leaving.cancel()  # while the first call runs: before its own call starts
        model.allow(2)
        results = await asyncio.gather(first, staying)
        failing = [asyncio.create_task(batcher.submit(i)) for i in (-1, 7)]
        model.allow()
        errors = await asyncio.gather(*failing, return_exceptions=True)
        return results, errors, leaving.cancelled(), model.calls

    results, errors, left, calls = asyncio.run(scenario())
    assert results == [2, 6] and left
    assert calls == [[1], [3], [-1, 7]]  # the one who left never reached the model
    assert [type(e) for e in errors] == [ValueError, ValueError]


@pytest.mark.parametrize("n", [1, 7])
def test_every_caller_is_answered_under_a_stream_of_arrivals(n):
    """Requests keep arriving while calls run: none is lost or answered twice."""
    model = Model(seconds=0.01)
    batcher = Batcher(model.run, max_rows=n)

    async def client(i: int) -> int:
        await asyncio.sleep(0.003 * (i % 10))
        return await batcher.submit(i)

    async def scenario():
        return await asyncio.gather(*(client(i) for i in range(40)))

    assert asyncio.run(scenario()) == [2 * i for i in range(40)]
    assert sorted(i for call in model.calls for i in call) == list(range(40))
    assert max(len(c) for c in model.calls) <= n
