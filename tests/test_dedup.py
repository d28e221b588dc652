"""Deduplicated resolution: identical in-flight requests share one execution.

The original's deduplication test (HyperBEAM's ``deduplicated_execution_test``),
its deduplication scenarios, and Go singleflight's test list; each promise is
stated in docs/guarantees.md.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from conftest import Counting, SlowDevice


async def test_two_callers_of_one_slow_request_share_its_result(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # The original's test: A starts a 200 ms request; B asks the same 100 ms later.
    results: dict[str, Any] = {}
    request = {"path": "slow", "wait": 0.2}
    async with trio_persist.open_persist(slow_device) as persist:

        async def client(name: str, delay: float) -> None:
            await trio.sleep(delay)
            results[name] = await persist.resolve("msg1", request)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, "A", 0)
            nursery.start_soon(client, "B", 0.1)
    assert results["A"] is results["B"]
    assert trio.current_time() == 0.2
    assert len(slow_device.executed) == 1


async def test_resolve_returns_the_device_result() -> None:
    async def device(base: Any, request: Any) -> Any:
        return f"{base}:{request}"

    async with trio_persist.open_persist(device) as persist:
        assert await persist.resolve("base", "req") == "base:req"
        assert await persist.resolve("base") == "base:None"


async def test_resolve_raises_the_device_error() -> None:
    async def device(base: Any, request: Any) -> Any:
        raise KeyError(request)

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(KeyError, match="missing"):
            await persist.resolve("base", "missing")


async def test_ten_concurrent_callers_cause_one_execution(counting: Counting) -> None:
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist:
        results = []

        async def call() -> None:
            results.append(await persist.resolve("base", "req"))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            stats = persist.statistics()
            assert (stats.waiters, stats.in_flight, stats.executions) == (10, 1, 1)
            assert stats.deduplicated == 9
            counting.release.set()
    assert counting.calls == 1
    assert len(results) == 10
    assert all(result is results[0] for result in results)


async def test_an_error_reaches_every_caller_as_the_same_type_and_message(
    counting: Counting,
) -> None:
    counting.hold = True
    errors: list[BaseException] = []
    async with trio_persist.open_persist(counting) as persist:

        async def call() -> None:
            try:
                await persist.resolve("base", "fail:shared failure")
            except ValueError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            counting.release.set()
    assert counting.calls == 1
    assert [str(e) for e in errors] == ["shared failure"] * 5


async def test_a_shared_failure_does_not_grow_its_traceback_with_each_listener(
    counting: Counting,
) -> None:
    counting.hold = True
    depths: list[int] = []
    async with trio_persist.open_persist(counting) as persist:

        async def call() -> None:
            try:
                await persist.resolve("base", "fail:boom")
            except ValueError as exc:
                tb, depth = exc.__traceback__, 0
                while tb is not None:
                    depth, tb = depth + 1, tb.tb_next
                depths.append(depth)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            counting.release.set()
    assert len(depths) == 20
    assert len(set(depths)) == 1


async def test_a_failure_is_not_cached(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        with pytest.raises(ValueError, match="once"):
            await persist.resolve("base", "fail:once")
        assert persist.registry.lookup(persist.group("base", "fail:once")) is None
    assert counting.calls == 1


async def test_a_result_is_not_cached_once_its_flight_has_landed(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        first = await persist.resolve("base", "req")
        second = await persist.resolve("base", "req")
    assert first != second
    assert counting.calls == 2


async def test_every_waiter_gets_the_leaders_result_and_the_group_is_freed(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # A leads, B, C and D wait with the identical request.
    request = {"path": "slow", "wait": 1}
    async with trio_persist.open_persist(slow_device) as persist:
        results: list[Any] = []

        async def client() -> None:
            results.append(await persist.resolve("m", request))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client)
        assert persist.registry.lookup(persist.group("m", request)) is None
    assert len(slow_device.executed) == 1
    assert len({id(r) for r in results}) == 1


async def test_different_requests_of_one_group_run_one_after_another_in_order(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # Better than the original: B's different request runs right after A's,
    # on its own, without waiting for anybody to die.
    finished: list[tuple[str, float]] = []
    async with trio_persist.open_persist(slow_device) as persist:

        async def client(name: str, wait: float, delay: float) -> None:
            await trio.sleep(delay)
            await persist.resolve("m", {"path": "slow", "wait": wait, "who": name})
            finished.append((name, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, "A", 1.0, 0)
            nursery.start_soon(client, "B", 0.5, 0.1)
            nursery.start_soon(client, "C", 0.25, 0.2)
    assert finished == [("A", 1.0), ("B", 1.5), ("C", 1.75)]
    assert [request["who"] for _, request in slow_device.executed] == ["A", "B", "C"]


async def test_identical_requests_queued_behind_a_flight_share_one_execution(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    async with trio_persist.open_persist(slow_device) as persist:
        results: list[Any] = []

        async def client(request: dict[str, Any]) -> None:
            results.append(await persist.resolve("m", request))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, {"path": "slow", "wait": 1})
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                nursery.start_soon(client, {"path": "slow", "wait": 2})
            await trio.testing.wait_all_tasks_blocked()
            [record] = persist.snapshot()
            assert (record.listeners, record.queued) == (4, 1)
    assert len(slow_device.executed) == 2
    assert trio.current_time() == 3
    assert results[1] is results[2] is results[3]


async def test_forget_lets_the_next_call_start_afresh_while_the_old_flight_finishes(
    counting: Counting,
) -> None:
    # Go's TestForget: after Forget a second call starts a new flight and a third joins it.
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist:
        results: dict[str, Any] = {}

        async def call(name: str) -> None:
            results[name] = await persist.resolve("base", "req")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "first")
            await trio.testing.wait_all_tasks_blocked()
            assert persist.forget(persist.group("base", "req")) is True
            assert persist.forget(persist.group("base", "req")) is False
            nursery.start_soon(call, "second")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "third")
            await trio.testing.wait_all_tasks_blocked()
            assert counting.calls == 2
            counting.release.set()
    assert results["second"] is results["third"]
    assert results["first"] is not results["second"]


async def test_a_device_without_a_group_hook_is_not_deduplicated_in_named_mode(
    counting: Counting,
) -> None:
    # With await_inprogress="named" only devices with a grouper dedupe.
    counting.hold = True
    async with trio_persist.open_persist(counting, await_inprogress="named") as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(persist.resolve, "base", "req")
            await trio.testing.wait_all_tasks_blocked()
            assert len(persist.registry) == 0
            assert persist.statistics().in_flight == 3
            counting.release.set()
    assert counting.calls == 3


async def test_a_device_with_a_group_hook_is_deduplicated_in_named_mode(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    async with trio_persist.open_persist(slow_device, await_inprogress="named") as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(persist.resolve, "m", {"path": "slow", "wait": 1})
    assert len(slow_device.executed) == 1


async def test_await_inprogress_false_executes_every_call_and_registers_nothing(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # Even with a grouper, False means every call runs on its own.
    async with trio_persist.open_persist(slow_device, await_inprogress=False) as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(persist.resolve, "m", {"path": "slow", "wait": 1})
            await trio.testing.wait_all_tasks_blocked()
            assert len(persist.registry) == 0
    assert len(slow_device.executed) == 3
    assert trio.current_time() == 1


async def test_the_group_hook_decides_the_group() -> None:
    async with trio_persist.open_persist(SlowDevice()) as persist:
        assert persist.group("m", {"path": "x"}) == ("slow-device", "'m'")

    async def plain(base: Any, request: Any) -> Any:
        return None  # pragma: no cover

    async with trio_persist.open_persist(plain) as persist:
        assert persist.group("m", "r") == trio_persist.default_group("m", "r")


async def test_an_unencodable_request_is_refused_at_the_call_and_nothing_is_lost(
    counting: Counting,
) -> None:
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "base", "good")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(TypeError, match=r"builtins\.object at request\['bad'\]"):
            await persist.resolve("base", {"bad": object()})
        assert persist.statistics().in_flight == 1
        counting.release.set()
    assert counting.calls == 1


async def test_a_failing_group_hook_raises_in_the_caller_only() -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            if request == "bad":
                raise LookupError("cannot group")
            return request

        async def resolve(self, base: Any, request: Any) -> Any:
            return request

    async with trio_persist.open_persist(Device()) as persist:
        with pytest.raises(LookupError):
            await persist.resolve(None, "bad")
        assert await persist.resolve(None, "good") == "good"


async def test_requests_with_unequal_but_same_group_values_are_compared_by_equality(
    autojump_clock: object,
) -> None:
    # With a group hook, "identical" means equal requests.
    executed = []

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "one-group"

        async def resolve(self, base: Any, request: Any) -> Any:
            executed.append(request)
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(Device()) as persist, trio.open_nursery() as nursery:
        for request in ([1], [1], [2], [1]):
            nursery.start_soon(persist.resolve, None, request)
            await trio.testing.wait_all_tasks_blocked()
    assert executed == [[1], [2]]
    assert trio.current_time() == 2


async def test_resolve_rejects_a_non_bool_spawn_worker(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        with pytest.raises(TypeError, match="spawn_worker must be True or False"):
            await persist.resolve("base", "req", spawn_worker="yes")  # type: ignore[arg-type]


# -- identical means identical ------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, 1.0), (1, True), (0.0, -0.0), ({"amount": 1}, {"amount": True})],
    ids=["1/1.0", "1/True", "0.0/-0.0", "amount 1/True"],
)
async def test_equal_but_different_requests_never_share_an_execution_under_a_group_hook(
    autojump_clock: object, one_group: Any, first: Any, second: Any
) -> None:
    # `==` says these are equal; their canonical encodings differ, and so do they.
    async with trio_persist.open_persist(one_group) as persist, trio.open_nursery() as nursery:
        for request in (first, second, first, second):
            nursery.start_soon(persist.resolve, "base", request)
    assert sorted(map(repr, one_group.executed)) == sorted([repr(first), repr(second)])


async def test_a_request_joins_a_queued_identical_one_without_comparing_to_each(
    autojump_clock: object,
) -> None:
    # Under a group hook, many distinct requests queue behind one execution; an
    # arrival finds its identical request by name, never by `==` against each.
    compared = 0

    class Request(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

    class OneGroup:
        def group(self, base: Any, request: Any) -> str:
            return "all"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(OneGroup()) as persist, trio.open_nursery() as nursery:
        for n in range(500):
            nursery.start_soon(persist.resolve, "base", Request(f"r{n}"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(persist.resolve, "base", Request("r499"))
        await trio.testing.wait_all_tasks_blocked()
        assert persist.statistics().deduplicated == 1
    assert compared == 0


async def test_distinct_requests_never_share_a_group_or_a_result() -> None:
    # Upstream's 27-bit phash2 collides after ~10^4 live groups, and then a
    # follower returns a result computed for a different base.
    groups = {trio_persist.default_group({"base": i}, {"path": "same"}) for i in range(20_000)}
    assert len(groups) == 20_000

    async def device(base: Any, request: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return base

    async with trio_persist.open_persist(device) as persist:
        results: dict[int, Any] = {}

        async def call(i: int) -> None:
            results[i] = await persist.resolve({"base": i}, {"path": "same"})

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(call, i)
    assert all(results[i] == {"base": i} for i in range(2000))


async def test_of_many_concurrent_first_callers_exactly_one_executes(
    counting: Counting,
) -> None:
    # Upstream looks up, then registers and ignores the result: two leaders.
    counting.hold = True
    sequencer = trio.testing.Sequencer()
    async with trio_persist.open_persist(counting) as persist:

        async def first_caller(position: int) -> None:
            async with sequencer(position):
                pass
            await persist.resolve("base", "req")

        async with trio.open_nursery() as nursery:
            for position in range(10):
                nursery.start_soon(first_caller, position)
            await trio.testing.wait_all_tasks_blocked()
            counting.release.set()
    assert counting.calls == 1


async def test_a_caller_arriving_as_a_flight_lands_is_answered(autojump_clock: object) -> None:
    # Upstream unregisters, then drains without blocking: a follower in between
    # waits forever. Here closing the group and collecting its listeners are one step.
    answered: list[float] = []

    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return trio.current_time()

    async with trio_persist.open_persist(device) as persist:

        async def caller(delay: float) -> None:
            await trio.sleep(delay)
            answered.append(await persist.resolve("base", "req"))

        async with trio.open_nursery() as nursery:
            for delay in (0, 0.5, 1, 1, 1, 1.5):
                nursery.start_soon(caller, delay)
    assert len(answered) == 6
    assert trio.current_time() <= 2.5


async def test_a_different_request_is_served_as_soon_as_the_first_finishes(
    autojump_clock: object, counting: Counting
) -> None:
    # Upstream answers only identical requests; the rest wait for the leader to die.
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(Device()) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "m", "first")
        await trio.testing.wait_all_tasks_blocked()
        assert await persist.resolve("m", "second") == "second"
        assert trio.current_time() == 2
