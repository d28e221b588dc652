"""Writes on Redis are never merged: ``share=False`` runs in its own process.

A write never follows another process's execution, is never answered by a
lingering result, and its own result never lingers for a read (see the Redis
page of the docs: what a write on Redis costs). Two persists on one namespace
stand for two processes: they meet only through Redis.
"""

from __future__ import annotations

import functools
from typing import Any

import trio

import trio_persist
from redis_helpers import eventually
from trio_persist.redis import RedisBackend


class Account:
    """A device whose every execution is a deposit: it counts them, and can be held."""

    def __init__(self) -> None:
        self.deposits = 0
        self.release = trio.Event()
        self.release.set()

    async def __call__(self, base: Any, request: Any) -> Any:
        self.deposits += 1
        await self.release.wait()
        return {"balance": 100 * self.deposits}


def backends(url: str, namespace: str) -> tuple[RedisBackend, RedisBackend]:
    return RedisBackend(url, namespace=namespace), RedisBackend(url, namespace=namespace)


async def test_two_processes_concurrent_identical_writes_both_execute(
    redis_url: str, namespace: str
) -> None:
    account = Account()
    account.release = trio.Event()
    one, two = backends(redis_url, namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(account, backend=one) as a,
            trio_persist.open_persist(account, backend=two) as b,
            trio.open_nursery() as nursery,
        ):
            for persist in (a, b):
                deposit = functools.partial(persist.resolve, share=False)
                nursery.start_soon(deposit, "acct", {"deposit": 100})
            # Both deposits run, or (the defect) the second follows the first.
            await eventually(lambda: account.deposits + two.statistics().following == 2)
            account.release.set()
    assert account.deposits == 2
    assert (one.statistics().led, two.statistics().followed) == (0, 0)  # Redis never asked


async def test_a_write_is_never_answered_by_a_lingering_result(
    redis_url: str, namespace: str
) -> None:
    account = Account()
    one, two = backends(redis_url, namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(account, backend=one, linger=60) as a,
            trio_persist.open_persist(account, backend=two, linger=60) as b,
        ):
            await a.resolve("acct", {"deposit": 100})  # a read: its result lingers
            for _ in range(5):
                await b.resolve("acct", {"deposit": 100}, share=False)
            await a.resolve("acct", {"deposit": 100}, share=False)
    assert account.deposits == 1 + 5 + 1


async def test_a_writes_result_never_answers_a_read(redis_url: str, namespace: str) -> None:
    account = Account()
    one, two = backends(redis_url, namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(account, backend=one, linger=60) as a,
            trio_persist.open_persist(account, backend=two, linger=60) as b,
        ):
            assert await a.resolve("acct", {"deposit": 100}, share=False) == {"balance": 100}
            assert await b.resolve("acct", {"deposit": 100}) == {"balance": 200}  # its own
            assert await a.resolve("acct", {"deposit": 100}) == {"balance": 200}  # b's, shared
    assert account.deposits == 2
