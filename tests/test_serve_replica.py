"""The DDPM replica in this process (no Ray started): what it does when a caller goes away."""

import asyncio
import time

import pytest

from serve.deployments import DDPMModel

from .conftest import make_storage


@pytest.mark.parametrize("streamed", [True, False])
def test_an_abandoned_request_stops_its_sampler_and_frees_the_model(tmp_path, streamed):
    """Cancelling a request (what Serve does when the client leaves), streamed or not, stops
    the sampler after the network call in flight, and only then lets the next request have the
    model (it used to wait for the abandoned run to finish)."""

    replica = DDPMModel.func_or_class()
    replica.reconfigure({"storage_path": str(make_storage(tmp_path))})
    net = replica.require().model
    inner, calls = net.forward, []

    def slow(*a, **k):
        calls.append(time.monotonic())
        time.sleep(0.2)
        return inner(*a, **k)

    req = {"n": 2, "sampler": "ddim", "steps": 20, "eta": 0.0, "seed": 0, "labels": None,
           "guidance": 0.0}

    async def scenario():
        async def client():
            if streamed:
                async for _ in replica.stream(req, 1):
                    pass
            else:  # the plain route's request, as Serve runs it without batching
                await replica._run([req])

        task = asyncio.create_task(client())
        await asyncio.sleep(1.0)  # about five network calls in
        task.cancel()
        cancelled = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        released = time.monotonic()
        net.forward = inner
        t0 = time.monotonic()
        await replica._run([{**req, "steps": 2, "seed": 1}])
        return cancelled, released, time.monotonic() - t0

    net.forward = slow
    cancelled, released, next_wait = asyncio.run(scenario())
    assert 2 <= len(calls) <= 8, calls
    assert all(c < cancelled for c in calls)  # no network call started after the cancel
    assert released - calls[-1] >= 0.15  # the lock waited for the call in flight to end
    assert next_wait < 2.0
