"""Cycles across processes through static workers, `spawn_worker` resolves and
flights many workers wait for (real processes, real Redis)."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from scripted_node import open_scripted

NODE = str(Path(__file__).with_name("scripted_node.py"))
WITHIN = 20.0


@asynccontextmanager
async def scripted_nodes(
    url: str, namespace: str, here: list[str], there: list[str], **options: Any
) -> AsyncIterator[tuple[Any, trio_persist.Persist[Any, Any, Any], Any]]:
    async with coredis.Redis.from_url(url) as control, trio.open_nursery() as nursery:
        command = [sys.executable, NODE, url, namespace, ",".join(there)]
        command += ["allow_infinite"] if options.get("allow_infinite") else []
        process = await nursery.start(functools.partial(trio.run_process, command, check=False))
        try:
            with trio.fail_after(WITHIN):
                assert await control.blpop([f"{namespace}:ready"], timeout=WITHIN)
            device, opening = open_scripted(url, namespace, control, **options)
            async with opening as persist:
                device.persist = persist
                for group in here:
                    await persist.ask(group, {"op": "done"}, default=dict)
                yield control, persist, process
        finally:
            process.kill()


async def until_node(persist: Any, pid: int, seen: Callable[[Any], bool]) -> None:
    """Until the cluster view's record of the process *pid* satisfies *seen*."""
    with trio.fail_after(WITHIN):
        while not any(seen(n) for n in await persist.backend.cluster() if n.pid == pid):  # noqa: ASYNC110 - another process's record
            await trio.sleep(0.1)


async def crossing(
    control: Any,
    namespace: str,
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    placed: Callable[[], Awaitable[None]],
) -> tuple[dict[str, Any], bool]:
    """Run *first* until it waits at the gate, then *second* until *placed*
    returns, then open the gate: ``(each one's outcome or error, whether
    both were answered within the bound)``."""
    outcomes: dict[str, Any] = {}

    async def run(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            outcomes[name] = await call()
        except Exception as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "first", first)
        with trio.fail_after(WITHIN):
            assert await control.blpop([f"{namespace}:at-gate"], timeout=WITHIN)
        nursery.start_soon(run, "second", second)
        await placed()
        await control.lpush(f"{namespace}:gate", ["open"])
        with trio.move_on_after(WITHIN) as waited:
            while len(outcomes) < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return outcomes, not waited.cancelled_caught


@pytest.mark.parametrize("spawn", [False, True], ids=["through-a-flight", "no-flight"])
async def test_a_cycle_closing_by_a_join_at_a_static_worker_elsewhere_is_refused(
    redis_url: str, namespace: str, spawn: bool
) -> None:
    # h's worker (there, static) serves R1 and waits at the gate; f's worker
    # here resolves h with R1 (joined there into R1, its chain dropped with
    # it), then R1 asks f: f's worker waits for h's, so that ask is refused.
    r1 = {"op": "gate", "then": {"op": "ask", "group": "f", "req": {"op": "done"}}}
    ask_f = {"op": "resolve", "group": "h", "req": r1, "spawn": spawn}
    async with scripted_nodes(redis_url, namespace, ["f"], ["h"]) as (control, persist, process):
        outcomes, answered = await crossing(
            control,
            namespace,
            lambda: persist.resolve("h", r1, spawn_worker=True),
            lambda: persist.ask("f", ask_f, default=dict),
            # Until h's owner has joined f's request into R1 (its statistics).
            lambda: until_node(persist, process.pid, lambda n: n.statistics.get("deduplicated")),
        )
        assert answered, f"deadlocked for {WITHIN}s: {outcomes}"
        assert isinstance(outcomes["second"], trio_persist.InfiniteRecursion)


