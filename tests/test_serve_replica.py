"""The DDPM replica in this process (no Ray started): what it does when a caller goes away."""

import asyncio
import threading
from dataclasses import replace

import pytest
import torch

from hw4 import samplers
from hw4.adversarial.registry import AttackOptions
from hw4.guidance import interval_timesteps
from hw4.samplers import SampleRequest
from serve.deployments import DDPMModel, VAEModel

from .conftest import make_storage, pinned


class Gated:
    """Wraps a forward pass: the first ``free`` calls run at once, later ones wait until the test
    ``open``s the gate (the window in which a caller leaves, with no clock in it). Counts the calls
    started and those in flight, and lets a test wait for the n-th call to start."""

    def __init__(self, inner, free: int) -> None:
        self.inner, self.free = inner, free
        self.started, self.in_flight = 0, 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.waits: dict[int, threading.Event] = {}

    def __call__(self, *a, **k):
        with self.lock:
            self.started += 1
            self.in_flight += 1
            n = self.started
            self.waits.setdefault(n, threading.Event()).set()
        try:
            if n > self.free:
                assert self.gate.wait(60), "the test never opened the gate"
            return self.inner(*a, **k)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def until_started(self, n: int) -> None:
        """Return once the n-th call has started (a hang here fails the test by its timeout)."""
        with self.lock:
            event = self.waits.setdefault(n, threading.Event())
        assert await asyncio.to_thread(event.wait, 60), f"call {n} never started"

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.started, self.in_flight

    async def cancel_in_flight(self, *tasks: asyncio.Task) -> tuple[int, int]:
        """Cancel ``tasks`` while call ``free + 1`` waits at the gate; let the event loop deliver
        the cancellation (a few rounds, no time passing), then open the gate so the call in
        flight can end. Returns (calls started, calls in flight) at the cancel."""
        await self.until_started(self.free + 1)
        for task in tasks:
            task.cancel()
        at_cancel = self.snapshot()
        for _ in range(5):
            await asyncio.sleep(0)
        self.gate.set()
        return at_cancel


def ddpm_replica(tmp_path):
    """A DDPM replica in this process, its network and the network's own forward."""
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(make_storage(tmp_path))))
    net = replica.require().model
    return replica, net, net.forward


@pytest.mark.parametrize("streamed", [True, False])
def test_an_abandoned_request_stops_its_sampler_and_frees_the_model(tmp_path, streamed):
    """Cancelling a request (what Serve does when the client leaves), streamed or not, stops
    the sampler after the network call in flight, and only then lets the next request have the
    model (it used to wait for the abandoned run to finish)."""
    replica, net, inner = ddpm_replica(tmp_path)
    gated = Gated(inner, free=4)
    req = SampleRequest(2, "ddim", 20)

    async def scenario():
        async def client():
            if streamed:
                async for _ in replica.stream(req, 1):
                    pass
            else:  # the plain route's request, as Serve runs it without batching
                await replica._run([(req, None)])

        task = asyncio.create_task(client())
        at_cancel = await gated.cancel_in_flight(task)  # the fifth network call is in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        at_return = gated.snapshot()  # the cancellation is through: the model's lock is free
        net.forward = inner
        images = await replica._run([(replace(req, steps=2, seed=1), None)])
        return at_cancel, at_return, images

    net.forward = gated
    (started, in_flight), (started_after, in_flight_after), images = asyncio.run(scenario())
    assert in_flight == 1 and started < 20  # cancelled with a call in flight, steps to go
    assert started_after == started  # no network call started after the cancel
    assert in_flight_after == 0  # the lock waited for the call in flight to end
    assert images[0].shape == (2, 1, 28, 28)  # and the next request then had the model


