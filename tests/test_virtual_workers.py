"""Virtual workers: `ask(group, request)` activates a group's worker on first use.

Activation (store, then ``restore``, then ``default()``), and every
interleaving of an ask with another ask, a resolve, a flight, a failing
load, cancellation and the persist closing, ordered deliberately under the
autojump clock. Stopping and saving are in test_virtual_lifecycle.py; the
promises are stated in docs/virtual-workers.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.stores import MemoryStore
from virtual_helpers import Boom, Counter, Scripted, StaticModel


async def test_the_first_ask_activates_a_worker_and_later_asks_reach_it() -> None:
    device = Counter()
    async with trio_persist.open_persist(device) as persist:
        assert await persist.ask("cart", 1, default=lambda: 0) == 1
        assert await persist.ask("cart", 2) == 3  # the live worker: no default needed
        [worker] = persist.workers()
        assert (worker.group, worker.state) == ("cart", 3)
        assert worker.statistics().virtual
    assert device.ran == [(0, 1), (1, 2)]
    stats = persist.statistics()
    assert (stats.activations, stats.workers_started, stats.requests) == (1, 1, 2)


async def test_concurrent_first_asks_share_one_activation_and_one_load(
    autojump_clock: object,
) -> None:
    store = Scripted(load_delay=1)
    await store.inner.save("cart", 100)
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        replies: list[int] = []

        async def ask(amount: int) -> None:
            replies.append(await persist.ask("cart", amount, default=lambda: 0))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask, 1)
        assert sorted(replies) == list(range(101, 151))  # fifty transitions, none lost
        assert len(store.ops("load")) == 1
        assert trio.current_time() == 1
    assert persist.statistics().activations == 1


async def test_an_activating_worker_is_registered_before_the_first_ask_waits() -> None:
    store = Scripted(gate=trio.Event())
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.ask, "cart", 1, default=lambda: 0))
            await trio.testing.wait_all_tasks_blocked()
            [snapshot] = persist.snapshot()
            assert (snapshot.kind, snapshot.virtual, snapshot.activating) == (
                "worker",
                True,
                True,
            )
            assert snapshot.queued == 1
            [worker] = persist.workers()
            assert worker.state is None  # nothing to show while it loads
            assert worker.statistics().activating
            store.gate.set()


async def test_the_store_comes_first_then_restore_then_default() -> None:
    class Restoring(Counter):
        def __init__(self) -> None:
            super().__init__()
            self.restored: list[Any] = []

        async def restore(self, group: Any) -> Any:
            self.restored.append(group)
            return {"b": 50}.get(group)

    store = MemoryStore()
    await store.save("a", 10)
    device = Restoring()
    async with trio_persist.open_persist(device, store=store) as persist:
        assert await persist.ask("a", 1, default=lambda: 0) == 11  # the store's
        assert await persist.ask("b", 1, default=lambda: 0) == 51  # restore's
        assert await persist.ask("c", 1, default=lambda: 0) == 1  # default()
    assert device.restored == ["b", "c"]
    assert [await store.load(g) for g in "abc"] == [11, 51, 1]  # all saved on closing


async def test_a_failing_load_fails_every_waiting_ask_and_the_next_ask_tries_again(
    autojump_clock: object,
) -> None:
    store = Scripted(load_delay=1, failing_loads={"cart"})
    device = Counter()
    async with trio_persist.open_persist(device, store=store) as persist:
        errors: list[BaseException] = []

        async def ask() -> None:
            with pytest.raises(trio_persist.ActivationFailed) as caught:
                await persist.ask("cart", 1, default=lambda: 0)
            errors.append(caught.value)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask)
        assert len(errors) == 3
        assert all(isinstance(error.__cause__, Boom) for error in errors)
        assert "cart" in str(errors[0])
        assert persist.workers() == ()
        assert len(persist.registry) == 0
        assert device.ran == []  # never against the default
        store.failing_loads.clear()
        assert await persist.ask("cart", 1, default=lambda: 0) == 1
    stats = persist.statistics()
    assert (stats.activation_failures, stats.activations, stats.workers_started) == (1, 1, 1)
    assert len(store.ops("load")) == 2


async def test_a_corrupt_saved_state_is_a_failed_activation_never_a_fresh_one(
    tmp_path: Any,
) -> None:
    async with trio_persist.stores.FileStore(tmp_path) as store:
        await store.save("cart", 7)
    [path] = tmp_path.glob("*.state")
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # damaged on disk
    device = Counter()
    async with trio_persist.open_persist(
        device, store=trio_persist.stores.FileStore(tmp_path)
    ) as persist:
        with pytest.raises(trio_persist.ActivationFailed) as caught:
            await persist.ask("cart", 1, default=lambda: 0)
        assert isinstance(caught.value.__cause__, trio_persist.CorruptResult)
    assert device.ran == []  # the default never replaced the saved cart


async def test_an_activation_that_fails_after_its_worker_was_evicted_still_fails_its_asks(
    autojump_clock: object,
) -> None:
    store = Scripted(load_delays={"b": 2}, failing_loads={"b"})
    device = Counter()
    async with trio_persist.open_persist(device, store=store, max_workers=1) as persist:
        async with trio.open_nursery() as nursery:

            async def ask_b() -> None:
                with pytest.raises(trio_persist.ActivationFailed):
                    await persist.ask("b", 1, default=int)

            nursery.start_soon(ask_b)
            await trio.testing.wait_all_tasks_blocked()
            await persist.ask("c", 1, default=int)  # activated at 0: evicts b, loading
            assert persist.statistics().evictions == 1
        assert device.ran == [(0, 1)]  # only c's: b's ask never ran, on no state


async def test_nothing_to_activate_from_is_no_worker_naming_the_group() -> None:
    async with trio_persist.open_persist(Counter(), store=MemoryStore()) as persist:
        with pytest.raises(trio_persist.NoWorker, match="'nobody'"):
            await persist.ask("nobody", 1)
        with pytest.raises(LookupError):  # NoWorker is one
            await persist.ask("nobody", 1)
        assert len(persist.registry) == 0
    assert persist.statistics().activation_failures == 0  # a lookup miss, not a failure


async def test_any_waiting_asks_default_serves_the_activation() -> None:
    store = Scripted(gate=trio.Event())
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        results: list[Any] = []

        async def ask(default: Any) -> None:
            results.append(await persist.ask("cart", 1, default=default))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, None)  # activates, without a default
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, lambda: 10)  # joins it, with one
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        assert sorted(results) == [11, 12]


async def test_a_resolve_queued_at_an_activation_that_fails_runs_as_a_flight() -> None:
    class Device(Counter):
        def group(self, base: Any, request: Any) -> Any:
            return "cart"

    store = Scripted(gate=trio.Event(), failing_loads={"cart"})
    device = Device()
    async with trio_persist.open_persist(device, store=store) as persist:
        outcome: dict[str, Any] = {}

        async def ask() -> None:
            with pytest.raises(trio_persist.ActivationFailed):
                await persist.ask("cart", 1, default=lambda: 0)

        async def resolve() -> None:
            outcome["resolve"] = await persist.resolve(100, 1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(resolve)  # routed to the activating worker
            await trio.testing.wait_all_tasks_blocked()
            assert persist.snapshot()[0].queued == 2
            store.gate.set()
    assert outcome["resolve"] == 101  # an ordinary flight, on its own base
    assert device.ran == [(100, 1)]


async def test_an_ask_waits_for_a_running_flight_then_its_groups_worker_serves_it(
    autojump_clock: object,
) -> None:
    class Device(Counter):
        def group(self, base: Any, request: Any) -> Any:
            return "cart"

    device = Device()
    async with trio_persist.open_persist(device, store=MemoryStore()) as persist:
        replies: dict[str, Any] = {}

        async def call(name: str, fn: Any, *args: Any) -> None:
            replies[name] = await fn(*args)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "flight", persist.resolve, 1000, {"sleep": 5})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "ask", partial(persist.ask, default=lambda: 0), "cart", 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "later resolve", persist.resolve, 2000, 7)
        # The flight ran on its base; the ask never ran as a flight: the worker
        # activated after the flight's execution served it, and the resolve
        # queued behind the flight too.
        assert device.ran == [(1000, {"sleep": 5}), (0, 7), (7, 1)]
        assert replies == {"flight": 1001, "later resolve": 7, "ask": 8}
        assert trio.current_time() == 5
        [worker] = persist.workers()
        assert worker.statistics().virtual


async def test_an_ask_cancelled_while_its_worker_activates_is_withdrawn(
    autojump_clock: object,
) -> None:
    store = Scripted(load_delay=5)
    device = Counter()
    async with trio_persist.open_persist(device, store=store, worker_timeout=60) as persist:
        with trio.move_on_after(1):
            await persist.ask("cart", 1, default=lambda: 0)
        await trio.sleep(10)
        [worker] = persist.workers()  # the activation finished anyway...
        assert worker.state == 0
        assert device.ran == []  # ...and the withdrawn request never ran
        assert await persist.ask("cart", 2) == 2


async def test_an_ask_cancelled_while_it_runs_is_not_applied(autojump_clock: object) -> None:
    device = Counter()
    async with trio_persist.open_persist(device) as persist:
        await persist.ask("cart", 1, default=lambda: 0)
        with trio.move_on_after(1):
            await persist.ask("cart", {"add": 10, "sleep": 5})
        assert persist.workers()[0].state == 1  # the transition was cancelled
        assert await persist.ask("cart", 1) == 2
    assert persist.statistics().abandoned == 1


async def test_closing_while_a_worker_activates_answers_its_asks(autojump_clock: object) -> None:
    store = Scripted(gate=trio.Event())
    async with trio.open_nursery() as outside:
        async with trio_persist.open_persist(Counter(), store=store) as persist:

            async def ask() -> None:
                with pytest.raises(trio_persist.LeaderDied, match="closed"):
                    await persist.ask("cart", 1, default=lambda: 0)

            outside.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
    assert trio.current_time() == 0  # the load was cancelled, nothing waited
    assert store.ops("save") == []  # no state, nothing saved
    with pytest.raises(trio_persist.PersistClosed):
        await persist.ask("cart", 1, default=lambda: 0)


async def test_a_resolve_for_a_live_virtual_workers_group_is_served_by_it() -> None:
    class Device(Counter):
        def group(self, base: Any, request: Any) -> Any:
            return "cart" if request is None or not isinstance(base, str) else base

    device = Device()
    async with trio_persist.open_persist(device) as persist:
        await persist.ask("cart", 1, default=lambda: 0)
        assert await persist.resolve("cart", 5) == 6  # the worker's state, not "cart"
    assert device.ran == [(0, 1), (1, 5)]


async def test_a_virtual_worker_keeps_its_group_when_its_state_would_move_it() -> None:
    class Device(Counter):
        def group(self, base: Any, request: Any) -> Any:
            return ("version", base)  # an advancing worker would follow its state

    async with trio_persist.open_persist(Device()) as persist:
        for _ in range(3):
            await persist.ask("session", 1, default=lambda: 0)
        assert persist.registry.lookup("session") is persist.workers()[0]
        assert len(persist.registry) == 1


async def test_asking_from_inside_the_groups_own_worker_raises_infinite_recursion() -> None:
    class Device:
        persist: trio_persist.Persist[Any, Any, Any]

        async def resolve(self, state: Any, request: Any) -> Any:
            if request == "again":
                return await self.persist.ask("g", "inner")
            return request

    device = Device()
    async with trio_persist.open_persist(device) as persist:
        device.persist = persist
        with pytest.raises(trio_persist.InfiniteRecursion, match="'g'"):
            await persist.ask("g", "again", default=dict)
        assert await persist.ask("g", "fine") == "fine"


async def test_identical_asks_queued_at_a_static_worker_share_one_execution(
    autojump_clock: object,
) -> None:
    device = StaticModel()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.ask, "model", {"sleep": 1}, default=dict))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(5):
                nursery.start_soon(persist.ask, "model", {"q": 1})
        assert device.ran == [{"sleep": 1}, {"q": 1}]


async def test_get_worker_shares_the_activation_of_concurrent_asks(autojump_clock: object) -> None:
    store = Scripted(load_delay=1)
    await store.inner.save("cart", 5)
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        workers: list[Any] = []

        async def get() -> None:
            workers.append(await persist.get_worker("cart"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(persist.ask, "cart", 1)
                nursery.start_soon(get)
        assert len(store.ops("load")) == 1
        assert len({id(w) for w in workers}) == 1
        assert workers[0].state == 10


async def test_start_worker_waits_for_an_activation_under_way() -> None:
    store = Scripted(gate=trio.Event())
    await store.inner.save("cart", 5)
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.ask, "cart", 1)
            await trio.testing.wait_all_tasks_blocked()
            started: list[Any] = []

            async def start() -> None:
                started.append(await persist.start_worker(0, group="cart"))

            nursery.start_soon(start)
            await trio.testing.wait_all_tasks_blocked()
            assert started == []
            store.gate.set()
        assert started[0].state == 6  # the activated worker, not a second one


async def test_ask_checks_its_default() -> None:
    async with trio_persist.open_persist(Counter()) as persist:
        with pytest.raises(TypeError, match="default must be None or a callable"):
            await persist.ask("g", 1, default=0)  # type: ignore[arg-type]


async def test_an_async_default_fails_the_activation_instead_of_becoming_the_state() -> None:
    async def fresh() -> int:
        return 0

    async with trio_persist.open_persist(Counter(), store=MemoryStore()) as persist:
        with pytest.raises(trio_persist.ActivationFailed, match="default") as info:
            await persist.ask("g", 1, default=fresh)  # type: ignore[arg-type]
        assert "an async function" in str(info.value.__cause__)
        assert await persist.ask("g", 1, default=int) == 1  # nothing was started


async def test_equal_groups_of_other_types_share_a_live_worker_but_not_a_saved_state() -> None:
    store = MemoryStore()
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        await persist.ask(("cart", 1), 5, default=int)
        assert await persist.ask(("cart", 1.0), 1, default=int) == 6  # the live worker
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        assert await persist.ask(("cart", 1.0), 1, default=int) == 1  # another state
        assert await store.load(("cart", 1)) == 6


async def test_a_group_the_store_cannot_name_fails_its_activation_saying_so() -> None:
    async with trio_persist.open_persist(Counter(), store=MemoryStore()) as persist:
        with pytest.raises(trio_persist.ActivationFailed) as info:
            await persist.ask(object(), 1, default=int)
        assert isinstance(info.value.__cause__, TypeError)
        assert "cannot name this group" in str(info.value)
        assert "the next ask tries again" not in str(info.value)  # it would fail the same
        assert "asking again fails the same way" in str(info.value)


async def test_ask_works_on_a_persist_that_deduplicates_nothing() -> None:
    async with trio_persist.open_persist(Counter(), await_inprogress=False) as persist:
        assert await persist.ask("g", 1, default=lambda: 0) == 1
        assert await persist.ask("g", 1) == 2


async def test_without_a_store_restore_and_on_idle_still_keep_the_state(
    autojump_clock: object,
) -> None:
    class Hooks(Counter):
        def __init__(self) -> None:
            super().__init__()
            self.saved: dict[Any, Any] = {}

        async def restore(self, group: Any) -> Any:
            return self.saved.get(group)

        async def on_idle(self, group: Any, state: Any) -> None:
            self.saved[group] = state

    device = Hooks()
    async with trio_persist.open_persist(device, worker_timeout=10) as persist:
        assert await persist.ask("cart", 5, default=lambda: 0) == 5
        await trio.sleep(11)  # idle: on_idle saved it
        assert device.saved == {"cart": 5}
        assert await persist.ask("cart", 1, default=lambda: 0) == 6  # restored


async def test_snapshots_and_events_show_virtual_workers(autojump_clock: object) -> None:
    store = Scripted(load_delay=1)
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        with persist.subscribe() as events:
            await persist.ask("cart", 1, default=lambda: 0)
            [snapshot] = persist.snapshot()
            assert (snapshot.virtual, snapshot.activating) == (True, False)
            assert snapshot.to_json()["virtual"] is True
            await persist.workers()[0].stop()
            kinds = []
            while True:
                try:
                    kinds.append(events.receive_nowait().kind)
                except trio.WouldBlock:
                    break
    assert kinds == [
        "worker.activating",
        "worker.activated",
        "worker.started",
        "worker.served",
        "worker.saved",
        "worker.stopped",
    ]
