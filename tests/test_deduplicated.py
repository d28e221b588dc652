"""``@trio_persist.deduplicated``: a function deduplicated in any Trio run, with no block."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import signal
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_persist
from trio_persist._cli._tui import read_frames

calls: list[Any] = []


@pytest.fixture(autouse=True)
def _no_calls_yet() -> None:
    calls.clear()


@trio_persist.deduplicated
async def fetch_profile(user: str, *, version: int = 1) -> dict[str, Any]:
    """Fetch a profile (slowly)."""
    calls.append(user)
    await trio.sleep(1)
    if user == "nobody":
        raise LookupError(f"no such user: {user}")
    return {"user": user, "version": version}


async def _keep(results: list[Any], call: Any) -> None:
    results.append(await call)


# -- what wrap does, with no block -----------------------------------------------------


async def test_concurrent_identical_calls_share_one_execution(autojump_clock: object) -> None:
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        for user in ("ann", "ann", "bob", "ann"):
            nursery.start_soon(_keep, results, fetch_profile(user, version=2))
    assert sorted(calls) == ["ann", "bob"]
    ann = [r for r in results if r["user"] == "ann"]
    assert len(ann) == 3
    assert ann[0] is ann[1] is ann[2]  # the same object
    assert trio.current_time() == 1
    stats = fetch_profile.statistics()
    assert (stats.requests, stats.executions, stats.deduplicated) == (4, 2, 2)
    assert stats.name == f"{__name__}.fetch_profile"


def test_it_keeps_the_functions_signature_and_documentation() -> None:
    assert inspect.signature(fetch_profile) == inspect.signature(fetch_profile.__wrapped__)
    assert fetch_profile.__doc__ == "Fetch a profile (slowly)."
    assert fetch_profile.__name__ == "fetch_profile"


async def test_every_caller_gets_the_same_exception_in_its_own_task(
    autojump_clock: object,
) -> None:
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await fetch_profile("nobody")
        except LookupError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(call)
    assert len(errors) == 3
    assert errors[0] is errors[1] is errors[2]
    assert calls == ["nobody"]
    assert fetch_profile.statistics().failures == 1


async def test_cancelling_the_first_caller_leaves_the_execution_to_the_others(
    autojump_clock: object,
) -> None:
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def first_caller() -> None:
            with first:
                await fetch_profile("ann")

        nursery.start_soon(first_caller)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_keep, results, fetch_profile("ann"))
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
    assert first.cancelled_caught
    assert results == [{"user": "ann", "version": 1}]
    assert calls == ["ann"]  # never executed twice
    assert trio.current_time() == 1


async def test_the_last_caller_to_leave_cancels_the_execution(autojump_clock: object) -> None:
    with trio.move_on_after(0.5):
        await fetch_profile("ann")
    await (await fetch_profile.persist()).wait_quiet()
    assert fetch_profile.statistics().abandoned == 1
    assert await fetch_profile("ann") == {"user": "ann", "version": 1}  # afresh
    assert calls == ["ann", "ann"]
    assert trio.current_time() == 1.5


@trio_persist.deduplicated(share=False)
async def deposit(account: str, amount: int) -> int:
    calls.append(amount)
    await trio.sleep(1)
    return sum(calls)


async def test_a_write_executes_every_call_in_arrival_order(autojump_clock: object) -> None:
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_keep, results, deposit("acme", 5))
            await trio.testing.wait_all_tasks_blocked()
    assert results == [5, 10, 15]
    assert trio.current_time() == 3


@trio_persist.deduplicated(linger=2)
async def page(n: int) -> str:
    calls.append(n)
    return f"page {n}"


async def test_a_result_lingers_for_the_functions_window_and_forget_drops_it(
    autojump_clock: object,
) -> None:
    assert await page(1) == "page 1"
    await trio.sleep(1.999)
    assert await page(1) == "page 1"  # answered by the lingering result
    assert page.forget(1) is True
    assert await page(1) == "page 1"  # forgotten: a fresh execution
    await trio.sleep(2)
    assert await page(1) == "page 1"  # the window passed: another
    assert calls == [1, 1, 1]
    assert page.forget(7) is False


async def test_an_argument_the_grouper_cannot_encode_fails_its_own_call() -> None:
    with pytest.raises(TypeError, match=r"cannot group a value of type builtins\.object"):
        await page(object())  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    lines: tuple[str, ...]


@attrs.frozen
class Customer:
    name: str


@dataclasses.dataclass
class Cart:
    items: list[str]


@trio_persist.deduplicated
async def price(order: Any, customer: Any = None) -> int:
    calls.append(order)
    await trio.sleep(1)
    return len(order.lines)


async def test_frozen_dataclass_and_attrs_arguments_are_grouped_by_their_fields(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(price, Order(7, ("book",)), Customer("ann"))
        nursery.start_soon(price, Order(7, ("book",)), Customer("ann"))  # equal: shared
        nursery.start_soon(price, Order(8, ("book",)), Customer("ann"))
    assert len(calls) == 2
    with pytest.raises(TypeError, match="mutable dataclass"):
        await price(Cart(["book"]))


# -- recursion ---------------------------------------------------------------------------


@trio_persist.deduplicated
async def countdown(n: int) -> int:
    await trio.sleep(1)
    return 0 if n == 0 else 1 + await countdown(n - 1 if n > 0 else n)


@trio_persist.deduplicated
async def ping(n: int) -> str:
    return await pong(n)


@trio_persist.deduplicated
async def pong(n: int) -> str:
    return await ping(n)


async def test_recursion_runs_while_it_moves_and_is_refused_when_it_would_wait_for_itself(
    autojump_clock: object,
) -> None:
    assert await countdown(3) == 3  # four different calls, one inside another
    with pytest.raises(trio_persist.InfiniteRecursion):
        await countdown(-1)  # calls itself with the same argument
    with pytest.raises(trio_persist.InfiniteRecursion):
        await ping(1)  # across two decorated functions: they share the run's persist


# -- methods -------------------------------------------------------------------------------


class Catalogue:
    def __init__(self, region: str) -> None:
        self.region = region

    @trio_persist.deduplicated
    async def lookup(self, sku: str) -> str:
        calls.append((self.region, sku))
        await trio.sleep(1)
        return f"{sku} in {self.region}"

    @trio_persist.deduplicated(instance_key=lambda self: self.region)
    async def by_region(self, sku: str) -> str:
        calls.append((self.region, sku))
        await trio.sleep(1)
        return f"{sku} in {self.region}"


async def test_a_method_is_grouped_by_its_instances_identity(autojump_clock: object) -> None:
    first, second = Catalogue("eu"), Catalogue("eu")
    async with trio.open_nursery() as nursery:
        for catalogue in (first, first, second):
            nursery.start_soon(catalogue.lookup, "book")
    assert calls == [("eu", "book"), ("eu", "book")]  # one per instance
    assert Catalogue.lookup.statistics().deduplicated == 1
    assert await Catalogue.lookup(first, "pen") == "pen in eu"  # through the class
    assert first.lookup.forget("pen") is False  # the same group: nothing lingers
    assert first.lookup.statistics().requests == 4


async def test_instance_key_groups_a_methods_instances_by_a_value(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        for catalogue in (Catalogue("eu"), Catalogue("eu"), Catalogue("us")):
            nursery.start_soon(catalogue.by_region, "book")
    assert sorted(calls) == [("eu", "book"), ("us", "book")]


# -- runs ----------------------------------------------------------------------------------


def test_two_runs_in_a_row_share_nothing() -> None:
    seen: list[Any] = []

    async def main() -> None:
        assert page.statistics().requests == 0  # nothing from the last run
        seen.append(await page.persist())
        await page(1)
        await page(1)  # lingering: this run's
        assert page.statistics().requests == 2

    trio.run(main)
    trio.run(main)
    assert calls == [1, 1]  # the second run did not read the first one's result
    first, second = seen
    assert first is not second
    assert first.closed  # each closed when its run ended
    assert second.closed


def test_two_runs_on_two_threads_at_once_share_nothing() -> None:
    both_running = threading.Barrier(2, timeout=30)
    stats: dict[str, Any] = {}

    @trio_persist.deduplicated
    async def whose(thread: str) -> int:
        await trio.to_thread.run_sync(both_running.wait)  # both runs are inside now
        return threading.get_ident()

    async def main(name: str) -> None:
        results: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(_keep, results, whose("same argument in both runs"))
        assert results == [threading.get_ident()] * 5  # its own run's execution
        stats[name] = whose.statistics()

    threads = [threading.Thread(target=trio.run, args=(main, name)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {name: (s.executions, s.deduplicated) for name, s in stats.items()} == {
        "a": (1, 4),
        "b": (1, 4),
    }


def test_ctrl_c_inside_a_decorated_function_reaches_the_main_task() -> None:
    @trio_persist.deduplicated
    async def interrupted() -> None:
        signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came now
        await trio.sleep(10)

    with pytest.raises(KeyboardInterrupt):
        trio.run(interrupted)


async def test_the_runs_persist_serves_a_monitor_for_every_decorated_function(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "functions.sock")
    persist = await fetch_profile.persist()
    assert persist is await price.persist()  # one persist for the run
    async with trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        nursery.start_soon(fetch_profile, "ann")
        nursery.start_soon(price, Order(1, ()))
        await trio.testing.wait_all_tasks_blocked()
        frames = []
        async with await trio.open_unix_socket(path) as stream:
            async for frame in read_frames(stream):
                frames.append(frame)
                break
        nursery.cancel_scope.cancel()
    assert sorted(group["label"] for group in frames[0]["snapshot"]) == [
        f"{__name__}.fetch_profile('ann')",
        f"{__name__}.price(Order(id=1, lines=()))",
    ]


# -- what is refused -------------------------------------------------------------------------


def test_a_sync_function_is_refused_when_decorated() -> None:
    def plain(n: int) -> int:
        return n

    with pytest.raises(TypeError, match=r"plain is not one: make it async def"):
        trio_persist.deduplicated(plain)  # type: ignore[arg-type]


def test_a_backend_itself_is_refused_what_makes_one_is_wanted() -> None:
    from trio_persist.redis import RedisBackend

    with pytest.raises(TypeError, match="what makes a backend, not a backend"):
        trio_persist.deduplicated(backend=RedisBackend("redis://localhost"))  # type: ignore[call-overload]


def test_calling_outside_a_trio_run_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"call it inside trio\.run"):
        fetch_profile("ann")  # type: ignore[unused-coroutine]


async def test_two_functions_under_one_name_in_a_run_are_refused() -> None:
    @trio_persist.deduplicated(name="shared name")
    async def one() -> int:
        return 1

    @trio_persist.deduplicated(name="shared name")
    async def two() -> int:
        return 2

    assert await one() == 1
    with pytest.raises(ValueError, match="already wrapped as 'shared name'"):
        await two()


# -- across processes ----------------------------------------------------------------------


def test_a_backend_is_made_for_each_run_and_shares_results_across_them(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    executed: list[int] = []

    @trio_persist.deduplicated(
        linger=30, backend=functools.partial(RedisBackend, redis_url, namespace=namespace)
    )
    async def report(n: int) -> str:
        executed.append(n)
        return f"report {n}"

    async def main() -> tuple[str, Any]:
        with trio.fail_after(20):
            return await report(1), report.statistics()

    first, second = trio.run(main), trio.run(main)  # two runs: two persists, two backends
    assert first[0] == second[0] == "report 1"
    assert executed == [1]  # the second run read the first run's result in Redis
    assert (second[1].executions, second[1].remote) == (0, 1)


def test_a_method_grouped_by_identity_never_goes_through_the_backend(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    made: list[RedisBackend] = []

    def backend() -> RedisBackend:
        made.append(RedisBackend(redis_url, namespace=namespace))
        return made[-1]

    class Account:
        @trio_persist.deduplicated(backend=backend)
        async def balance(self) -> int:  # an id means nothing in another process
            return 10

        @trio_persist.deduplicated(backend=backend, instance_key=lambda self: "acme")
        async def owner(self) -> str:  # a value does
            return "acme inc."

    async def main() -> None:
        with trio.fail_after(20):
            assert await Account().balance() == 10
            [used] = made
            assert used.statistics().led == 0
            assert await Account().owner() == "acme inc."
            assert used.statistics().led == 1

    trio.run(main)


async def test_a_decorated_view_is_an_async_function_to_quart() -> None:
    # Quart runs a view it does not see as async in a thread, outside the Trio run.
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)

    @app.route("/price/<sku>")
    @trio_persist.deduplicated
    async def price(sku: str) -> dict[str, str]:
        return {"sku": sku}

    response = await app.test_client().get("/price/book-42")
    assert await response.get_json() == {"sku": "book-42"}


async def test_a_persist_that_cannot_open_fails_its_waiting_calls_and_the_next_tries_again() -> (
    None
):
    attempts: list[int] = []

    def flaky_backend() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the backend is down")
        return None  # no backend: in-process

    @trio_persist.deduplicated(backend=flaky_backend)
    async def quote() -> str:
        return "ok"

    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await quote()
        except ConnectionError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(call)
    assert len(failures) == 3  # every caller waiting for it
    assert await quote() == "ok"  # the next call opened a new one
    assert len(attempts) == 2


async def test_a_partial_needs_a_name_and_works_with_one() -> None:
    async def scaled(factor: int, n: int) -> int:
        return factor * n

    with pytest.raises(TypeError, match=r"no qualified name.*pass name="):
        trio_persist.deduplicated(functools.partial(scaled, 2))
    doubled = trio_persist.deduplicated(name="doubled")(functools.partial(scaled, 2))
    assert await doubled(21) == 42
