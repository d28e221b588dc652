"""The front a Trio user reaches for: wrapped functions, the linger window, get_worker."""

from __future__ import annotations

import gc
import inspect
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.testing import RecordingDevice

# -- persist.wrap(fn) ---------------------------------------------------------------


async def test_concurrent_identical_calls_of_a_wrapped_function_share_one_execution(
    autojump_clock: object,
) -> None:
    calls: list[tuple[str, int]] = []

    async def fetch_profile(user: str, *, version: int = 1) -> dict[str, Any]:
        """Fetch a profile (slowly)."""
        calls.append((user, version))
        await trio.sleep(1)
        return {"user": user, "version": version}

    async with trio_persist.open_persist(RecordingDevice()) as persist:
        fetch = persist.wrap(fetch_profile)
        assert inspect.signature(fetch) == inspect.signature(fetch_profile)
        assert fetch.__doc__ == "Fetch a profile (slowly)."
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for user in ("ann", "ann", "bob", "ann"):
                nursery.start_soon(lambda u=user: _append(results, fetch(u, version=2)))
        assert sorted(calls) == [("ann", 2), ("bob", 2)]
        assert results.count({"user": "ann", "version": 2}) == 3
        assert trio.current_time() == 1
        assert persist.statistics().deduplicated == 2


async def _append(results: list[Any], call: Any) -> None:
    results.append(await call)


async def test_a_wrapped_write_executes_every_call_in_arrival_order(
    autojump_clock: object,
) -> None:
    cart: list[str] = []

    async def add(book: str) -> int:
        await trio.sleep(1)
        cart.append(book)
        return len(cart)

    async with trio_persist.open_persist(RecordingDevice()) as persist:
        add_book = persist.wrap(add, share=False)
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _append(got, add_book("dune")))
                await trio.testing.wait_all_tasks_blocked()
    assert got == [1, 2, 3]
    assert trio.current_time() == 3


async def test_a_wrapped_function_errors_cancellation_and_recursion_behave_as_resolve(
    autojump_clock: object,
) -> None:
    async def flaky(n: int) -> int:
        await trio.sleep(1)
        if n < 0:
            raise ValueError(f"negative: {n}")
        if n == 0:
            return await again(0)  # itself, with the same argument
        return n

    async with trio_persist.open_persist(RecordingDevice()) as persist:
        again = persist.wrap(flaky)
        with pytest.raises(ValueError, match="negative: -1"):
            await again(-1)
        with pytest.raises(trio_persist.InfiniteRecursion):
            await again(0)
        with trio.move_on_after(0.5):
            await again(5)  # the only caller leaves: the execution is cancelled
        await persist.wait_quiet()
        assert persist.statistics().abandoned == 1
        with pytest.raises(TypeError, match=r"cannot group a value of type builtins\.object"):
            await again(object())  # type: ignore[arg-type]


async def test_two_functions_under_one_name_are_refused() -> None:
    def make(n: int) -> Any:
        async def closure() -> int:
            return n

        return closure

    async with trio_persist.open_persist(RecordingDevice()) as persist:
        first = persist.wrap(make(1))
        assert persist.wrap(make(2), name="second") is not first
        with pytest.raises(ValueError, match="another function is already wrapped"):
            persist.wrap(make(3))
        assert await first() == 1


