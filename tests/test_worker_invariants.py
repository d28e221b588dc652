"""Worker invariants under random schedules (Hypothesis, virtual time).

Requests, worker starts, stops, failures, crashes and cancellations in any
order: no request is lost or answered twice, a group never has two live
workers, ``max_workers`` is never exceeded by running workers, and once
everything has idled out nothing is left.
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
class Op:
    at: float
    kind: str  # "resolve", "start", "stop"
    group: int
    behaviour: str  # "ok", "fail", "crash"
    cancel_after: float | None
    request: int = 0
    share: bool = True


ops = st.lists(
    st.builds(
        Op,
        at=st.sampled_from([0, 0.5, 1, 2, 3, 5]),
        kind=st.sampled_from(["resolve", "resolve", "resolve", "start", "stop"]),
        group=st.integers(0, 3),
        behaviour=st.sampled_from(["ok", "ok", "ok", "fail", "crash"]),
        cancel_after=st.none() | st.sampled_from([0.5, 1.5]),
        request=st.integers(0, 2),
        share=st.sampled_from([True, True, False]),
    ),
    min_size=4,
    max_size=40,
)


class Device:
    def __init__(self) -> None:
        self.saved: list[Any] = []

    def group(self, base: Any, request: Any) -> Any:
        return base

    async def resolve(self, state: Any, request: Any) -> Any:
        await trio.sleep(1)
        if request[1] == "fail":
            raise ValueError("failed")
        if request[1] == "crash":
            raise Crash()
        return (request, object())  # a token per execution

    async def on_idle(self, group: Any, state: Any) -> None:
        self.saved.append(group)


@settings(deadline=None, max_examples=int(os.environ.get("TRIO_PERSIST_EXAMPLES", "7000")))
@given(ops, st.sampled_from(["ignore", "throw"]))
def test_no_request_is_lost_or_answered_twice_and_workers_stay_bounded(
    schedule: list[Op], strategy: Any
) -> None:
    device = Device()
    outcomes: dict[int, list[str]] = {}
    tokens: dict[int, list[bool]] = {}  # execution -> the share flags of its callers
    alive: list[object] = []
    max_workers = 2

    def check_bounds(persist: trio_persist.Persist) -> None:
        running = [w for w in persist.workers() if w.statistics().stop_reason is None]
        groups = [w.group for w in running]
        assert len(groups) == len(set(groups))
        assert len(running) <= max_workers

    async def operate(persist: trio_persist.Persist, index: int, op: Op) -> None:
        await trio.sleep(op.at)
        if op.kind == "start":
            await persist.start_worker(op.group)
        elif op.kind == "stop":
            owner = persist.registry.lookup(op.group)
            if isinstance(owner, trio_persist.Worker):
                await owner.stop()
        else:
            got = outcomes.setdefault(index, [])
            with trio.CancelScope() as scope:
                if op.cancel_after is not None:
                    scope.deadline = trio.current_time() + op.cancel_after
                try:
                    request = (op.request, op.behaviour)
                    result, token = await persist.resolve(op.group, request, share=op.share)
                    assert result == request
                    tokens.setdefault(id(token), []).append(op.share)
                    alive.append(token)  # ids stay unique while we compare them
                    got.append("result")
                except ValueError:
                    got.append("error")
                except trio_persist.LeaderDied as exc:
                    got.append("died" if isinstance(exc.__cause__, Crash) else "lost")
            if scope.cancelled_caught:
                got.append("cancelled")
        check_bounds(persist)

    async def main() -> None:
        # Virtual time: a request left hanging makes the clock jump here and fail.
        with trio.fail_after(3600):
            await scenario()

    async def scenario() -> None:
        async with trio_persist.open_persist(
            device,
            static_worker=True,
            worker_timeout=4,
            max_workers=max_workers,
            error_strategy=strategy,
        ) as persist:
            async with trio.open_nursery() as nursery:
                for index, op in enumerate(schedule):
                    nursery.start_soon(operate, persist, index, op)
            await trio.sleep(10)  # every worker idles out
            assert persist.workers() == ()
            assert len(persist.registry) == 0
            stats = persist.statistics()
            assert (stats.in_flight, stats.waiters, stats.workers) == (0, 0, 0)
            # Reaching in: no public call counts the tasks of the persist's nursery.
            assert len(persist._core.nursery.child_tasks) == persist._runners.idle

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert all(len(got) == 1 for got in outcomes.values()), outcomes
    assert not any("lost" in got for got in outcomes.values()), outcomes
    # A write (share=False) is never answered by an execution shared with anyone.
    assert all(flags == [False] or all(flags) for flags in tokens.values()), tokens