async def test_with_allow_infinite_nothing_run_for_a_cycle_answers_a_later_caller(
    redis_url: str, namespace: str
) -> None:
    # h's worker (there) resolves g here, whose worker resolves h with REQ: a
    # cycle found by the request its flight would send is refused, never run
    # on the base in a shared flight, so nothing of it lingers for a later
    # resolve of h with REQ, which h's worker answers.
    req = {"op": "done"}
    start = {"op": "resolve", "group": "g", "req": {"op": "resolve", "group": "h", "req": req}}
    async with scripted_nodes(
        redis_url, namespace, ["g"], ["h"], allow_infinite=True, linger=30.0
    ) as (_, persist, _process):
        with trio.fail_after(WITHIN), pytest.raises(trio_persist.PersistError) as refused:
            await persist.ask("h", start, default=dict)
        assert "InfiniteRecursion" in repr(refused.value) or isinstance(
            refused.value, trio_persist.InfiniteRecursion
        )
        with trio.fail_after(WITHIN):
            plain = await persist.resolve("h", req)
        assert plain["ran"] == "at-worker", plain


@pytest.mark.parametrize("allow_infinite", [False, True])
async def test_many_workers_here_resolving_one_request_of_a_worker_elsewhere_are_answered(
    redis_url: str, namespace: str, allow_infinite: bool
) -> None:
    # No cycle: 33 workers here resolve one request of x, whose worker is in
    # the other process; they share one flight, whose chain names them all.
    fan = 33
    barrier = trio.Event()
    arrived = 0

    class Fan:
        persist: Any = None

        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, state: Any, request: Any) -> Any:
            nonlocal arrived
            if request.get("op") != "fan":
                return {"done": True}
            arrived += 1
            if arrived == fan:
                barrier.set()
            await barrier.wait()
            return await self.persist.resolve("x", {"op": "done"})

    async with coredis.Redis.from_url(redis_url) as control, trio.open_nursery() as nursery:
        command = [sys.executable, NODE, redis_url, namespace, "x"]
        process = await nursery.start(functools.partial(trio.run_process, command, check=False))
        try:
            with trio.fail_after(WITHIN):
                assert await control.blpop([f"{namespace}:ready"], timeout=WITHIN)
            from cycle_node import backend

            device = Fan()
            async with trio_persist.open_persist(
                device,
                backend=backend(redis_url, namespace),
                worker_timeout=600,
                allow_infinite=allow_infinite,
            ) as persist:
                device.persist = persist
                got: list[Any] = []

                async def one(index: int) -> None:
                    try:
                        got.append(await persist.ask(f"w{index}", {"op": "fan"}, default=dict))
                    except Exception as exc:
                        got.append(exc)

                with trio.fail_after(WITHIN):
                    async with trio.open_nursery() as callers:
                        for index in range(fan):
                            callers.start_soon(one, index)
                errors = [g for g in got if isinstance(g, Exception)]
                assert not errors, f"{len(errors)} of {fan} refused: {errors[0]!r}"
                ran = [g.get("ran") for g in got]
                assert ran == ["at-worker"] * fan, ran
        finally:
            process.kill()


@pytest.mark.parametrize("op", ["ask", "resolve-spawn"])
async def test_crossing_requests_of_two_workers_are_refused_not_deadlocked(
    redis_url: str, namespace: str, op: str
) -> None:
    # h's worker (there) serves R1 and waits at the gate. f's worker here then
    # sends its own request to h (an ask, or a resolve that cannot join R1):
    # it queues behind R1 there. The gate opens and R1 asks f: f's worker
    # waits for h's, which waits for f, so that ask is refused.
    r1 = {"op": "gate", "then": {"op": "ask", "group": "f", "req": {"op": "done"}}}
    if op == "ask":
        from_f = {"op": "ask", "group": "h", "req": {"op": "other"}}
    else:
        from_f = {"op": "resolve", "group": "h", "req": {"op": "other"}, "spawn": True}
    async with scripted_nodes(redis_url, namespace, ["f"], ["h"]) as (control, persist, process):
        outcomes, answered = await crossing(
            control,
            namespace,
            lambda: persist.ask("h", r1, default=dict),
            lambda: persist.ask("f", from_f, default=dict),
            # Until f's request is queued behind R1 there.
            lambda: until_node(
                persist, process.pid, lambda n: any(g.get("queued") for g in n.snapshot)
            ),
        )
        assert answered, f"deadlocked for {WITHIN}s: {outcomes}"
        assert any(
            isinstance(o, trio_persist.InfiniteRecursion) or "InfiniteRecursion" in repr(o)
            for o in outcomes.values()
        ), outcomes
