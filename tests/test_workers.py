"""Persistent workers: long-lived per-group tasks that keep their state in memory.

The original's worker tests (HyperBEAM's ``persistent_worker_test`` and
``spawn_after_execution_test``) and its worker scenarios, with times exact under
the autojump clock; each promise is stated in docs/guarantees.md and docs/workers.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from conftest import Sleeper, SlowDevice


async def test_a_static_worker_serves_concurrent_requests_one_at_a_time(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # The original's test: three clients at once on a static worker; serialised, distinct results.
    results: list[Any] = []
    async with trio_persist.open_persist(slow_device, static_worker=True) as persist:
        await persist.start_worker("msg1")
        await trio.sleep(0.01)

        async def client(wait: float) -> None:
            results.append(await persist.resolve("msg1", {"path": "slow", "wait": wait}))

        async with trio.open_nursery() as nursery:
            for wait in (0.2, 0.22, 0.24):
                nursery.start_soon(client, wait)
    assert len({r["token"] for r in results}) == 3
    assert trio.current_time() == pytest.approx(0.01 + 0.2 + 0.22 + 0.24)


async def test_requests_queued_behind_a_spawning_flight_are_served_by_its_worker(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # The original's test: client 1 returns its base and spawns a static worker; clients
    # 2 and 3 (different requests, same group) queued behind it are its first work.
    results: dict[int, Any] = {}
    async with trio_persist.open_persist(slow_device, static_worker=True) as persist:

        async def client(n: int, request: dict[str, Any], spawn: bool) -> None:
            results[n] = await persist.resolve("msg1", request, spawn_worker=spawn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, 1, {"path": "self", "wait": 0.5}, True)
            await trio.sleep(0.01)
            nursery.start_soon(client, 2, {"path": "slow", "wait": 0.55}, False)
            nursery.start_soon(client, 3, {"path": "slow", "wait": 0.6}, False)
        [worker] = persist.workers()
        assert worker.state == "msg1"
        assert worker.statistics().served == 2
    assert results[1] == "msg1"
    assert results[2]["token"] != results[3]["token"]
    assert trio.current_time() == pytest.approx(0.5 + 0.55 + 0.6)


async def test_a_static_worker_keeps_its_state_and_its_group(slow_device: SlowDevice) -> None:
    async with trio_persist.open_persist(slow_device, static_worker=True) as persist:
        worker = await persist.start_worker("msg1")
        first = await persist.resolve("msg1", {"path": "self"})
        second = await persist.resolve("msg1", {"path": "self"})
        assert first == second == "msg1"
        assert persist.registry.lookup(worker.group) is worker
        assert worker.statistics().static


async def test_a_worker_advances_to_each_result_and_regroups_under_it() -> None:
    # The next request runs against the result, under group(result, None).
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return ("version", base["version"])

        async def resolve(self, base: Any, request: Any) -> Any:
            return {"version": base["version"] + request}

    async with trio_persist.open_persist(Device()) as persist:
        worker = await persist.start_worker({"version": 1})
        assert worker.group == ("version", 1)
        assert await persist.resolve({"version": 1}, 10) == {"version": 11}
        assert worker.group == ("version", 11)
        assert persist.registry.lookup(("version", 11)) is worker
        assert persist.registry.lookup(("version", 1)) is None
        assert await persist.resolve({"version": 11}, 1) == {"version": 12}


async def test_with_the_default_grouper_a_worker_serves_every_request_on_its_base() -> None:
    # The original's default grouper could not.
    async def device(base: Any, request: Any) -> Any:
        return [*base, request]

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        worker = await persist.start_worker(["state"])
        assert await persist.resolve(["state"], "a") == ["state", "a"]
        assert await persist.resolve(["state"], "b") == ["state", "b"]
        assert worker.statistics().served == 2
        assert await persist.resolve(["other"], "c") == ["other", "c"]  # not its base
        assert worker.statistics().served == 2


async def test_an_advancing_default_grouped_worker_follows_its_new_state() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base + request

    async with trio_persist.open_persist(device) as persist:
        worker = await persist.start_worker(1)
        assert await persist.resolve(1, 1) == 2
        assert await persist.resolve(2, 1) == 3  # the worker, now on state 2
        assert worker.statistics().served == 2
        assert worker.group == persist.group(3, None)


async def test_a_failed_request_leaves_an_ignoring_worker_serving_with_its_state(
    slow_device: SlowDevice,
) -> None:
    # error_strategy="ignore" (the default).
    async with trio_persist.open_persist(slow_device) as persist:
        worker = await persist.start_worker("msg1")
        with pytest.raises(ValueError, match="failed on msg1"):
            await persist.resolve("msg1", {"path": "fail"})
        assert await persist.resolve("msg1", {"path": "self"}) == "msg1"
        assert worker.statistics().served == 2
        assert not worker.statistics().stopped


async def test_a_failed_request_stops_a_throwing_worker_after_it_answers(
    slow_device: SlowDevice,
) -> None:
    # error_strategy="throw": the requester gets the error, on_idle runs.
    saved = []

    class Device(SlowDevice):
        async def on_idle(self, group: Any, state: Any) -> None:
            saved.append(state)

    async with trio_persist.open_persist(Device(), error_strategy="throw") as persist:
        worker = await persist.start_worker("msg1")
        with pytest.raises(ValueError, match="failed on msg1"):
            await persist.resolve("msg1", {"path": "fail"})
        await worker.wait_stopped()
        assert worker.statistics().stop_reason == "throw"
        assert saved == ["msg1"]
        assert persist.registry.lookup(worker.group) is None
        # A fresh execution serves the group now.
        assert await persist.resolve("msg1", {"path": "self"}) == "msg1"


async def test_an_idle_worker_stops_at_exactly_its_timeout(autojump_clock: object) -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return base

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        worker = await persist.start_worker("state", timeout=5)
        await trio.sleep(3)
        await persist.resolve("state", "x")  # served from 3 to 4
        await worker.wait_stopped()
        assert trio.current_time() == 4 + 5
        stats = worker.statistics()
        assert (stats.stop_reason, stats.stopped) == ("timeout", True)
        assert persist.statistics().worker_timeouts == 1
        assert persist.snapshot() == ()


async def test_a_request_racing_the_idle_timeout_is_served_never_lost(
    autojump_clock: object,
) -> None:
    executed = []

    async def device(base: Any, request: Any) -> Any:
        executed.append((request, trio.current_time()))
        return request

    for arrival in (4.999, 5.0, 5.0001):
        async with trio_persist.open_persist(device, static_worker=True) as persist:
            start = trio.current_time()
            await persist.start_worker("state", timeout=5)
            async with trio.open_nursery() as nursery:
                for n in range(3):

                    async def request(n: int = n, at: float = start + arrival) -> None:
                        await trio.sleep_until(at)
                        assert await persist.resolve("state", n) == n

                    nursery.start_soon(request)
    assert len(executed) == 9


async def test_a_worker_crash_stays_inside_it(autojump_clock: object) -> None:
    # The requester gets LeaderDied from the crash; the others go on.
    class Crash(BaseException):
        pass

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            if request == "crash":
                raise Crash("worker down")
            return (base, request)

    async with trio_persist.open_persist(Device()) as persist:
        doomed = await persist.start_worker("a")
        other = await persist.start_worker("b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "a", "queued")  # behind the crash
            with pytest.raises(trio_persist.LeaderDied) as info:
                await persist.resolve("a", "crash")
            assert isinstance(info.value.__cause__, Crash)
        assert doomed.statistics().stop_reason == "crashed"
        assert await persist.resolve("b", "fine") == ("b", "fine")
        assert not other.statistics().stopped
        assert persist.statistics().crashes == 1


async def test_a_crashed_worker_does_not_run_on_idle() -> None:
    saved = []

    class Device:
        async def resolve(self, base: Any, request: Any) -> Any:
            raise GeneratorExit()

        async def on_idle(self, group: Any, state: Any) -> None:
            saved.append(state)  # pragma: no cover

    async with trio_persist.open_persist(Device()) as persist:
        worker = await persist.start_worker("s")
        with pytest.raises(trio_persist.LeaderDied):
            await persist.resolve("s", "x")
        await worker.wait_stopped()
    assert saved == []


async def test_requests_queued_at_a_crashing_worker_are_rerouted_in_order(
    autojump_clock: object,
) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            if request == "crash":
                raise KeyboardInterruptLike()
            return request

    served: list[Any] = []
    async with trio_persist.open_persist(Device()) as persist:
        await persist.start_worker("state")
        async with trio.open_nursery() as nursery:

            async def call(request: str) -> None:
                try:
                    served.append(await persist.resolve("state", request))
                except trio_persist.LeaderDied:
                    served.append("died")

            for request in ("crash", "one", "two"):
                nursery.start_soon(call, request)
                await trio.testing.wait_all_tasks_blocked()
    assert served == ["died", "one", "two"]
    assert trio.current_time() == 3


class KeyboardInterruptLike(BaseException):
    pass


async def test_a_failed_spawning_flight_leaves_no_worker(slow_device: SlowDevice) -> None:
    async with trio_persist.open_persist(slow_device) as persist:
        with pytest.raises(ValueError, match="failed"):
            await persist.resolve("msg1", {"path": "fail"}, spawn_worker=True)
        assert persist.workers() == ()


async def test_spawning_with_the_default_grouper_keeps_the_result_as_a_worker() -> None:
    async def device(base: Any, request: Any) -> Any:
        return {"loaded": base, "request": request}

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        state = await persist.resolve("db", "load", spawn_worker=True)
        [worker] = persist.workers()
        assert worker.state is state
        assert worker.group == persist.group(state, None)
        assert await persist.resolve(state, "next") == {"loaded": state, "request": "next"}
        assert worker.statistics().served == 1


async def test_a_result_the_default_grouper_cannot_name_spawns_no_worker() -> None:
    async def device(base: Any, request: Any) -> Any:
        return object()

    async with trio_persist.open_persist(device) as persist:
        await persist.resolve("db", "load", spawn_worker=True)
        assert persist.workers() == ()


async def test_a_custom_await_hook_lets_a_published_result_answer_other_listeners(
    autojump_clock: object,
) -> None:
    # Slot-keyed waiting, as dev_process does: a listener waiting for
    # slot N (or "any") accepts a result published for any slot >= N.
    class Process:
        def group(self, base: Any, request: Any) -> Any:
            return "process"

        async def resolve(self, state: Any, request: Any) -> Any:
            await trio.sleep(1)
            return {"slot": request["slot"]}

        def answers(self, waiting: Any, published: Any) -> bool:
            return waiting["slot"] == "any" or published["slot"] >= waiting["slot"]

    async with trio_persist.open_persist(Process(), static_worker=True) as persist:
        worker = await persist.start_worker({"slot": 0})
        results: dict[str, Any] = {}

        async def wait_for(name: str, slot: Any) -> None:
            results[name] = await persist.resolve({"slot": 0}, {"slot": slot})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for, "computes 5", 5)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(wait_for, "wants 3", 3)
            nursery.start_soon(wait_for, "wants any", "any")
            nursery.start_soon(wait_for, "wants 9", 9)
            await trio.testing.wait_all_tasks_blocked()
        assert results["wants 3"] == results["wants any"] == {"slot": 5}
        assert results["wants 9"] == {"slot": 9}
        assert worker.statistics().served == 2
        assert worker.statistics().answered == 4
        assert trio.current_time() == 2


async def test_identical_requests_queued_at_a_worker_share_one_execution(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    async with trio_persist.open_persist(slow_device, static_worker=True) as persist:
        worker = await persist.start_worker("m")
        results = []

        async def call(wait: float) -> None:
            results.append(await persist.resolve("m", {"path": "slow", "wait": wait}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, 1)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                nursery.start_soon(call, 2)
        assert worker.statistics().served == 2
        assert results[1] is results[2] is results[3]
        assert persist.statistics().deduplicated == 2
        assert trio.current_time() == 3


async def test_starting_a_worker_for_a_group_that_has_one_returns_it() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base

    async with trio_persist.open_persist(device) as persist:
        first = await persist.start_worker("s")
        assert await persist.start_worker("s") is first
        assert len(persist.workers()) == 1


async def test_a_worker_asked_for_during_a_flight_takes_over_its_queue(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    async with trio_persist.open_persist(slow_device, static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "m", {"path": "slow", "wait": 1})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "m", {"path": "slow", "wait": 2})
            await trio.testing.wait_all_tasks_blocked()
            worker = await persist.start_worker("m")
            assert await persist.start_worker("m") is worker
            assert persist.workers() == ()  # not yet: the flight runs
            await trio.sleep(1.5)
            assert persist.registry.lookup(worker.group) is worker
        assert worker.statistics().served == 1
        assert trio.current_time() == 3


async def test_a_worker_keeps_its_registration_while_it_serves(
    autojump_clock: object, slow_device: SlowDevice
) -> None:
    # The original dropped it during every request, letting a parallel leader in.
    async with trio_persist.open_persist(slow_device) as persist:
        worker = await persist.start_worker("m")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "m", {"path": "slow", "wait": 1})
            await trio.sleep(0.5)
            assert worker.statistics().busy
            assert persist.registry.lookup(worker.group) is worker
            [record] = persist.snapshot()
            assert (record.kind, record.listeners, record.busy) == ("worker", 1, True)


async def test_a_worker_resolving_its_own_group_executes_directly() -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "outer":
                return ["outer", await persist.resolve(base, "inner")]
            return "inner"

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        await persist.start_worker("s")
        assert await persist.resolve("s", "outer") == ["outer", "inner"]


async def test_stop_runs_on_idle_frees_the_group_and_reroutes_the_queue(
    autojump_clock: object,
) -> None:
    saved = []

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

        async def on_idle(self, group: Any, state: Any) -> None:
            saved.append((group, state, trio.current_time()))

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        worker = await persist.start_worker("state")
        results = []
        async with trio.open_nursery() as nursery:
            for request in ("a", "b"):

                async def call(request: str = request) -> None:
                    results.append(await persist.resolve("state", request))

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            await worker.stop()
            assert saved == [("g", "state", 1)]
            assert worker.statistics().stop_reason == "stopped"
        assert sorted(results) == ["a", "b"]  # "b" was re-routed to a fresh flight
        assert trio.current_time() == 2


async def test_closing_the_persist_stops_every_worker_with_on_idle_first() -> None:
    saved = []

    class Device:
        async def resolve(self, base: Any, request: Any) -> Any:
            return base  # pragma: no cover

        async def on_idle(self, group: Any, state: Any) -> None:
            await trio.lowlevel.checkpoint()
            saved.append(state)

    async with trio_persist.open_persist(Device()) as persist:
        workers = [await persist.start_worker(f"w{i}") for i in range(3)]
    assert sorted(saved) == ["w0", "w1", "w2"]
    assert all(w.statistics().stop_reason == "closed" for w in workers)


async def test_a_hung_on_idle_cannot_hang_shutdown(autojump_clock: object) -> None:
    class Device:
        async def resolve(self, base: Any, request: Any) -> Any:
            return base  # pragma: no cover

        async def on_idle(self, group: Any, state: Any) -> None:
            await trio.sleep_forever()

    async with trio_persist.open_persist(Device(), shutdown_grace=2) as persist:
        await persist.start_worker("w")
    assert trio.current_time() == 2


async def test_a_failing_on_idle_is_reported_and_does_not_crash_anything() -> None:
    class Device:
        async def resolve(self, base: Any, request: Any) -> Any:
            return base  # pragma: no cover

        async def on_idle(self, group: Any, state: Any) -> None:
            raise OSError("disk full")

    async with trio_persist.open_persist(Device()) as persist:
        with persist.subscribe() as events:
            worker = await persist.start_worker("w")
            await worker.stop()
            kinds = [events.receive_nowait() for _ in range(3)]
        assert persist.statistics().hook_failures == 1
    assert [event.kind for event in kinds] == ["worker.started", "hook.failed", "worker.stopped"]
    assert kinds[1].detail == "on_idle: OSError: disk full"


async def test_closing_mid_request_gives_the_requester_leader_died() -> None:
    release = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        await release.wait()  # pragma: no cover

    outcome = []
    async with trio.open_nursery() as nursery:
        async with trio_persist.open_persist(device) as persist:
            await persist.start_worker("s")

            async def outside() -> None:
                try:
                    await persist.resolve("s", "x")
                except trio_persist.LeaderDied as exc:
                    outcome.append(str(exc))

            nursery.start_soon(outside)
            await trio.testing.wait_all_tasks_blocked()
    assert outcome == ["the persist closed before this request was served"]


async def test_the_least_recently_used_idle_worker_is_evicted_first(
    autojump_clock: object,
) -> None:
    saved = []

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            return base

        async def on_idle(self, group: Any, state: Any) -> None:
            saved.append(group)

    async with trio_persist.open_persist(Device(), max_workers=2, static_worker=True) as persist:
        a = await persist.start_worker("a")
        b = await persist.start_worker("b")
        await persist.resolve("a", "use")  # b is now the least recently used
        await persist.start_worker("c")
        await b.wait_stopped()
        assert saved == ["b"]
        assert b.statistics().stop_reason == "evicted"
        assert {w.group for w in persist.workers()} == {"a", "c"}
        assert not a.statistics().stopped
        assert persist.statistics().evictions == 1


async def test_when_every_worker_is_busy_the_least_recently_used_one_is_evicted_after_its_request(
    autojump_clock: object,
) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(10)
            return base

    async with trio_persist.open_persist(Device(), max_workers=1, static_worker=True) as persist:
        busy = await persist.start_worker("busy")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "busy", "long")
            await trio.testing.wait_all_tasks_blocked()
            await persist.start_worker("new")
        await busy.wait_stopped()
        assert trio.current_time() == 10  # it finished its request first
        assert busy.statistics().stop_reason == "evicted"


async def test_a_stopped_worker_is_rebuilt_from_its_saved_state_on_the_next_request(
    autojump_clock: object,
) -> None:
    # Recovery, beyond upstream: on_idle saves, restore loads.
    class Store:
        def __init__(self) -> None:
            self.saved: dict[Any, Any] = {}
            self.restored: list[Any] = []

        def group(self, base: Any, request: Any) -> Any:
            return "counter"

        async def resolve(self, state: Any, request: Any) -> Any:
            return state + request

        async def on_idle(self, group: Any, state: Any) -> None:
            self.saved[group] = state

        async def restore(self, group: Any) -> Any:
            self.restored.append(group)
            return self.saved.get(group)

    store = Store()
    async with trio_persist.open_persist(store, worker_timeout=5) as persist:
        await persist.start_worker(100)
        assert await persist.resolve(100, 1) == 101
        await trio.sleep(6)
        assert persist.workers() == ()
        assert store.saved == {"counter": 101}
        # The caller's base is stale; the rebuilt worker's state is what counts.
        assert await persist.resolve(0, 1) == 102
        assert store.restored == ["counter"]
        [worker] = persist.workers()
        assert worker.state == 102


async def test_a_group_with_nothing_to_restore_falls_back_to_a_fresh_execution() -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, state: Any, request: Any) -> Any:
            return (state, request)

        async def restore(self, group: Any) -> Any:
            if group == "g":
                raise OSError("store unreachable")
            return None  # pragma: no cover

    async with trio_persist.open_persist(Device()) as persist:
        worker = await persist.start_worker("s")
        await worker.stop()
        assert await persist.resolve("base", "r") == ("base", "r")
        assert persist.workers() == ()


async def test_worker_statistics_describe_it() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base

    async with trio_persist.open_persist(device, worker_timeout=7) as persist:
        worker = await persist.start_worker("s", static=True)
        await persist.resolve("s", 1)
        stats = worker.statistics()
        assert (stats.static, stats.timeout, stats.served, stats.answered) == (True, 7, 1, 1)
        assert (stats.queued, stats.listeners, stats.busy, stats.stopped) == (0, 0, False, False)
        assert stats.stop_reason is None
        assert "running served=1" in repr(worker)
        live = persist.statistics()
        assert (live.workers, live.workers_started, live.groups) == (1, 1, 1)


async def test_start_worker_checks_its_arguments() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base  # pragma: no cover

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(TypeError, match="static must be True, False or None"):
            await persist.start_worker("s", static="yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
            await persist.start_worker("s", timeout=-1)
        assert persist.workers() == ()


async def test_eviction_stops_an_idle_worker_before_a_busy_least_recently_used_one(
    autojump_clock: object,
) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(10 if request == "long" else 0)
            return base

    async with trio_persist.open_persist(Device(), max_workers=2, static_worker=True) as persist:
        busy = await persist.start_worker("busy")
        idle = await persist.start_worker("idle")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "busy", "long")
            await trio.testing.wait_all_tasks_blocked()
            await persist.resolve("idle", "quick")  # busy is now the least recently used
            await persist.start_worker("new")
            await idle.wait_stopped()
            assert idle.statistics().stop_reason == "evicted"
            assert not busy.statistics().stopped
        assert trio.current_time() == 10


async def test_subscribers_see_every_worker_stop_when_the_persist_closes(
    autojump_clock: object,
) -> None:
    class Saving:
        async def resolve(self, base: Any, request: Any) -> Any:
            return base

        async def on_idle(self, group: Any, state: Any) -> None:
            await trio.sleep(1)  # saving takes a while

    async with trio_persist.open_persist(Saving()) as persist:
        events = persist.subscribe()
        for n in range(3):
            await persist.start_worker(f"state {n}")
    kinds = [event.kind async for event in events]
    assert kinds.count("worker.stopped") == 3


async def test_a_spawned_result_whose_group_is_taken_keeps_the_owner_there() -> None:
    async def device(base: Any, request: Any) -> Any:
        return {"state": "shared"}

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        group = persist.group({"state": "shared"}, None)
        owner = await persist.start_worker({"state": "shared"}, group)
        assert await persist.resolve("db", "load", spawn_worker=True) == {"state": "shared"}
        assert persist.workers() == (owner,)  # not replaced, not doubled
        assert persist.statistics().workers_started == 1


async def test_a_spawn_whose_group_a_started_worker_claimed_first_leaves_that_worker(
    autojump_clock: object,
) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return {"from": request}

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "b", "spawn", spawn_worker=True))
            await trio.testing.wait_all_tasks_blocked()
            claimed = await persist.start_worker({"explicit": 1}, "g")  # takes over after it
        assert persist.workers() == (claimed,)
        assert claimed.state == {"explicit": 1}
        assert persist.statistics().workers_started == 1


async def test_requests_queued_behind_a_spawn_are_served_once_by_the_new_worker(
    autojump_clock: object,
) -> None:
    class Device:
        def __init__(self) -> None:
            self.executed: list[Any] = []

        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            self.executed.append(request)
            await trio.sleep(1)
            return {"after": request}

    device = Device()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "b", "spawn", spawn_worker=True))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "b", "queued")  # behind it, in the flight
        [worker] = persist.workers()
        assert worker.statistics().served == 1  # the queued one, handed over
    assert device.executed == ["spawn", "queued"]  # once each


async def test_identical_requests_to_a_static_worker_share_one_execution(
    autojump_clock: object,
) -> None:
    executed: list[Any] = []

    async def device(state: Any, request: Any) -> Any:
        executed.append(request)
        await trio.sleep(1)
        return {"for": request}

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            for request in ({"page": 1}, {"page": 1}, {"page": 2}, {"page": 2}):
                nursery.start_soon(lambda r=request: _append(got, persist.resolve("s", r)))
    assert sorted(executed, key=str) == [{"page": 1}, {"page": 2}]  # each once: twins joined
    assert sorted(got, key=str) == [{"for": {"page": 1}}] * 2 + [{"for": {"page": 2}}] * 2


async def test_a_full_inbox_makes_callers_wait_and_drops_nothing(autojump_clock: object) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True, worker_inbox=1) as persist:
        worker = await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3, 4):
                nursery.start_soon(persist.resolve, "s", n)
                await trio.testing.wait_all_tasks_blocked()
            assert worker.statistics().queued == 1  # one in the inbox, two waiting for room
            assert persist.statistics().waiters == 4
        assert sorted(device.executed) == [1, 2, 3, 4]
        assert trio.current_time() == 10


async def test_a_caller_waiting_for_room_is_rerouted_when_the_worker_stops(
    autojump_clock: object,
) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True, worker_inbox=1) as persist:
        worker = await persist.start_worker("s")
        results = []
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):

                async def call(n: int = n) -> None:
                    results.append(await persist.resolve("s", n))

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            worker.stop_nowait()
        assert sorted(results) == [1, 2, 3]


async def test_forget_stops_a_worker() -> None:
    async with trio_persist.open_persist(Sleeper()) as persist:
        worker = await persist.start_worker("s")
        assert persist.forget("g")
        await worker.wait_stopped()
        assert worker.statistics().stop_reason == "forgotten"
        await worker.wait_stopped()  # waiting again returns at once


async def test_no_parallel_execution_starts_while_a_worker_serves(
    autojump_clock: object,
) -> None:
    # Upstream unregistered the worker during each request: a request arriving
    # then became an independent leader running against stale state.
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "s", 2)
            await trio.sleep(1)
            nursery.start_soon(persist.resolve, "s", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert persist.statistics().in_flight == 0  # no flight: it queued at the worker
        assert trio.current_time() == 3


async def test_only_the_flights_own_group_is_handed_to_its_worker(
    autojump_clock: object,
) -> None:
    # Upstream's forward_work moved every queued request of any group.
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return base

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "a", "spawn", spawn_worker=True))
            nursery.start_soon(persist.resolve, "b", "other")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "a", "queued")
        [worker] = persist.workers()
        assert worker.group == "a"
        assert worker.statistics().served == 1
        assert trio.current_time() == 2


async def test_default_grouped_workers_register_under_a_real_group() -> None:
    # Upstream registered such workers as 'ungrouped_exec' (or crashed with badmap).
    async def device(base: Any, request: Any) -> Any:
        return {"state": base, "request": request}

    async with trio_persist.open_persist(device) as persist:
        state = await persist.resolve("base", "x", spawn_worker=True)
        [worker] = persist.workers()
        assert worker.group == trio_persist.default_group(state, None)


async def _append(into: list[Any], call: Any) -> None:
    into.append(await call)
