"""Invariants under random schedules (Hypothesis, virtual time).

Whatever the interleaving of arrivals, cancellations, failures and crashes:
every caller gets exactly one outcome; an execution is never shared between
different requests; one group never runs two executions at once; callers
waiting together share one result; and when all is quiet nothing is
registered, nobody waits and no flight is left.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_persist


class Crash(BaseException):
    pass


@attrs.frozen
class Call:
    delay: float
    group: int
    request: int
    duration: float
    behaviour: str  # "ok", "fail", "crash"
    cancel_after: float | None
    share: bool = True


calls = st.lists(
    st.builds(
        Call,
        delay=st.sampled_from([0, 0.5, 1, 1.5, 2, 3]),
        group=st.integers(0, 2),
        request=st.integers(0, 2),
        duration=st.sampled_from([0, 1, 2]),
        behaviour=st.sampled_from(["ok", "ok", "ok", "fail", "crash"]),
        cancel_after=st.none() | st.sampled_from([0, 0.5, 1, 2.5]),
        share=st.sampled_from([True, True, True, False]),
    ),
    min_size=4,
    max_size=40,
)

# Examples of random schedules (4 to 40 calls each). With the worker invariants'
# 7,000 this makes about 105,000 random calls per run, in about a minute
# (docs/reliability.md).
EXAMPLES = int(os.environ.get("TRIO_PERSIST_EXAMPLES", "7000"))  # fewer under mutation runs


class Device:
    def __init__(self) -> None:
        self.running: dict[int, int] = {}
        self.max_concurrent_per_group = 0
        self.executions: list[tuple[int, int, int]] = []

    def group(self, base: Any, request: Any) -> Any:
        return base

    async def resolve(self, base: Any, request: Any) -> Any:
        group, req, duration, behaviour = base, request[0], request[1], request[2]
        self.running[group] = self.running.get(group, 0) + 1
        self.max_concurrent_per_group = max(self.max_concurrent_per_group, self.running[group])
        try:
            await trio.sleep(duration)
        finally:
            self.running[group] -= 1
        token = object()
        self.executions.append((group, req, id(token)))
        if behaviour == "fail":
            raise ValueError(f"failed {req}")
        if behaviour == "crash":
            raise Crash()
        return (group, request, token)


def run_schedule(schedule: list[Call], mode: Any = True) -> None:
    device = Device()
    outcomes: dict[int, list[str]] = {i: [] for i in range(len(schedule))}
    results: dict[int, Any] = {}

    async def caller(persist: trio_persist.Persist, index: int, call: Call) -> None:
        await trio.sleep(call.delay)
        request = (call.request, call.duration, call.behaviour)
        with trio.CancelScope() as scope:
            if call.cancel_after is not None:
                scope.deadline = trio.current_time() + call.cancel_after
            try:
                results[index] = await persist.resolve(call.group, request, share=call.share)
                outcomes[index].append("result")
            except ValueError:
                outcomes[index].append("error")
            except trio_persist.LeaderDied as exc:
                outcomes[index].append("died" if isinstance(exc.__cause__, Crash) else "lost")
        if scope.cancelled_caught:
            outcomes[index].append("cancelled")

    async def main() -> None:
        # Virtual time: a caller left hanging makes the clock jump here and fail.
        with trio.fail_after(3600):
            await scenario()

    async def scenario() -> None:
        async with trio_persist.open_persist(device, await_inprogress=mode) as persist:
            async with trio.open_nursery() as nursery:
                for index, call in enumerate(schedule):
                    nursery.start_soon(caller, persist, index, call)
            await trio.testing.wait_all_tasks_blocked()
            stats = persist.statistics()
            assert len(persist.registry) == 0
            assert persist.snapshot() == ()
            assert (stats.in_flight, stats.waiters) == (0, 0)
            # Reaching in: no public call counts the tasks of the persist's nursery.
            assert len(persist._core.nursery.child_tasks) == persist._runners.idle
            # Every device call started either finished or was cancelled when its
            # last listener left: none is lost and none is counted twice.
            assert stats.executions == len(device.executions) + stats.abandoned

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert all(len(got) == 1 for got in outcomes.values()), outcomes
    assert not any("lost" in got for got in outcomes.values()), outcomes
    if mode is not False:
        assert device.max_concurrent_per_group <= 1
    for index, result in results.items():
        group, request, _ = result
        assert group == schedule[index].group
        assert request[0] == schedule[index].request
    tokens_by_execution: dict[int, set[tuple[int, int]]] = {}
    callers_by_execution: dict[int, int] = {}
    for result in results.values():
        group, request, token = result
        tokens_by_execution.setdefault(id(token), set()).add((group, request[0]))
        callers_by_execution[id(token)] = callers_by_execution.get(id(token), 0) + 1
    assert all(len(keys) == 1 for keys in tokens_by_execution.values())
    # A write (share=False) is never joined, and never joins another.
    for index, result in results.items():
        if not schedule[index].share:
            assert callers_by_execution[id(result[2])] == 1


@settings(deadline=None, max_examples=EXAMPLES)
@given(calls)
def test_every_caller_gets_exactly_one_outcome_and_nothing_is_left(schedule: list[Call]) -> None:
    run_schedule(schedule)


@settings(deadline=None, max_examples=EXAMPLES // 5)
@given(calls)
def test_without_deduplication_every_caller_still_gets_one_outcome(schedule: list[Call]) -> None:
    run_schedule(schedule, mode=False)


@settings(deadline=None, max_examples=100)
@given(st.integers(1, 30), st.lists(st.sampled_from([0, 0.5, 1, 2]), min_size=1, max_size=30))
def test_callers_waiting_together_share_one_execution(callers: int, delays: list[float]) -> None:
    executions = 0

    async def device(base: Any, request: Any) -> Any:
        nonlocal executions
        executions += 1
        await trio.sleep(10)
        return object()

    async def main() -> None:
        async with trio_persist.open_persist(device) as persist:
            results = []

            async def call(delay: float) -> None:
                await trio.sleep(delay)
                results.append(await persist.resolve("base", "req"))

            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(call, delays[i % len(delays)])
            assert len({id(r) for r in results}) == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert executions == 1
