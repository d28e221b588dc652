"""Workers across the cluster: one owner per group among processes, asks routed to it.

Two persists on separate backends stand for two processes here (each backend
is a node of its own); tests/test_redis_worker_faults.py runs real processes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from redis_helpers import eventually
from trio_persist._grouping import group_digest
from trio_persist._logging import Throttle
from trio_persist.redis import RedisBackend, RedisStore
from trio_persist.redis._link import Counters, Link
from trio_persist.redis._renewal import Renewer


async def counter(state: Any, request: Any) -> Any:
    """An advancing worker: each request adds to the count and says who served it."""
    await trio.lowlevel.checkpoint()
    return {"n": state["n"] + request, "by": trio.lowlevel.current_root_task().name}


@asynccontextmanager
async def node(
    url: str,
    namespace: str,
    *,
    durable: bool = False,
    lease_ttl: float = 1.0,
    redis_timeout: float = 5.0,
) -> AsyncIterator[trio_persist.Persist[Any, Any, Any]]:
    backend = RedisBackend(
        url,
        namespace=namespace,
        lease_ttl=lease_ttl,
        timeout=redis_timeout,
        workers="cluster",
        heartbeat=0.05,
    )
    store = RedisStore(url, namespace=namespace + ":states")
    async with trio_persist.open_persist(
        counter, backend=backend, store=store, durable=durable, worker_timeout=60
    ) as persist:
        yield persist


def fresh() -> dict[str, Any]:
    return {"n": 0, "by": None}


async def test_an_ask_from_another_process_is_served_by_the_groups_one_worker(
    redis_url: str, namespace: str
) -> None:
    async with (
        node(redis_url, namespace) as one,
        node(redis_url, namespace) as two,
    ):
        first = await one.ask("session", 1, default=fresh)
        second = await two.ask("session", 2, default=fresh)
        assert (first["n"], second["n"]) == (1, 3)
        assert (len(one.workers()), len(two.workers())) == (1, 0)
        one_stats, two_stats = one.backend.statistics(), two.backend.statistics()
        assert (two_stats.routed_out, one_stats.routed_in) == (1, 1)
        assert (one_stats.owned, two_stats.owned) == (1, 0)


async def test_a_stopped_owner_saves_and_the_next_ask_anywhere_activates_from_the_store(
    redis_url: str, namespace: str
) -> None:
    async with node(redis_url, namespace) as two:
        async with node(redis_url, namespace) as one:
            await one.ask("session", 5, default=fresh)
        reply = await two.ask("session", 1, default=fresh)
        assert reply["n"] == 6
        assert len(two.workers()) == 1


async def test_many_callers_in_two_processes_apply_every_request_once_in_one_owner(
    redis_url: str, namespace: str
) -> None:
    async with (
        node(redis_url, namespace, durable=True) as one,
        node(redis_url, namespace, durable=True) as two,
    ):
        replies: list[int] = []

        async def caller(persist: trio_persist.Persist[Any, Any, Any], group: str) -> None:
            for _ in range(10):
                replies.append((await persist.ask(group, 1, default=fresh))["n"])

        async with trio.open_nursery() as nursery:
            for index in range(8):
                nursery.start_soon(caller, one if index % 2 else two, f"g{index % 3}")
        assert len(replies) == 80
        for group in ("g0", "g1", "g2"):
            total = (await one.ask(group, 0, default=fresh))["n"]
            assert total == sum(10 for i in range(8) if f"g{i % 3}" == group)
        workers = len(one.workers()) + len(two.workers())
        assert workers == 3


async def test_workers_must_be_process_or_cluster(redis_url: str) -> None:
    with pytest.raises(ValueError, match="workers must be"):
        RedisBackend(redis_url, workers="everywhere")


async def test_the_cluster_view_shows_each_workers_owner(redis_url: str, namespace: str) -> None:
    async with (
        node(redis_url, namespace) as one,
        node(redis_url, namespace) as two,
    ):
        await two.ask("session", 1, default=fresh)
        await one.ask("session", 1, default=fresh)  # routed to two
        digest = group_digest("session")  # how heartbeats name groups
        while True:  # until the next heartbeats (every 50 ms) show both processes
            nodes = await one.backend.cluster()
            if len(nodes) == 2 and any(digest in n.workers for n in nodes):
                break
            await trio.sleep(0.05)
        owner = [n for n in nodes if digest in n.workers]
        other = [n for n in nodes if digest not in n.workers]
        assert [n.statistics["workers"] for n in owner + other] == [1, 0]
        assert owner[0].node != other[0].node


async def test_get_worker_activates_here_under_the_lease_or_says_where_the_worker_lives(
    redis_url: str, namespace: str
) -> None:
    async with (
        node(redis_url, namespace) as one,
        node(redis_url, namespace) as two,
    ):
        worker = await one.get_worker("session", default=fresh)
        assert worker.state["n"] == 0
        assert (await two.ask("session", 2))["n"] == 2  # routed to it
        with pytest.raises(trio_persist.NoWorker, match="lives in another process"):
            await two.get_worker("session")
        assert one.backend.statistics().owned == 1


async def test_a_caller_that_gives_up_withdraws_its_request_if_it_has_not_started(
    redis_url: str, namespace: str
) -> None:
    release = trio.Event()
    ran: list[Any] = []

    async def gated(state: Any, request: Any) -> Any:
        ran.append(request)
        if request == "first":
            await release.wait()
        return state + 1

    def backend() -> RedisBackend:
        return RedisBackend(redis_url, namespace=namespace, lease_ttl=1.0, workers="cluster")

    async with (
        trio_persist.open_persist(gated, backend=backend()) as one,
        trio_persist.open_persist(gated, backend=backend()) as two,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(lambda: one.ask("g", "first", default=int))
        await eventually(lambda: ran == ["first"])
        worker = one.workers()[0]
        with trio.move_on_after(0.5):  # queued behind "first" at its owner: gives up
            await two.ask("g", "given up")
        assert one.backend.statistics().routed_in == 1
        await eventually(lambda: not worker.statistics().queued)  # the owner heard it
        release.set()
        assert await two.ask("g", "after") == 2
    assert ran == ["first", "after"], ran


async def test_a_full_inbox_makes_callers_wait_for_room_then_fail_within_the_timeout(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_persist.redis._workers as placement

    monkeypatch.setattr(placement, "INBOX_LIMIT", -1)  # always full: nothing pushed
    async with (
        node(redis_url, namespace) as one,
        node(redis_url, namespace, redis_timeout=0.5) as two,
    ):
        await one.ask("session", 1, default=fresh)
        with pytest.raises(trio_persist.BackendUnavailable, match="did not make room"):
            await two.ask("session", 1)  # after waiting for room for the timeout
        assert one.backend.statistics().routed_in == 0


class Sessions:
    """A device whose group is the base: ``resolve(session, n)`` is *session*'s worker's."""

    async def resolve(self, state: Any, request: Any) -> Any:
        if isinstance(state, str):  # a flight: resolved against the base itself
            return request
        return await counter(state, request)

    def group(self, base: Any, request: Any) -> Any:
        return base


@asynccontextmanager
async def sessions(url: str, namespace: str) -> AsyncIterator[trio_persist.Persist[Any, Any, Any]]:
    backend = RedisBackend(
        url, namespace=namespace, lease_ttl=1.0, workers="cluster", heartbeat=None
    )
    store = RedisStore(url, namespace=namespace + ":states")
    async with trio_persist.open_persist(
        Sessions(), backend=backend, store=store, worker_timeout=60
    ) as persist:
        yield persist


async def test_a_resolve_from_another_process_is_served_by_the_groups_worker_there(
    redis_url: str, namespace: str
) -> None:
    async with sessions(redis_url, namespace) as one, sessions(redis_url, namespace) as two:
        await one.ask("session", 1, default=fresh)
        reply = await two.resolve("session", 2)  # routed: one's worker applies it
        assert reply["n"] == 3
        assert (await one.ask("session", 0))["n"] == 3
        assert (len(one.workers()), len(two.workers())) == (1, 0)
        assert two.backend.statistics().routed_out == 1


async def test_a_resolve_of_a_group_nobody_owns_runs_here_as_a_flight(
    redis_url: str, namespace: str
) -> None:
    async with sessions(redis_url, namespace) as one, sessions(redis_url, namespace) as two:
        assert await two.resolve("nobody's", 2) == 2  # no worker anywhere: a flight here
        assert (one.backend.statistics().routed_in, two.backend.statistics().routed_out) == (0, 0)
        assert two.workers() == () == one.workers()


async def test_a_resolve_in_cluster_mode_costs_the_round_trips_of_a_flight_without_placement(
    redis_url: str, namespace: str
) -> None:
    async def trips(workers: str, request: Any) -> int:
        backend = RedisBackend(redis_url, namespace=namespace, workers=workers, heartbeat=None)
        async with trio_persist.open_persist(Sessions(), backend=backend) as persist:
            before = backend.statistics().round_trips
            assert await persist.resolve(f"{workers}'s", request) == request
            return backend.statistics().round_trips - before

    # The worker lease is looked at by the flight's own acquire: acquire, commit.
    assert await trips("cluster", 1) == await trips("process", 1) == 2


async def test_identical_routed_resolves_share_one_execution_at_a_static_worker(
    redis_url: str, namespace: str
) -> None:
    release = trio.Event()
    ran: list[Any] = []

    class Gated(Sessions):
        async def resolve(self, state: Any, request: Any) -> Any:
            ran.append(request)
            if request == "first":
                await release.wait()
            return request

    def backend() -> RedisBackend:
        return RedisBackend(redis_url, namespace=namespace, lease_ttl=1.0, workers="cluster")

    async with contextlib.AsyncExitStack() as stack:
        one, *others = [
            await stack.enter_async_context(
                trio_persist.open_persist(Gated(), backend=backend(), static_worker=True)
            )
            for _ in range(4)
        ]
        nursery = await stack.enter_async_context(trio.open_nursery())
        await one.start_worker("base", "g")
        nursery.start_soon(one.resolve, "g", "first")
        await eventually(lambda: ran == ["first"])
        replies: list[Any] = []

        async def again(persist: trio_persist.Persist[Any, Any, Any]) -> None:
            replies.append(await persist.resolve("g", "same"))

        for persist in others:  # (identical resolves in one process share its flight)
            nursery.start_soon(again, persist)
        await eventually(lambda: one.backend.statistics().routed_in == 3)
        release.set()
    assert replies == ["same"] * 3
    assert ran == ["first", "same"]


async def test_start_worker_for_a_group_owned_elsewhere_says_which_process_owns_it(
    redis_url: str, namespace: str
) -> None:
    async with sessions(redis_url, namespace) as one, sessions(redis_url, namespace) as two:
        await one.start_worker(fresh(), "session")
        assert one.backend.statistics().owned == 1
        with pytest.raises(trio_persist.NoWorker, match=r"lives in another process \(.+:\d+:"):
            await two.start_worker(fresh(), "session")
        assert (await two.ask("session", 4))["n"] == 4  # routed to the started worker


async def test_a_started_worker_releases_its_lease_when_it_stops(
    redis_url: str, namespace: str
) -> None:
    async with sessions(redis_url, namespace) as one, sessions(redis_url, namespace) as two:
        worker = await one.start_worker(fresh(), "session")
        await worker.stop()
        await eventually(lambda: one.backend.statistics().owned == 0)
        while True:  # until its release (a round trip) has landed
            with contextlib.suppress(trio_persist.NoWorker):
                await two.start_worker(fresh(), "session")  # the group is free: it moves here
                break
            await trio.sleep(0.01)
        assert two.backend.statistics().owned == 1


class Freezing:
    """Logs each execution as it starts with the token of the worker lease it runs
    under; ``"freeze"`` waits for `go`, then blocks the whole process (no task
    runs, the renewal loop neither: a pause, as SIGSTOP makes one) past the TTL."""

    def __init__(self, backend: RedisBackend, seconds: float) -> None:
        self.backend, self.seconds = backend, seconds
        self.runs: list[tuple[str, int]] = []
        self.go = trio.Event()
        self.holding = self.thawed = False

    def log(self, request: str) -> None:
        owned = self.backend._placement.owned.values()  # a test's view
        self.runs.append((request, next(o.token for o in owned if o.group == "g")))

    async def pause(self) -> None:
        self.holding = True
        await self.go.wait()
        time.sleep(self.seconds)  # noqa: ASYNC251 - the pause, on purpose
        self.thawed = True

    async def resolve(self, state: Any, request: Any) -> Any:
        self.log(request)
        if request == "freeze" and not self.thawed:
            await self.pause()
        await trio.lowlevel.checkpoint()
        return state + 1


class FreezingLoop(Freezing):
    """The same device, served by a custom loop (`Worker.receive`, `Worker.execute`)."""

    async def serve(self, worker: trio_persist.Worker[Any]) -> None:
        while (request := await worker.receive()) is not None:
            await worker.execute(request)


class FreezingBatches(Freezing):
    """A batching loop that answers requests itself, paused between the first request
    of a batch and the rest it takes (`Worker.receive_nowait`)."""

    async def serve(self, worker: trio_persist.Worker[Any]) -> None:
        while (first := await worker.receive()) is not None:
            if first.request == "freeze" and not self.thawed:
                await self.pause()
            batch = [first]
            with contextlib.suppress(trio.WouldBlock):
                while True:
                    batch.append(worker.receive_nowait())
            for request in batch:
                self.log(request.request)
                request.reply(worker.state)


@pytest.mark.parametrize("device", [Freezing, FreezingLoop, FreezingBatches])
async def test_a_worker_woken_past_its_lease_starts_nothing_more_under_it(
    redis_url: str, namespace: str, device: type[Freezing]
) -> None:
    ttl = 0.5
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=ttl, workers="cluster")
    freezing = device(backend, 2 * ttl)
    async with trio_persist.open_persist(freezing, backend=backend) as persist:
        await persist.ask("g", "first", default=int)
        async with trio.open_nursery() as nursery:
            for request in ("freeze", "b0", "b1", "b2"):
                nursery.start_soon(functools.partial(persist.ask, "g", request, default=int))
                await eventually(lambda: freezing.holding)  # "freeze" is served first
            await eventually(lambda: persist.workers()[0].statistics().queued == 3)
            freezing.go.set()
    tokens = dict(freezing.runs)
    assert sorted(tokens) == sorted(request for request, _ in freezing.runs)  # once each
    # "freeze" was taken before the pause; the requests queued behind it went back
    # and were asked again, under the group's next lease.
    assert tokens["first"] == tokens["freeze"] < tokens["b0"] == tokens["b1"] == tokens["b2"]


async def test_a_worker_lease_is_trusted_until_its_expiry_bound_less_the_clocks_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Nothing renews it here: the lease as a process woken from a pause finds it.
    ttl = 10.0
    renewer = Renewer(Link("Redis nowhere", 1.0, Counters()), ttl, Counters(), Throttle())
    sent = trio.current_time()
    held = renewer.hold("lease", "id:1:node", 1, sent)
    bound = sent + ttl - (ttl / 100 + 0.002)  # the server's clock may run 1% faster
    await trio.sleep_until(bound - 0.001)
    assert held.valid()
    await trio.sleep_until(bound + 0.001)
    assert not held.valid()  # before its renewal loop has even looked
