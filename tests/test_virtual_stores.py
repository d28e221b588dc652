"""Virtual workers on real stores: files on disk, a SQLite database, a killed process.

The real clock, real files and a real database; every wait is bounded.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.stores import FileStore, SqliteStore
from virtual_helpers import Counter, killed_after


class Cart:
    """A cart per user: a list of books."""

    async def resolve(self, cart: Any, book: Any) -> Any:
        return [*cart, book]


async def test_carts_survive_the_persist_in_files_and_come_back(tmp_path: Path) -> None:
    async with trio_persist.open_persist(Cart(), store=FileStore(tmp_path)) as persist:
        for user in ("ann", "bob"):
            await persist.ask(("cart", user), "dune", default=list)
        await persist.ask(("cart", "ann"), "emma")
    assert len(list(await trio.Path(tmp_path).glob("*.state"))) == 2
    async with trio_persist.open_persist(Cart(), store=FileStore(tmp_path)) as persist:
        assert await persist.ask(("cart", "ann"), "ulysses") == ["dune", "emma", "ulysses"]
        assert await persist.ask(("cart", "bob"), "odyssey") == ["dune", "odyssey"]


async def test_many_groups_under_max_workers_all_end_on_disk(tmp_path: Path) -> None:
    async with trio_persist.open_persist(
        Counter(), store=FileStore(tmp_path), max_workers=10
    ) as persist:
        async with trio.open_nursery() as nursery:
            for group in range(200):
                nursery.start_soon(partial(persist.ask, group, group, default=int))
                nursery.start_soon(partial(persist.ask, group, 1, default=int))
    store = FileStore(tmp_path)
    assert [await store.load(group) for group in range(200)] == [g + 1 for g in range(200)]


async def test_a_durable_sqlite_worker_keeps_every_acknowledged_change(tmp_path: Path) -> None:
    database = tmp_path / "states.db"
    async with trio_persist.open_persist(
        Counter(), store=SqliteStore(database), durable=True
    ) as persist:
        for _ in range(20):
            reply = await persist.ask("account", 5, default=int)
            async with SqliteStore(database) as reader:  # another connection sees it
                assert await reader.load("account") == reply
    assert reply == 100


CHILD = """
import sys, trio, trio_persist
from trio_persist.stores import SqliteStore

async def add(total, amount):
    return total + amount

async def main():
    async with trio_persist.open_persist(add, store=SqliteStore(sys.argv[1]), durable=True) as p:
        while True:
            print(await p.ask("account", 1, default=int), flush=True)

trio.run(main)
"""


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_a_durable_request_whose_caller_leaves_during_the_write_is_applied_and_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # A store's write in a thread cannot be cancelled: it runs to its end, and
    # the worker goes on from the state it wrote, in memory as on disk.
    store: FileStore | SqliteStore
    if kind == "file":
        store, method = FileStore(tmp_path), "_write_sync"
    else:
        store, method = SqliteStore(tmp_path / "states.db"), "_replace"
    writing, release = trio.Event(), threading.Event()
    write = getattr(type(store), method)

    def held(*args: Any) -> Any:
        trio.from_thread.run_sync(writing.set)
        release.wait(10)
        return write(*args)

    async with trio_persist.open_persist(Counter(), store=store, durable=True) as persist:
        assert await persist.ask("account", 1, default=int) == 1
        monkeypatch.setattr(type(store), method, held)
        caller = trio.CancelScope()

        async def ask() -> None:
            with caller:
                await persist.ask("account", 10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            with trio.fail_after(10):
                await writing.wait()
            caller.cancel()  # the caller leaves while its state is written
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        monkeypatch.undo()
        assert caller.cancelled_caught
        assert await persist.ask("account", 100) == 111  # it was applied
        assert await store.load("account") == 111


async def test_a_durable_worker_killed_at_any_moment_lost_no_acknowledged_change(
    tmp_path: Path,
) -> None:
    database = tmp_path / "states.db"
    acknowledged = await killed_after([CHILD, str(database)])
    async with SqliteStore(database) as store:
        saved = await store.load("account")
    # Every reply the child printed was saved before it was sent; at most the
    # one being answered when it died is saved and not acknowledged.
    assert saved is not None
    assert acknowledged <= saved
