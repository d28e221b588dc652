"""Writes are never shared: ``share=False``, and advancing workers.

Deduplication is right for reads. Twenty identical "add this book to the cart"
calls are twenty writes: merging them would silently lose nineteen.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist._cli._demo import Shop, session_group


class Cart:
    """A cart per user: a worker's state is the list of books; adding one is a write."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def group(self, base: Any, request: Any) -> Any:
        return "cart"

    async def resolve(self, base: Any, request: Any) -> Any:
        await trio.sleep(1)
        if isinstance(base, list):  # a worker's state: advance it
            return [*base, request["add"]]
        self.stored.append(request["add"])  # a flight: write to the store
        return len(self.stored)


async def test_identical_writes_with_share_false_each_execute_in_arrival_order(
    autojump_clock: object,
) -> None:
    cart = Cart()
    async with trio_persist.open_persist(cart) as persist, trio.open_nursery() as nursery:
        results: list[int] = []

        async def add() -> None:
            results.append(await persist.resolve("db", {"add": "dune"}, share=False))

        for _ in range(20):
            nursery.start_soon(add)
            await trio.testing.wait_all_tasks_blocked()
    assert cart.stored == ["dune"] * 20
    assert results == list(range(1, 21))  # one after another, in arrival order
    assert trio.current_time() == 20
    assert persist.statistics().deduplicated == 0


async def test_a_write_never_joins_a_read_and_no_read_joins_a_write(
    autojump_clock: object,
) -> None:
    cart = Cart()
    async with trio_persist.open_persist(cart) as persist, trio.open_nursery() as nursery:
        answers: dict[str, Any] = {}

        async def call(name: str, share: bool) -> None:
            answers[name] = await persist.resolve("db", {"add": "dune"}, share=share)

        nursery.start_soon(call, "read", True)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "write", False)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "second read", True)  # joins the first read, not the write
    assert answers == {"read": 1, "second read": 1, "write": 2}
    assert persist.statistics().executions == 2


async def test_an_advancing_worker_executes_every_identical_request(
    autojump_clock: object,
) -> None:
    async with trio_persist.open_persist(Cart()) as persist:
        worker = await persist.start_worker([])
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(persist.resolve, [], {"add": "dune"})
        assert worker.state == ["dune"] * 20
        assert worker.statistics().served == 20


async def test_a_static_worker_serves_writes_with_share_false_one_by_one(
    autojump_clock: object,
) -> None:
    async with trio_persist.open_persist(Cart(), static_worker=True) as persist:
        worker = await persist.start_worker([])

        async def write() -> None:
            await persist.resolve([], {"add": "dune"}, share=False)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(persist.resolve, [], {"add": "dune"})  # reads: merged
            for _ in range(3):
                nursery.start_soon(write)
        assert worker.statistics().served == 1 + 3
        assert persist.statistics().deduplicated == 2  # the two reads that joined the first


async def test_spawn_worker_without_grouping_is_refused() -> None:
    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    async with trio_persist.open_persist(device, await_inprogress=False) as persist:
        with pytest.raises(ValueError, match="spawn_worker=True needs groups"):
            await persist.resolve("b", "r", spawn_worker=True)
        with pytest.raises(TypeError, match="share must be True or False"):
            await persist.resolve("b", "r", share="no")  # type: ignore[arg-type]


async def test_the_demo_counts_every_page_view_of_a_session(autojump_clock: object) -> None:
    shop = Shop(random.Random(1))
    async with trio_persist.open_persist(shop) as persist:
        fresh = {"user": "u1", "views": 0, "last": None}
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                ask = functools.partial(persist.ask, default=lambda: fresh)
                nursery.start_soon(ask, session_group("u1"), {"page": 3})
        assert persist.workers()[0].state["views"] == 20


# -- writes across processes -------------------------------------------------------------


class Ledger:
    """Deposits: each execution adds its amount (a write must never be merged)."""

    def __init__(self) -> None:
        self.deposits: list[int] = []

    async def resolve(self, account: str, amount: int) -> int:
        await trio.sleep(0.05)  # long enough for the other process to arrive
        self.deposits.append(amount)
        return sum(self.deposits)


async def test_writes_from_two_processes_each_execute(redis_url: str, namespace: str) -> None:
    from trio_persist.redis import RedisBackend

    ledger = Ledger()
    first = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    second = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(ledger, backend=first, linger=5) as a,
            trio_persist.open_persist(ledger, backend=second, linger=5) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(functools.partial(a.resolve, "acct", 100, share=False))
            nursery.start_soon(functools.partial(b.resolve, "acct", 100, share=False))
            nursery.start_soon(b.resolve, "acct", 100)  # a read of the same request
    assert ledger.deposits == [100, 100, 100]
    assert (first.statistics().led, second.statistics().led) == (0, 1)  # the read alone


async def test_a_write_is_never_answered_by_a_lingering_result_and_never_lingers(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    ledger = Ledger()
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    with trio.fail_after(20):
        async with trio_persist.open_persist(ledger, backend=backend, linger=5) as persist:
            assert await persist.resolve("acct", 100) == 100  # a read: it lingers
            for total in (200, 300, 400):
                assert await persist.resolve("acct", 100, share=False) == total
            assert await persist.resolve("acct", 100) == 100  # the read's own result
    assert ledger.deposits == [100] * 4
    assert backend.statistics().led == 1
