"""Virtual workers' lives with a store: stopping, saving, hand-overs, checkpoints, durability.

Each way a worker stops (idle timeout, eviction, ``stop()``, ``forget``, a
crash, the persist closing) meets asks arriving at every moment of it, under
the autojump clock with exact times. docs/virtual-workers.md states the
promises.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.stores import MemoryStore
from virtual_helpers import Boom, Counter, Scripted, StaticModel

# -- stopping: the save comes first, the group is freed after it ----------------------


async def test_a_stopping_worker_frees_its_group_only_after_its_save(
    autojump_clock: object,
) -> None:
    store = Scripted(save_delay=3)
    device = Counter()
    async with trio_persist.open_persist(device, store=store) as persist:
        await persist.ask("cart", 5, default=lambda: 0)
        [worker] = persist.workers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.stop)
            await trio.testing.wait_all_tasks_blocked()
            assert persist.registry.lookup("cart") is worker  # still held while it saves
            replies: list[int] = []

            async def ask() -> None:
                replies.append(await persist.ask("cart", 1, default=lambda: 0))

            nursery.start_soon(ask)  # arrives during the save
        # The ask waited for the save and got the live state (handed over), not 0.
        assert replies == [6]
        assert [c.ended for c in store.ops("save", "cart")][:1] == [3]
        assert store.ops("load") == [store.ops("load")[0]]  # the first activation only
    assert persist.statistics().handovers == 1


async def test_a_reactivation_after_forget_loads_what_the_save_wrote(
    autojump_clock: object,
) -> None:
    store = Scripted(save_delay=3)
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        await persist.ask("cart", 5, default=lambda: 0)
        assert persist.forget("cart")
        # This ask queues at the stopping worker, which saves, frees the
        # group, and sends it to a fresh activation: a load after the save.
        assert await persist.ask("cart", 1, default=lambda: 0) == 6
        _, second_load = store.ops("load", "cart")
        save = store.ops("save", "cart")[0]
        assert save.ended is not None
        assert second_load.began >= save.ended == 3
    assert persist.statistics().handovers == 0


async def test_an_ask_racing_the_idle_timeout_gets_the_state(autojump_clock: object) -> None:
    store = Scripted(save_delay=1)
    async with trio_persist.open_persist(Counter(), store=store, worker_timeout=10) as persist:
        await persist.ask("cart", 1, default=lambda: 0)
        for moment in (10, 10.5, 11, 30):  # at the deadline, while saving, after, long after
            await trio.sleep_until(moment)
            assert await persist.ask("cart", 1, default=lambda: 0) > 1
        assert persist.workers()[0].state == 5


async def test_without_a_store_requests_queued_at_a_stopping_worker_keep_its_state(
    autojump_clock: object,
) -> None:
    class Slow(Counter):
        async def on_idle(self, group: Any, state: Any) -> None:
            await trio.sleep(2)

    async with trio_persist.open_persist(Slow(), worker_timeout=10) as persist:
        await persist.ask("cart", 5, default=lambda: 0)
        await trio.sleep(11)  # timed out at 10, on_idle until 12
        assert await persist.ask("cart", 1, default=lambda: 0) == 6  # handed over
        await trio.sleep(30)  # gone for good: no store, nothing queued
        assert await persist.ask("cart", 1, default=lambda: 0) == 1


async def test_a_crash_answers_its_ask_and_the_queue_reloads_the_saved_state(
    autojump_clock: object,
) -> None:
    store = MemoryStore()
    await store.save("cart", 100)
    device = Counter()
    async with trio_persist.open_persist(device, store=store) as persist:
        outcomes: list[Any] = []

        async def ask(request: Any) -> None:
            try:
                outcomes.append(await persist.ask("cart", request))
            except trio_persist.LeaderDied as error:
                outcomes.append(type(error.__cause__).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, {"crash": True, "sleep": 1})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, 10)
        # The crashed worker saved nothing: its queue reactivated from the store.
        assert outcomes == [101, "Crash", 110]
    assert persist.statistics().activations == 2


async def test_closing_saves_every_worker_and_queued_asks_hear_why(autojump_clock: object) -> None:
    store = Scripted(save_delay=1)
    async with trio.open_nursery() as outside:
        async with trio_persist.open_persist(Counter(), store=store) as persist:
            for group in range(10):
                await persist.ask(group, group, default=lambda: 0)

            async def late_ask() -> None:
                with pytest.raises(trio_persist.LeaderDied):
                    await persist.ask(0, {"sleep": 10})

            outside.start_soon(late_ask)
            await trio.testing.wait_all_tasks_blocked()
    assert {c.group: c.state for c in store.ops("save")} == {g: g for g in range(10)}
    assert store.saving_groups_at_once == 10  # saved concurrently: one second in all
    assert trio.current_time() == 1


# -- eviction under max_workers ------------------------------------------------------


@pytest.mark.parametrize("store", [None, "memory"])
async def test_eviction_never_runs_an_ask_without_its_state(
    autojump_clock: object, store: Any
) -> None:
    # The measure: 20 users x 5 concurrent requests at max_workers=5.
    device = Counter()
    kept = MemoryStore() if store else None
    async with trio_persist.open_persist(device, max_workers=5, store=kept) as persist:
        replies: dict[int, list[int]] = {}

        async def user(n: int) -> None:
            async with trio.open_nursery() as requests:
                for _ in range(5):
                    requests.start_soon(add, n)

        async def add(n: int) -> None:
            replies.setdefault(n, []).append(await persist.ask(n, {"sleep": 0.1}, default=int))

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(user, n)
        assert {n: sorted(r) for n, r in replies.items()} == {n: [1, 2, 3, 4, 5] for n in range(20)}
        assert len([w for w in persist.workers() if not w.statistics().stop_reason]) <= 5
    assert persist.statistics().evictions > 0


async def test_workers_taking_turns_under_max_workers_always_make_progress(
    autojump_clock: object,
) -> None:
    device = Counter()
    async with trio_persist.open_persist(device, max_workers=1, store=MemoryStore()) as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                for group in ("a", "b", "c"):
                    nursery.start_soon(partial(persist.ask, group, {"sleep": 1}, default=int))
        assert sorted(state for state, _ in device.ran) == sorted(list(range(10)) * 3)


async def test_saving_workers_cannot_pile_up_behind_a_slow_store(autojump_clock: object) -> None:
    store = Scripted(save_delay=3)
    alive: list[int] = []
    async with trio_persist.open_persist(Counter(), max_workers=2, store=store) as persist:

        async def watch() -> None:
            while True:
                alive.append(len(persist.workers()))
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for group in range(20):
                await persist.ask(group, 1, default=int)
            nursery.cancel_scope.cancel()
    assert max(alive) <= 4  # max_workers live, as many saving
    assert {c.group for c in store.ops("save") if c.error is None} == set(range(20))


async def test_asks_for_a_new_group_while_workers_save_share_one_waiting_activation(
    autojump_clock: object,
) -> None:
    store = Scripted(save_delay=5)
    async with trio_persist.open_persist(Counter(), max_workers=1, store=store) as persist:
        await persist.ask("a", 1, default=int)
        await persist.ask("b", 1, default=int)  # evicts a, which saves until 5
        replies: list[int] = []

        async def ask_c() -> None:
            replies.append(await persist.ask("c", 1, default=int))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask_c)
            await trio.testing.wait_all_tasks_blocked()
            [c] = [s for s in persist.snapshot() if s.group == "c"]
            assert (c.activating, c.queued) == (True, 3)  # registered, waiting for room
            assert len(persist.workers()) == 2  # a (saving) and b: twice max_workers
        assert sorted(replies) == [1, 2, 3]
        assert trio.current_time() == 5
        assert len(store.ops("load", "c")) == 1


async def test_workers_asking_each_other_in_a_chain_under_max_workers_never_deadlock(
    autojump_clock: object,
) -> None:
    # Each worker of the chain is busy until the next one answers: an activation
    # waiting for one of them to end would wait for ever.
    class Relay:
        persist: trio_persist.Persist[Any, Any, Any]

        async def resolve(self, state: int, chain: list[str]) -> int:
            if chain:
                await self.persist.ask(chain[0], chain[1:], default=int)
            return state + 1

    store, relay = Scripted(save_delay=1), Relay()
    async with trio_persist.open_persist(relay, max_workers=1, store=store) as persist:
        relay.persist = persist
        with trio.fail_after(60):
            assert await persist.ask("a", ["b", "c", "d", "e"], default=int) == 1
    assert {c.group for c in store.ops("save")} == set("abcde")


async def test_a_worker_asking_a_group_that_waits_for_room_launches_it(
    autojump_clock: object,
) -> None:
    # "b" waits for room, which only "a" ending would make; "a" waits for "b".
    class Relay:
        persist: trio_persist.Persist[Any, Any, Any]

        async def resolve(self, state: int, request: str) -> int:
            if request == "relay":
                await trio.sleep(1)
                await self.persist.ask("b", "", default=int)
            return state + 1

    relay = Relay()
    async with trio_persist.open_persist(
        relay, max_workers=1, store=Scripted(), worker_timeout=None
    ) as persist:
        relay.persist = persist
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.ask, "a", "relay", default=int))
            await trio.sleep(0.5)
            await persist.ask("x", "", default=int)  # evicts "a", busy
            nursery.start_soon(partial(persist.ask, "b", "", default=int))
            await trio.testing.wait_all_tasks_blocked()
            assert [s.group for s in persist.snapshot() if s.activating] == ["b"]
            with trio.fail_after(60):
                await persist.ask("a", "")  # after "a" relayed to "b" and ended
        assert trio.current_time() == 1


async def test_closing_answers_asks_waiting_for_room(autojump_clock: object) -> None:
    store = Scripted(save_delay=5)
    async with trio.open_nursery() as outside:
        async with trio_persist.open_persist(
            Counter(), max_workers=1, store=store, shutdown_grace=1
        ) as persist:
            await persist.ask("a", 1, default=int)
            await persist.ask("b", 1, default=int)

            async def ask_c() -> None:
                with pytest.raises(trio_persist.LeaderDied, match="closed"):
                    await persist.ask("c", 1, default=int)

            outside.start_soon(ask_c)
            await trio.testing.wait_all_tasks_blocked()
    assert len(persist.registry) == 0
    assert store.ops("load", "c") == []


# -- saves: one group at a time, whole, failures counted --------------------------------


async def test_saves_of_one_group_never_overlap_and_other_groups_save_concurrently(
    autojump_clock: object,
) -> None:
    store = Scripted(save_delay=1)
    async with trio_persist.open_persist(
        Counter(), store=store, checkpoint_interval=0.5, durable=True
    ) as persist:
        async with trio.open_nursery() as nursery:
            for group in range(5):
                for _ in range(4):
                    nursery.start_soon(partial(persist.ask, group, 1, default=int))
    assert max(store.most_at_once.values()) == 1
    assert store.saving_groups_at_once == 5


async def test_a_failing_save_is_counted_logged_once_and_hurts_no_other_group(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    store = Scripted(failing_saves={"bad"})
    with caplog.at_level(logging.ERROR, logger="trio_persist"):
        async with trio_persist.open_persist(
            Counter(), store=store, checkpoint_interval=1, worker_timeout=60
        ) as persist:
            for moment in range(5):
                for group in ("bad", "good"):
                    await persist.ask(group, 1, default=int)
                await trio.sleep_until(moment + 1.5)
    assert await store.inner.load("good") == 5
    assert await store.inner.load("bad") is None
    stats = persist.statistics()
    assert stats.save_failures == 6  # five checkpoints and the stop
    assert stats.hook_failures == stats.save_failures
    failures = [r for r in caplog.records if "through the store failed" in r.getMessage()]
    assert len(failures) == 2  # the first in full, then one summary when the persist closed


async def test_a_stop_save_cut_short_by_shutdown_grace_is_a_failure(
    autojump_clock: object,
) -> None:
    store = Scripted(save_delay=100)
    async with trio_persist.open_persist(Counter(), store=store, shutdown_grace=2) as persist:
        await persist.ask("cart", 1, default=int)
    assert trio.current_time() == 2
    assert persist.statistics().save_failures == 1
    assert await store.inner.load("cart") is None  # the old state (none) stays


async def test_an_unchanged_state_is_not_saved_again(autojump_clock: object) -> None:
    store = Scripted()
    await store.inner.save("cart", 3)
    async with trio_persist.open_persist(Counter(), store=store, worker_timeout=5) as persist:
        await persist.get_worker("cart")  # loaded, never asked
        await trio.sleep(6)
    assert store.ops("save") == []


async def test_a_state_restored_by_the_hook_moves_into_the_store() -> None:
    class Legacy(Counter):
        async def restore(self, group: Any) -> Any:
            return 40

    store = MemoryStore()
    async with trio_persist.open_persist(Legacy(), store=store) as persist:
        await persist.get_worker("cart")
    assert await store.load("cart") == 40


async def test_with_a_store_a_resolve_rebuilds_a_stopped_workers_group_from_it() -> None:
    class Device(Counter):
        def group(self, base: Any, request: Any) -> Any:
            return "counter"

    device = Device()
    async with trio_persist.open_persist(device, store=MemoryStore()) as persist:
        worker = await persist.start_worker(10)
        assert await persist.resolve(None, 5) == 15
        await worker.stop()  # saved
        assert await persist.resolve(None, 1) == 16  # a worker rebuilt from the store
    assert device.ran == [(10, 5), (15, 1)]


# -- checkpoints ---------------------------------------------------------------------


async def test_a_changed_state_is_saved_within_the_checkpoint_interval(
    autojump_clock: object,
) -> None:
    store = Scripted()
    async with trio_persist.open_persist(
        Counter(), store=store, checkpoint_interval=5, worker_timeout=100
    ) as persist:
        await persist.ask("cart", 1, default=int)  # a change at 0
        await trio.sleep_until(7)
        await persist.ask("cart", 1)  # a change at 7
        await trio.sleep_until(40)  # nothing changes after that
        assert [(c.began, c.state) for c in store.ops("save")] == [(5, 1), (10, 2)]
    assert persist.statistics().checkpoints == 2


async def test_a_busy_worker_checkpoints_between_requests(autojump_clock: object) -> None:
    store = Scripted()
    async with trio_persist.open_persist(Counter(), store=store, checkpoint_interval=2) as persist:
        for _ in range(5):
            await persist.ask("cart", {"sleep": 1.5}, default=int)
        assert [(c.began, c.state) for c in store.ops("save")] == [(3, 2), (6, 4)]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "between-requests"])
async def test_closing_cuts_a_hung_checkpoint_save_short_within_shutdown_grace(
    autojump_clock: object, busy: bool
) -> None:
    store = Scripted()
    async with trio_persist.open_persist(
        Counter(), store=store, checkpoint_interval=5, shutdown_grace=3
    ) as persist:
        await persist.ask("cart", 1, default=int)
        store.save_delay = math.inf  # the store stalls from now on
        if busy:
            await persist.ask("cart", {"sleep": 6})  # its checkpoint follows this request
        else:
            await trio.sleep(6)  # an idle worker wakes for its checkpoint at 5
        closing = trio.current_time()
    assert trio.current_time() == closing + 3  # the stop's save had the grace, no more
    assert persist.statistics().save_failures == 1
    assert [c.error for c in store.ops("save")] == ["Cancelled", "Cancelled"]


async def test_a_static_workers_state_counts_as_changed_by_every_request(
    autojump_clock: object,
) -> None:
    store = Scripted()
    async with trio_persist.open_persist(
        StaticModel(), static_worker=True, store=store, checkpoint_interval=1
    ) as persist:
        await persist.ask("model", "q", default=dict)  # changes the dict in place
        await trio.sleep(2)
        assert [c.state for c in store.ops("save")] == [{"seen": 1}]


# -- durable=True --------------------------------------------------------------------


async def test_durable_replies_only_once_the_new_state_is_saved(autojump_clock: object) -> None:
    store = Scripted(save_delay=2)
    async with trio_persist.open_persist(Counter(), store=store, durable=True) as persist:
        assert await persist.ask("cart", 5, default=int) == 5
        assert trio.current_time() == 2
        assert await store.inner.load("cart") == 5


async def test_a_failed_durable_save_fails_the_request_and_keeps_the_last_saved_state(
    autojump_clock: object,
) -> None:
    store = Scripted()
    async with trio_persist.open_persist(Counter(), store=store, durable=True) as persist:
        assert await persist.ask("cart", 5, default=int) == 5
        store.failing_saves.add("cart")
        with pytest.raises(trio_persist.SaveFailed) as caught:
            await persist.ask("cart", 1)
        assert isinstance(caught.value.__cause__, Boom)
        assert persist.workers()[0].state == 5  # not applied
        store.failing_saves.clear()
        assert await persist.ask("cart", 2) == 7
    assert await store.inner.load("cart") == 7


async def test_a_static_worker_whose_durable_save_fails_reloads_its_last_saved_state(
    autojump_clock: object,
) -> None:
    store = Scripted()
    async with trio_persist.open_persist(
        StaticModel(), static_worker=True, store=store, durable=True
    ) as persist:
        assert await persist.ask("model", "a", default=dict) == 1
        store.failing_saves.add("model")
        with pytest.raises(trio_persist.SaveFailed):
            await persist.ask("model", "b")  # changed {"seen": 2} in place, not saved
        store.failing_saves.clear()
        assert await persist.ask("model", "c") == 2  # from the saved {"seen": 1}
    assert persist.statistics().activations == 2


async def test_an_abandoned_durable_request_is_not_applied(autojump_clock: object) -> None:
    store = Scripted(save_delay=5)
    async with trio_persist.open_persist(Counter(), store=store, durable=True) as persist:
        assert await persist.ask("cart", 1, default=int) == 1
        with trio.move_on_after(2):  # gives up while its state is being saved
            await persist.ask("cart", 10)
        assert persist.workers()[0].state == 1
        assert await store.inner.load("cart") == 1


# -- the store's life, and options ---------------------------------------------------


async def test_the_store_is_entered_with_the_persist_and_left_after_the_last_save() -> None:
    class Tracked(Scripted):
        log: list[str]

        async def __aenter__(self) -> Tracked:
            self.log.append("enter")
            return self

        async def __aexit__(self, *exc: object) -> None:
            self.log.append(f"exit after {len(self.ops('save'))} saves")

    store = Tracked()
    store.log = []
    async with trio_persist.open_persist(Counter(), store=store) as persist:
        assert store.log == ["enter"]
        await persist.ask("cart", 1, default=int)
    assert store.log == ["enter", "exit after 1 saves"]


async def test_store_options_are_checked_when_the_block_opens() -> None:
    with pytest.raises(TypeError, match=r"store must be .* \(it has no load, save, delete\)"):
        async with trio_persist.open_persist(Counter(), store=object()):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="durable saves workers' states through a store"):
        async with trio_persist.open_persist(Counter(), durable=True):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="checkpoint_interval"):
        async with trio_persist.open_persist(Counter(), checkpoint_interval=5):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="checkpoint_interval must be > 0"):
        async with trio_persist.open_persist(Counter(), store=MemoryStore(), checkpoint_interval=0):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="durable must be True or False"):
        async with trio_persist.open_persist(Counter(), store=MemoryStore(), durable=1):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_statistics_count_activations_saves_and_failures(autojump_clock: object) -> None:
    store = Scripted(failing_loads={"broken"})
    async with trio_persist.open_persist(
        Counter(), store=store, checkpoint_interval=1, max_workers=1
    ) as persist:
        await persist.ask("a", 1, default=int)
        await trio.sleep(2)  # one checkpoint
        await persist.ask("b", 1, default=int)  # evicts a: saved on stop? no: clean
        with pytest.raises(trio_persist.ActivationFailed):
            await persist.ask("broken", 1, default=int)
    stats = persist.statistics()
    assert (stats.activations, stats.activation_failures) == (2, 1)
    assert (stats.saves, stats.checkpoints, stats.save_failures) == (2, 1, 0)
    assert stats.evictions == 1
