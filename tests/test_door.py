"""The door check, `Persist.overloaded`: what a service asks before it spends
anything on a request (a task, a body to read), to answer "busy" at once
(docs/redis.md, "Overload")."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from fault_proxy import FaultProxy
from redis_helpers import Recorder, eventually
from trio_persist.redis import RedisBackend
from virtual_helpers import Counter, Scripted


async def test_a_persist_without_a_backend_or_max_workers_is_never_overloaded(
    autojump_clock: object,
) -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return request

    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        for request in range(1000):
            nursery.start_soon(persist.resolve, "base", request)
        await trio.testing.wait_all_tasks_blocked()
        assert persist.statistics().in_flight == 1000
        with trio.testing.assert_no_checkpoints():
            assert not persist.overloaded()


async def test_a_persist_is_overloaded_while_a_new_worker_would_wait_for_room(
    autojump_clock: object,
) -> None:
    # max_workers=1: b evicts a, which saves until 3. Two workers live (twice
    # max_workers), so a worker activated now would wait: the door says so,
    # and says it no longer once a's save ends.
    store = Scripted(save_delay=3)
    async with trio_persist.open_persist(Counter(), max_workers=1, store=store) as persist:
        await persist.ask("a", 1, default=int)
        assert not persist.overloaded()
        await persist.ask("b", 1, default=int)
        assert persist.overloaded()
        await trio.sleep(3)  # a's save ends
        await trio.testing.wait_all_tasks_blocked()
        assert not persist.overloaded()
        assert len(persist.workers()) == 1


async def test_a_closed_persist_is_not_overloaded(autojump_clock: object) -> None:
    store = Scripted(save_delay=3)
    async with trio_persist.open_persist(Counter(), max_workers=1, store=store) as persist:
        await persist.ask("a", 1, default=int)
        await persist.ask("b", 1, default=int)
        assert persist.overloaded()
    assert persist.closed
    assert not persist.overloaded()  # its calls raise PersistClosed instead


def test_a_redis_backend_that_is_not_serving_is_not_overloaded(redis_url: str) -> None:
    assert not RedisBackend(redis_url).overloaded()


async def test_the_door_says_what_the_backends_refusal_would_without_counting(
    redis_url: str, redis_server: Any, namespace: str
) -> None:
    # One slot (max_pending=1), its acquire held by a stalled link; a second
    # call waits in line. Once it has waited a quarter of the timeout the door
    # says overloaded (counting nothing), and a call asked anyway is refused
    # (counted); once the link answers, the door is open again.
    device = Recorder("ok")
    device.release.set()
    proxy = FaultProxy(redis_server.port)
    got: list[Any] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            await outer.start(proxy.serve)
            backend = RedisBackend(proxy.url, namespace=namespace, timeout=4, max_pending=1)
            async with (
                trio_persist.open_persist(device, backend=backend) as persist,
                trio.open_nursery() as nursery,
            ):
                assert await persist.resolve("base", "warm") == "ok"
                proxy.stall()

                async def call(request: str) -> None:
                    try:
                        got.append(await persist.resolve("base", request))
                    except trio_persist.BackendUnavailable as exc:
                        got.append(exc)

                nursery.start_soon(call, "a")
                await eventually(lambda: backend.statistics().round_trips == 2 + 1)
                nursery.start_soon(call, "b")
                await trio.testing.wait_all_tasks_blocked()
                assert not persist.overloaded()  # b has just started waiting
                await eventually(persist.overloaded)
                assert backend.statistics().rejected == 0
                with pytest.raises(trio_persist.BackendUnavailable, match="max_pending"):
                    await persist.resolve("base", "c")
                assert backend.statistics().rejected == 1
                proxy.resume()
                await eventually(lambda: len(got) == 2)
                assert not persist.overloaded()
                assert await persist.resolve("base", "c") == "ok"
            outer.cancel_scope.cancel()
    assert "ok" in got  # a's, once the link answers (b's may have waited out its budget)


def test_calls_that_never_go_through_redis_never_shut_its_door(
    redis_url: str, namespace: str
) -> None:
    # A method grouped by its instance's identity runs here, never on Redis
    # (docs/reliability.md): the door is not asked for it, so its calls keep
    # no slot of the backend's and never shut the door on calls that do go.
    made: list[RedisBackend] = []

    def backend() -> RedisBackend:
        made.append(RedisBackend(redis_url, namespace=namespace, max_pending=1, timeout=4))
        return made[-1]

    class Account:
        @trio_persist.deduplicated(backend=backend)
        async def balance(self) -> int:
            return 10

        @trio_persist.deduplicated(backend=backend, instance_key=lambda self: "acme")
        async def owner(self) -> str:
            return "acme inc."

    async def main() -> None:
        with trio.fail_after(20):
            for _ in range(20):
                assert await Account().balance() == 10
            [used] = made
            assert used.statistics().led == 0  # nothing went to Redis
            assert not used.overloaded()
            assert await Account().owner() == "acme inc."
            assert (used.statistics().led, used.statistics().rejected) == (1, 0)

    trio.run(main)