async def test_a_persist_made_only_to_wrap_functions_needs_no_device() -> None:
    async def double(n: int) -> int:
        return 2 * n

    async with trio_persist.open_persist() as persist:
        assert await persist.wrap(double)(21) == 42
        assert persist.name == "functions"
        with pytest.raises(TypeError, match=r"resolve\(\) needs a device"):
            await persist.resolve("db", "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"start_worker\(\) needs a device"):
            await persist.start_worker("state")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"ask\(\) needs a device"):
            await persist.ask("cart", "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"get_worker\(\) needs a device"):
            await persist.get_worker("cart", default=dict)  # type: ignore[arg-type]


async def secret_of(user: str) -> str:
    await trio.sleep(1)
    return f"{user}'s secret"


async def public_page(base: Any, request: Any) -> Any:
    return "public page"


async def test_no_resolve_call_reaches_a_wrapped_functions_result(
    autojump_clock: object,
) -> None:
    # The wrapped call of ("alice",) and resolve("test_front.secret_of", (("alice",), {}))
    # once named the same default group: the resolve joined the call, or read its
    # lingering result.
    forged = (f"{__name__}.secret_of", (("alice",), {}))
    async with trio_persist.open_persist(public_page, linger=10) as persist:
        secret = persist.wrap(secret_of)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(secret, "alice")
            await trio.testing.wait_all_tasks_blocked()
            assert await persist.resolve(*forged) == "public page"  # does not join
        assert await persist.resolve(*forged) == "public page"  # nor read what lingers
        assert await secret("alice") == "alice's secret"  # which still answers the call


async def test_no_client_chosen_group_reaches_a_wrapped_functions_group(
    autojump_clock: object,
) -> None:
    class ByClient:  # the group is whatever the client sends: it can send any text
        def group(self, base: Any, request: Any) -> Any:
            return request["group"] if request else base

        async def resolve(self, base: Any, request: Any) -> Any:
            return "public page"

    async with trio_persist.open_persist(ByClient()) as persist:
        secret = persist.wrap(secret_of)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(secret, "alice")
            await trio.testing.wait_all_tasks_blocked()
            [running] = persist.snapshot()
            forged = {"group": str(running.group)}  # its group, as the client saw it
            assert await persist.resolve("page", forged) == "public page"
            assert trio.current_time() == 0  # never queued behind the wrapped call
            await persist.start_worker("page", str(running.group))  # nor took its group
        assert await secret("alice") == "alice's secret"


async def test_a_name_is_released_when_nothing_uses_it(autojump_clock: object) -> None:
    def make(n: int) -> Any:
        async def closure() -> int:
            await trio.sleep(1)
            return n

        return closure

    async with trio_persist.open_persist(linger=10) as persist:
        first = persist.wrap(make(1), name="closure")
        assert await first() == 1  # its result lingers for 10 s
        with pytest.raises(ValueError, match="already wrapped"):
            persist.wrap(make(2), name="closure")
        del first
        gc.collect()
        second = persist.wrap(make(2), name="closure")  # released: free again
        assert await second() == 2  # not the first function's lingering result
        assert [f.name for f in persist.function_statistics()] == ["closure"]


async def test_a_wrapped_functions_counts_are_its_own(autojump_clock: object) -> None:
    async def lookup(n: int) -> int:
        await trio.sleep(1)
        if n < 0:
            raise ValueError(n)
        return n

    async with trio_persist.open_persist(RecordingDevice()) as persist:
        wrapped = persist.wrap(lookup)
        async with trio.open_nursery() as nursery:
            for n in (1, 1, 1, 2):
                nursery.start_soon(wrapped, n)
        with pytest.raises(ValueError):
            await wrapped(-1)
        await persist.resolve("db", "x")  # the device's call: not the function's
        [stats] = persist.function_statistics()
    assert stats.name == f"{__name__}.{lookup.__qualname__}"
    assert (stats.requests, stats.executions, stats.deduplicated) == (5, 3, 2)
    assert (stats.failures, stats.execution.count, stats.execution_max) == (1, 3, 1.0)
    assert persist.statistics().executions == 4


# -- the linger window ------------------------------------------------------------------


async def test_a_result_lingers_for_exactly_its_window(autojump_clock: object) -> None:
    device = RecordingDevice()
    async with trio_persist.open_persist(device, linger=2.0) as persist:
        first = await persist.resolve("db", "alice")
        await trio.sleep(1.999)
        assert await persist.resolve("db", "alice") is first  # 1.999 s after: answered
        assert device.executions == 1
        await trio.sleep(0.001)
        await persist.resolve("db", "alice")  # 2 s after: a fresh execution
        assert device.executions == 2
        assert trio.current_time() == 2.0
        assert persist.statistics().deduplicated == 1


async def test_failures_and_writes_never_linger_and_forget_drops_a_result(
    autojump_clock: object,
) -> None:
    device = RecordingDevice()
    async with trio_persist.open_persist(device, linger=10.0) as persist:
        device.fail_next(KeyError("nope"))
        with pytest.raises(KeyError):
            await persist.resolve("db", "a")
        await persist.resolve("db", "a")
        assert device.executions == 2  # the failure did not linger
        await persist.resolve("db", "w", share=False)
        await persist.resolve("db", "w")
        assert device.executions == 4  # the write's result did not linger
        assert persist.forget(persist.group("db", "a"))
        await persist.resolve("db", "a")
        assert device.executions == 5


async def test_a_lingering_result_answers_only_its_own_request_under_a_group_hook(
    autojump_clock: object,
) -> None:
    class OneGroup:
        def group(self, base: Any, request: Any) -> Any:
            return "one"

        async def resolve(self, base: Any, request: Any) -> Any:
            return request

    async with trio_persist.open_persist(OneGroup(), linger=5) as persist:
        assert await persist.resolve("b", "x") == "x"
        assert await persist.resolve("b", "y") == "y"  # same group, other request
        assert await persist.resolve("b", "y") == "y"
        assert persist.statistics().executions == 2


async def test_lingering_results_are_bounded_by_their_size(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_persist._core import _linger

    monkeypatch.setattr(_linger, "LINGER_BYTES", 35_000)  # reaching in: the cap is 64 MiB
    device = RecordingDevice(lambda base, n: bytes(10_000))
    async with trio_persist.open_persist(device, linger=100) as persist:
        for n in range(5):
            await persist.resolve("db", n)
        for n in (4, 3, 2, 0, 1):
            await persist.resolve("db", n)
    assert device.executions == 5 + 2  # 4, 3 and 2 lingered; the two oldest had gone


async def test_a_result_larger_than_the_linger_cap_never_lingers(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_persist._core import _linger

    monkeypatch.setattr(_linger, "LINGER_BYTES", 35_000)  # reaching in: the cap is 64 MiB
    device = RecordingDevice(lambda base, n: [bytes(1_000)] * n)
    async with trio_persist.open_persist(device, linger=100) as persist:
        await persist.resolve("db", 100)  # 100 references to one block: small
        await persist.resolve("db", 100)
        await persist.resolve("db", 50_000)  # 400 kB of references: too large
        await persist.resolve("db", 50_000)
    assert device.executions == 3


@pytest.mark.parametrize(
    ("linger", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]
)
async def test_linger_is_checked(linger: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="linger must be"):
        async with trio_persist.open_persist(RecordingDevice(), linger=linger):
            pass  # pragma: no cover


# -- get_worker: the session pattern ---------------------------------------------------


class Sessions:
    def __init__(self) -> None:
        self.saved: dict[Any, Any] = {"session/old": {"views": 7}}

    def group(self, base: Any, request: Any) -> Any:
        return f"session/{request['user']}" if request is not None else base["id"]

    async def resolve(self, state: Any, request: Any) -> Any:
        return {**state, "views": state["views"] + 1}

    async def restore(self, group: Any) -> Any:
        saved = self.saved.get(group)
        return None if saved is None else {**saved, "id": group}

    async def on_idle(self, group: Any, state: Any) -> None:
        self.saved[group] = state


async def test_get_worker_restores_a_group_this_process_never_saw() -> None:
    async with trio_persist.open_persist(Sessions()) as persist:
        worker = await persist.get_worker("session/old", default=lambda: {"views": 0})
        assert worker.state["views"] == 7  # restored, though never seen here
        assert await persist.get_worker("session/old") is worker
        await persist.resolve("session", {"user": "old"})
        assert worker.state["views"] == 8


async def test_get_worker_starts_a_fresh_state_when_nothing_is_saved() -> None:
    async with trio_persist.open_persist(Sessions()) as persist:
        worker = await persist.get_worker(
            "session/new", default=lambda: {"views": 0, "id": "session/new"}
        )
        assert worker.state == {"views": 0, "id": "session/new"}
        with pytest.raises(LookupError, match="nothing to restore"):
            await persist.get_worker("session/nobody")


async def test_a_result_lingers_across_processes_on_redis(redis_url: str, namespace: str) -> None:
    from trio_persist.redis import RedisBackend

    first = RecordingDevice(lambda base, request: {"for": request})
    second = RecordingDevice(lambda base, request: {"for": request})
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(
                first, backend=RedisBackend(redis_url, namespace=namespace), linger=0.5
            ) as a,
            trio_persist.open_persist(
                second, backend=RedisBackend(redis_url, namespace=namespace), linger=0.5
            ) as b,
        ):
            assert await a.resolve("db", "alice") == {"for": "alice"}
            assert await b.resolve("db", "alice") == {"for": "alice"}  # a's, lingering
            assert (first.executions, second.executions) == (1, 0)
            await trio.sleep(0.6)  # real time: Redis's clock decides
            await b.resolve("db", "alice")
            assert (first.executions, second.executions) == (1, 1)
            second.fail_next(KeyError("no"))
            with pytest.raises(KeyError):
                await b.resolve("db", "bob")
            await a.resolve("db", "bob")  # the failure did not linger
            assert first.executions == 2


async def test_a_wrapped_functions_result_lingers_too(autojump_clock: object) -> None:
    calls = 0

    async def fetch(page: int) -> str:
        nonlocal calls
        calls += 1
        return f"page {page}"

    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover - only the wrapped function runs

    async with trio_persist.open_persist(device, linger=10) as persist:
        cached = persist.wrap(fetch)
        assert await cached(1) == "page 1"
        await trio.sleep(5)
        assert await cached(1) == "page 1"  # within its window: no second call
    assert calls == 1
