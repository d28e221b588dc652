"""One bad value fails only its own call: never the persist, never another caller.

Hostile or merely unusual values (JSON bodies nested hundreds deep, ints of
thousands of digits, containers holding themselves, ``==`` that answers with an
array, ``repr`` that raises) go through the public API here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_persist
from trio_persist import MAX_DEPTH, canonical_encoding, default_group


def nested(depth: int) -> list[Any]:
    """A list nested *depth* deep: ``[[[...]]]``."""
    root: list[Any] = []
    inner = root
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return root


@contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def test_a_request_nested_600_deep_is_grouped_like_any_other() -> None:
    body = {"order": nested(600)}
    assert default_group("api", body) == default_group("api", {"order": nested(600)})
    assert default_group("api", body) != default_group("api", {"order": nested(601)})


def test_the_encoding_does_not_depend_on_the_recursion_limit() -> None:
    with recursion_limit(150):
        assert canonical_encoding(nested(900)) == canonical_encoding(nested(900))


def test_nesting_past_the_limit_is_a_type_error_naming_where() -> None:
    with pytest.raises(TypeError, match=rf"nesting deeper than {MAX_DEPTH} levels") as info:
        default_group("api", {"body": nested(MAX_DEPTH + 5)})
    assert "at request['body'][0][0]" in str(info.value)


def test_a_container_holding_itself_is_a_type_error_naming_where() -> None:
    loop: list[Any] = [1, 2]
    loop.append({"again": loop})
    with pytest.raises(TypeError, match=r"a container holds itself: a builtins.list at base\[2\]"):
        default_group(loop, None)


def test_a_value_shared_twice_is_not_a_cycle() -> None:
    shared = [1, 2]
    assert canonical_encoding([shared, shared]) == canonical_encoding([[1, 2], [1, 2]])


def test_big_ints_are_encoded_exactly() -> None:
    big = 10**10_000  # str() of it raises under Python's 4,300-digit limit
    assert default_group(big, None) == default_group(10**10_000, None)
    assert default_group(big, None) != default_group(big + 1, None)
    assert default_group(-big, None) != default_group(big, None)
    assert canonical_encoding(2**63 - 1) != canonical_encoding(2**63)


async def test_a_spawned_worker_state_the_grouper_cannot_name_fails_nobody() -> None:
    async def device(base: Any, request: Any) -> Any:
        if request == "deep":
            return nested(MAX_DEPTH + 100)  # no worker can be named for this
        if request == "huge":
            return 10**5000
        return request

    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        results: dict[str, Any] = {}

        async def call(request: str) -> None:
            results[request] = await persist.resolve("base", request, spawn_worker=True)

        for request in ("deep", "huge", "plain"):
            nursery.start_soon(call, request)
    assert results["plain"] == "plain"
    assert results["huge"] == 10**5000
    assert len(results["deep"]) == 1
    # Names could be made for two states of three: two workers, no crash.
    assert persist.statistics().workers_started == 2


async def test_requests_whose_equality_is_not_a_bool_each_get_their_own_answer() -> None:
    class Ambiguous:
        """Like a numpy array: ``==`` answers with something that has no truth value."""

        def __init__(self, n: int) -> None:
            self.n = n

        def __eq__(self, other: object) -> Any:
            return self  # bool() of this raises

        def __bool__(self) -> bool:
            raise ValueError("the truth value of an array is ambiguous")

        __hash__ = object.__hash__

    class Raising(Ambiguous):
        def __eq__(self, other: object) -> Any:
            raise RuntimeError("no comparing me")

        __hash__ = object.__hash__

    class OneGroup:
        def group(self, base: Any, request: Any) -> Any:
            return "one"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return request.n

    got: list[int] = []
    async with trio_persist.open_persist(OneGroup()) as persist:
        async with trio.open_nursery() as nursery:
            for n in range(6):
                kind = Ambiguous if n % 2 else Raising

                async def call(request: Any) -> None:
                    got.append(await persist.resolve("b", request))

                nursery.start_soon(call, kind(n))
        assert persist.statistics().executions == 6
    assert sorted(got) == list(range(6))


async def test_a_group_whose_repr_raises_does_not_stop_the_monitor(tmp_path: Any) -> None:
    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return Opaque()

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(5)
            return request

    path = str(tmp_path / "m.sock")
    async with trio_persist.open_persist(Device()) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        nursery.start_soon(persist.resolve, "b", "r")
        await trio.testing.wait_all_tasks_blocked()
        from trio_persist._cli._tui import read_frames

        async with await trio.open_unix_socket(path) as stream:
            async for frame in read_frames(stream):
                [group] = frame["snapshot"]
                assert group["group"] == "<Opaque with a failing __repr__>"
                break
        nursery.cancel_scope.cancel()


async def test_an_exception_whose_str_raises_reaches_its_callers_and_nobody_else() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot print me")

    async def device(base: Any, request: Any) -> Any:
        if request == "bad":
            raise Unprintable
        return request

    async with trio_persist.open_persist(device) as persist:
        with persist.subscribe() as events:
            with pytest.raises(Unprintable):
                await persist.resolve("b", "bad")
            assert await persist.resolve("b", "good") == "good"
            kinds = [events.receive_nowait() for _ in range(4)]
    assert kinds[1].detail == "Unprintable: <Unprintable with a failing __str__>"


async def test_a_request_the_backend_cannot_name_fails_nobody_on_redis(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    class Orders:
        def group(self, base: Any, request: Any) -> Any:
            return "orders"  # the hook names it; the backend needs the request too

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return "ok" if isinstance(request, str) else "deep"

    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    results: dict[str, Any] = {}
    with trio.fail_after(20):
        async with trio_persist.open_persist(Orders(), backend=backend) as persist:

            async def call(name: str, request: Any) -> None:
                results[name] = await persist.resolve("base", request)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "deep", nested(MAX_DEPTH + 50))
                nursery.start_soon(call, "plain", "plain")
            # The unnamable one ran locally; the other went through Redis.
            assert results == {"deep": "deep", "plain": "ok"}
            assert backend.statistics().led == 1
            assert not persist.closed


async def test_a_group_whose_hash_raises_later_fails_only_its_own_callers(
    autojump_clock: object,
) -> None:
    class Fragile:
        broken = False

        def __hash__(self) -> int:
            if self.broken:
                raise RuntimeError("this group cannot be hashed any more")
            return 1

    fragile = Fragile()
    release = trio.Event()

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return fragile if base == "fragile" else base

        async def resolve(self, base: Any, request: Any) -> Any:
            await release.wait()
            return base

    async with trio_persist.open_persist(Device(), linger=10) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "fragile", 1)
            nursery.start_soon(persist.resolve, "fine", 1)
            await trio.testing.wait_all_tasks_blocked()
            fragile.broken = True  # the flight lingers and frees its group after this
            release.set()
        with pytest.raises(RuntimeError, match="cannot be hashed"):
            await persist.resolve("fragile", 2)
        assert await persist.resolve("fine", 2) == "fine"
        assert len(persist.registry) == 0
