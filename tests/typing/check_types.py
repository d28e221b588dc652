"""Static checks of the public types, run by mypy and pyright in `.ci/run`.

Not a pytest module: type checkers read it (nothing here needs to run). If a
result type degrades to ``Any``, an ``assert_type`` below fails the check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from typing_extensions import assert_type

import trio_persist
from trio_persist import stores
from trio_persist.testing import RecordingDevice


async def profile(base: str, request: int) -> dict[str, int]:
    return {base: request}


class Ledger:
    async def resolve(self, base: list[str], request: str) -> tuple[str, ...]:
        return (*base, request)

    def group(self, base: list[str], request: str | None) -> str:
        return request or ""


async def fetch(user: str, *, version: int = 1) -> bytes:
    return f"{user}:{version}".encode()


async def functions() -> None:
    async with trio_persist.open_persist(profile) as persist:
        assert_type(persist, trio_persist.Persist[str, int, dict[str, int]])
        assert_type(await persist.resolve("db", 1), dict[str, int])
        assert_type(await persist.resolve("db", 1, share=False), dict[str, int])
        worker = await persist.start_worker("state")
        assert_type(worker, trio_persist.Worker[str])
        assert_type(worker.state, str)
        assert_type(persist.workers(), tuple[trio_persist.Worker[str], ...])
        assert_type(persist.overloaded(), bool)
        assert_type(await persist.ask("g", 1, default=lambda: "state"), dict[str, int])
        await persist.ask("g", "one")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def objects() -> None:
    async with trio_persist.open_persist(Ledger(), static_worker=True) as persist:
        assert_type(await persist.resolve(["a"], "b"), tuple[str, ...])
        assert_type(await persist.get_worker("g", default=list), trio_persist.Worker[list[str]])


async def wrapped() -> None:
    async with trio_persist.open_persist(RecordingDevice()) as persist:
        fetch_once = persist.wrap(fetch)
        assert_type(await fetch_once("ann", version=2), bytes)
        await fetch_once("ann", 2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


async def untyped(device: Any) -> None:
    async with trio_persist.open_persist(device) as persist:
        assert_type(persist, trio_persist.Persist[Any, Any, Any])
    async with trio_persist.open_persist(RecordingDevice()) as recorded:
        assert_type(await recorded.resolve("b", "r"), Any)


class Sessions(trio_persist.Device[dict[str, int], str, dict[str, int]]):
    """Subclassing the documented protocol: the hooks' signatures at hand."""

    async def resolve(self, base: dict[str, int], request: str) -> dict[str, int]:
        return {**base, request: base.get(request, 0) + 1}

    def label(self, base: Any, request: Any) -> str:
        return "sessions"


async def devices() -> None:
    ledger: trio_persist.Device[list[str], str, tuple[str, ...]] = Ledger()  # by resolve alone
    async with trio_persist.open_persist(ledger) as persist:
        assert_type(await persist.resolve(["a"], "b"), tuple[str, ...])
    async with trio_persist.open_persist(Sessions()) as sessions:
        assert_type(await sessions.resolve({}, "ann"), dict[str, int])


async def state_stores() -> None:
    # Each shipped store is a Store and a RecordStore to a type checker, too.
    plain: stores.Store = stores.MemoryStore()
    fenced: stores.RecordStore = stores.FileStore("states")
    async with stores.MemoryStore() as memory:
        assert_type(memory, stores.MemoryStore)
    async with stores.SqliteStore("states.db") as sqlite:
        assert_type(sqlite, stores.SqliteStore)
        assert_type(await sqlite.load_record("g"), stores.StateRecord | None)
    assert_type(await plain.load("g"), Any | None)
    assert_type(await fenced.load_record("g"), stores.StateRecord | None)
    assert_type(stores.check_store(plain), stores.Store | None)


async def without_a_device() -> None:
    async with trio_persist.open_persist() as persist:
        fetch_once = persist.wrap(fetch)
        assert_type(await fetch_once("ann"), bytes)
        await persist.resolve("db", "x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@trio_persist.deduplicated
async def profile_of(user: str, *, version: int = 1) -> dict[str, int]:
    return {user: version}


@trio_persist.deduplicated(linger=5, share=False, name="ledger.post")
async def post(account: str, amount: int) -> int:
    return amount


class Catalogue:
    @trio_persist.deduplicated
    async def lookup(self, sku: str) -> tuple[str, int]:
        return (sku, 1)


async def decorated() -> None:
    assert_type(await profile_of("ann", version=2), dict[str, int])
    await profile_of("ann", 2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    assert_type(await post("acme", 5), int)
    assert_type(profile_of.forget("ann"), bool)
    assert_type(profile_of.statistics(), trio_persist.FunctionStatistics)
    catalogue = Catalogue()
    assert_type(await catalogue.lookup("book"), tuple[str, int])  # self is bound
    assert_type(catalogue.lookup.forget("book"), bool)
    await catalogue.lookup(1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(await Catalogue.lookup(catalogue, "book"), tuple[str, int])
    assert_type(await profile_of.persist(), trio_persist.Persist[NoReturn, NoReturn, NoReturn])


def refused(plain: Callable[[int], int]) -> None:
    trio_persist.deduplicated(plain)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def redis_options() -> None:
    from trio_persist.redis import RedisBackend

    assert_type(RedisBackend("redis://localhost").overloaded(), bool)
    RedisBackend("redis://localhost", workers="cluster", fallback="local")
    RedisBackend("redis://localhost", workers="clusters")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    RedisBackend("redis://localhost", fallback="locally")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