def test_a_batch_stops_when_all_its_callers_leave_and_runs_on_for_those_who_stay(tmp_path):
    """Two requests share one batched model call (run by the batcher's task, which no caller's
    cancellation reaches). When both callers leave, the call stops at its next network call and
    the model is free at once; when one leaves, the other still gets its images, the same as
    unbatched."""
    replica, net, inner = ddpm_replica(tmp_path)
    reqs = [SampleRequest(2, "ddim", 20, seed=s) for s in (0, 1)]

    async def batch(leaving: tuple[int, ...]) -> tuple[int, int, list]:
        gated = Gated(inner, free=2)
        net.forward = gated
        tasks = [asyncio.create_task(replica.sample(r)) for r in reqs]
        # the batch has formed and made two calls; the third is in flight
        at_cancel = (await gated.cancel_in_flight(*(tasks[i] for i in leaving)))[0]
        kept = [await t for i, t in enumerate(tasks) if i not in leaving]
        for i in leaving:
            with pytest.raises(asyncio.CancelledError):
                await tasks[i]
        async with replica.lock:  # the model is free once the abandoned call has stopped
            return at_cancel, gated.snapshot()[0], kept

    async def scenario():
        both_left = await batch((0, 1))
        one_left = await batch((0,))
        net.forward = inner
        return both_left, one_left, (await replica._run([(reqs[1], None)]))[0]

    (at_cancel, started, _), (_, started_one, kept), alone = asyncio.run(scenario())
    assert list(replica.batcher.sizes) == [2, 2]  # one model call for both requests, each time
    # no network call started after both left: the one in flight was the last
    assert started == at_cancel < 20
    assert started_one == 20  # the one who stayed got all 20 steps
    torch.testing.assert_close(kept[0], alone, rtol=0, atol=1e-4)  # a batch sums in another order


def test_an_abandoned_attack_stops_at_the_next_forward_pass(tmp_path):
    """/adversarial's PGD loop runs in a worker thread; cancelling the request stops it at the
    model's next forward pass instead of running all its steps for nobody."""
    replica = VAEModel.func_or_class()
    replica.reconfigure(pinned(str(make_storage(tmp_path)), "vae"))

    def classifier(x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float() + x.mean()

    gated = Gated(classifier, free=2)
    replica.classifiers = lambda: {"pixel_cnn": gated}
    replica.images = lambda spec: (torch.rand(4, 1, 28, 28), torch.arange(4))

    async def scenario():
        task = asyncio.create_task(replica.attack({}, "pgd", [0.1], ["pixel_cnn"], False,
                                                   AttackOptions(steps=100), 0, 2))
        at_cancel = await gated.cancel_in_flight(task)  # the third forward pass is in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        return at_cancel, gated.snapshot()

    (started, in_flight), (started_after, in_flight_after) = asyncio.run(scenario())
    assert in_flight == 1 and started < 100  # of the 100 PGD steps' forward passes
    assert started_after == started  # none started after the cancel
    assert in_flight_after == 0  # the request ended only after the pass in flight did


def test_an_unlabeled_request_to_a_conditional_model_runs_one_batch_of_n(tmp_path):
    """The request's default guidance stays in it, but rows without labels run unguided: each
    network call sees the N rows once, not a guided 2N batch; labelled rows with w > 0 do double."""
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(make_storage(tmp_path))))
    net = replica.require().model
    assert replica.require().conditional
    inner, rows = net.forward, []
    net.forward = lambda x, *a, **k: rows.append(len(x)) or inner(x, *a, **k)
    req = SampleRequest(3, "ddim", 4, guidance=1.0)
    asyncio.run(replica._run([(req, None)]))
    asyncio.run(replica._run([(replace(req, labels=(1, 2, 3)), None)]))
    lo, hi = interval_timesteps(replica.require().timesteps)  # guided steps run both halves
    guided = [6 if lo <= t <= hi else 3 for t in samplers.timesteps("ddim", replica.require().schedule, 4)]
    assert rows == [3] * 4 + guided and 6 in guided


def test_a_caller_that_leaves_while_a_stream_holds_the_model_is_dropped_from_its_batch(tmp_path):
    """Two requests batched while a stream holds the model lock; one leaves before the lock is
    free. Only the one that stayed is sampled (its rows ran too before: the batch's call ran for
    every caller as long as one stayed)."""
    replica = DDPMModel.func_or_class()
    replica.reconfigure(pinned(str(make_storage(tmp_path))))
    ddpm = replica.require()
    rows, inner = [], ddpm.sample

    def counting(n, *a, **k):
        rows.append(n)
        return inner(n, *a, **k)

    ddpm.sample = counting
    req = SampleRequest(3, "ddim", 2)

    async def scenario():
        await replica.lock.acquire()  # what a running stream holds
        leaver = asyncio.create_task(replica.sample(req))
        stayer = asyncio.create_task(replica.sample(replace(req, n=2, seed=1)))
        while not replica.batcher.sizes:  # the batch of both is formed and waits for the lock
            await asyncio.sleep(0)
        assert list(replica.batcher.sizes) == [2]
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        replica.lock.release()
        return await stayer

    images = asyncio.run(scenario())
    assert images.shape == (2, 1, 28, 28)
    assert rows == [2]  # one call, the stayer's rows only
