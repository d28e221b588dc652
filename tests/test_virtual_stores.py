"""Virtual workers on real stores: files on disk, a SQLite database, a killed process.

The real clock, real files and a real database; every wait is bounded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

import trio_persist
from trio_persist.stores import FileStore, SqliteStore
from virtual_helpers import Counter


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


async def test_a_durable_worker_killed_at_any_moment_lost_no_acknowledged_change(
    tmp_path: Path,
) -> None:
    database = tmp_path / "states.db"
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, str(database)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    acknowledged = 0
    buffer = b""
    with trio.fail_after(60):
        while acknowledged < 200:
            buffer += await child.stdout.receive_some()
            *lines, buffer = buffer.split(b"\n")
            if lines:
                acknowledged = int(lines[-1])
    child.send_signal(signal.SIGKILL)
    await child.wait()
    async with SqliteStore(database) as store:
        saved = await store.load("account")
    # Every reply the child printed was saved before it was sent; at most the
    # one being answered when it died is saved and not acknowledged.
    assert saved is not None
    assert acknowledged <= saved
