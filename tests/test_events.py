"""The event stream: subscribers read events from a memory channel; slow ones lose them."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints

import trio_persist


async def test_a_flight_reports_start_join_and_finish(autojump_clock: object) -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        if request == "bad":
            raise ValueError("nope")
        return request

    async with trio_persist.open_persist(device) as persist:
        with persist.subscribe() as events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(persist.resolve, "b", "r")
                nursery.start_soon(persist.resolve, "b", "r")
            with pytest.raises(ValueError, match="nope"):
                await persist.resolve("b", "bad")
            kinds = [events.receive_nowait() for _ in range(5)]
    group = persist.group("b", "r")
    assert [(e.kind, e.group) for e in kinds[:3]] == [
        ("flight.started", group),
        ("flight.joined", group),
        ("flight.finished", group),
    ]
    assert kinds[2].time == 1
    assert (kinds[4].kind, kinds[4].detail) == ("flight.failed", "ValueError: nope")
    assert kinds[4].to_json()["group"] == persist.group("b", "bad")


async def test_workers_report_their_life(autojump_clock: object) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "crash":
                raise GeneratorExit
            return base

    async with trio_persist.open_persist(Device(), worker_timeout=5, max_workers=1) as persist:
        with persist.subscribe() as events:
            await persist.start_worker("a")
            await persist.resolve("a", "x")
            await trio.sleep(6)  # a times out
            await persist.start_worker("b")
            await persist.start_worker("c")  # b is evicted
            await trio.sleep(1)
            with pytest.raises(trio_persist.LeaderDied):
                await persist.resolve("c", "crash")
            await trio.testing.wait_all_tasks_blocked()
            kinds = []
            while True:
                try:
                    kinds.append(events.receive_nowait().kind)
                except trio.WouldBlock:
                    break
    assert kinds[:3] == ["worker.started", "worker.served", "worker.timed_out"]
    assert "worker.evicted" in kinds
    assert kinds.count("worker.stopped") == 1
    assert kinds[-2:] == ["worker.failed", "worker.crashed"]


async def test_a_slow_subscriber_loses_events_and_counts_them(counting: Any) -> None:
    async with trio_persist.open_persist(counting) as persist:
        with persist.subscribe(max_buffer=2) as slow:
            counting.wait = 0
            for i in range(5):
                await persist.resolve("b", i)
            assert slow.dropped == 8  # 10 events, room for 2
            assert persist.statistics().executions == 5  # nobody waited for the subscriber


async def test_iterating_ends_when_the_persist_closes(counting: Any) -> None:
    received = []
    async with trio.open_nursery() as nursery:
        async with trio_persist.open_persist(counting) as persist:
            events = persist.subscribe()

            async def read() -> None:
                async for event in events:
                    received.append(event.kind)

            nursery.start_soon(read)
            counting.wait = 0
            await persist.resolve("b", "r")
    assert received == ["flight.started", "flight.finished"]
    with pytest.raises(trio.EndOfChannel):
        await events.receive()


async def test_a_closed_subscription_gets_nothing_more(counting: Any) -> None:
    async with trio_persist.open_persist(counting) as persist:
        events = persist.subscribe()
        events.close()
        events.close()
        counting.wait = 0
        await persist.resolve("b", "r")
        assert [e async for e in events] == []


async def test_subscribe_checks_its_buffer_size(counting: Any) -> None:
    async with trio_persist.open_persist(counting) as persist:
        with pytest.raises(ValueError, match="max_buffer must be >= 1"):
            persist.subscribe(0)
        with pytest.raises(TypeError, match="max_buffer must be an int"):
            persist.subscribe("8")  # type: ignore[arg-type]


async def test_receive_is_a_checkpoint_with_events_buffered_and_after_the_end(
    counting: Any,
) -> None:
    counting.wait = 0
    async with trio_persist.open_persist(counting) as persist:
        events = persist.subscribe()
        await persist.resolve("b", "r")  # two events wait in the buffer
        for kind in ("flight.started", "flight.finished"):
            with assert_checkpoints():
                assert (await events.receive()).kind == kind
        events.close()
        with assert_checkpoints(), pytest.raises(trio.EndOfChannel):
            await events.receive()
