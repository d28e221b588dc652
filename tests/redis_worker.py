"""A separate process for the cross-process tests: a persist on the Redis backend.

    python redis_worker.py URL NAMESPACE MODE CALLERS

MODE ``callers``: CALLERS tasks resolve one key; the device counts its
executions in Redis and waits for the test's ``go``; the process reports
``ready`` once its flight has reached Redis, and prints the results as JSON.
MODE ``hang``: one caller leads and hangs (to be SIGKILLed).
MODE ``rounds``: for 3 s, at every 100 ms boundary resolve CALLERS keys of that
round at once (a 20 ms device) and print the backend's counts as JSON (the
bench's synchronised rounds).
MODE ``offered``: for SECONDS (a fifth argument, default 3) start CALLERS calls a
second on keys of their own (an instant device), a task each, then look until a
call succeeds again; print ``{"offered", "ok", "good", "errors", "shed", "p99",
"recovered"}`` as JSON (``good``: answered with a value within the timeout; the
bench's goodput). MODE ``shed``: the same, but each arrival first asks the door
(``persist.overloaded()``) and is shed (counted in ``shed``, no task) while it
says so, as a service's accept loop would; the generator yields once every
``LET_IN_PER_YIELD`` arrivals it lets in.
MODE ``loop``: CALLERS tasks each loop over CALLERS keys (from a key of its own,
in the same order) for SECONDS with ``linger=0.05`` and a 20 ms device; print
``{"calls", "executions"}`` as JSON (the bench's cross-process deduplication).
MODE ``closed``: CALLERS tasks call in a loop on keys of their own for SECONDS;
print the calls answered per second (the bench's capacity).
MODE ``follow``: resolve each request popped from ``go`` (until ``-1``) and push
``{"request", "value", "at", "seen"}`` (JSON; ``at``: ``time.time()`` as the
caller got its value; ``seen``: the backend's takeovers, subscription and
failures) to ``answered`` when it is answered, and its number to ``following``
once it follows a leader (the bench's follower in another process). An
optional fifth argument is the lease TTL (and timeout) in seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import coredis
import trio

import trio_persist
from trio_persist.redis import RedisBackend


async def main(url: str, namespace: str, mode: str, callers: int) -> None:
    async with coredis.Redis.from_url(url) as control:

        async def device(base: Any, request: Any) -> Any:
            await control.incr(f"{namespace}:executions")
            if mode == "hang":
                await control.rpush(f"{namespace}:leading", [str(os.getpid())])
                await trio.sleep_forever()
            await control.blpop([f"{namespace}:go"], timeout=30)
            return {"pid": os.getpid(), "request": request}

        backend = RedisBackend(url, namespace=namespace, lease_ttl=1.0)
        if mode in ("offered", "shed", "closed", "loop"):
            seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
            load = {"offered": offered, "shed": shedding, "closed": closed, "loop": looping}[mode]
            print(json.dumps(await load(url, namespace, callers, seconds)))
            return
        if mode == "rounds":
            await rounds(url, namespace, callers)
            return
        if mode == "follow":
            ttl = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
            backend = RedisBackend(url, namespace=namespace, lease_ttl=ttl, timeout=min(ttl, 5.0))
            async with trio_persist.open_persist(device, backend=backend) as persist:
                while True:
                    _, raw = await control.blpop([f"{namespace}:go"], timeout=30)
                    request = int(raw)
                    if request < 0:
                        return
                    value, at = await _resolve_and_report(
                        persist, backend, control, namespace, request
                    )
                    answer = {"request": request, "value": value, "at": at, "seen": seen(backend)}
                    await control.rpush(f"{namespace}:answered", [json.dumps(answer)])
        async with trio_persist.open_persist(device, backend=backend) as persist:
            results: list[Any] = []

            async def call() -> None:
                results.append(await persist.resolve("shared-base", "shared-request"))

            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(call)
                while True:
                    stats = backend.statistics()
                    if stats.leading + stats.following + stats.led + stats.followed:
                        break
                    await trio.sleep(0.01)
                await control.rpush(f"{namespace}:ready", [str(os.getpid())])
    print(json.dumps(results))


async def _resolve_and_report(
    persist: trio_persist.Persist,
    backend: RedisBackend,
    control: coredis.Redis[bytes],
    namespace: str,
    request: int,
) -> tuple[Any, float]:
    """Resolve *request*; push its number to ``following`` once this process
    follows it (its acquire answered: a pause from then on cannot catch a round
    trip half done). Returns the value and when the caller held it
    (``time.time()``, read by the caller itself: the nursery's exit is one
    more task switch, not the follower's latency)."""
    values: list[tuple[Any, float]] = []
    answered = trio.Event()

    async def call() -> None:
        value = await persist.resolve("base", request)
        values.append((value, time.time()))
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        while backend.statistics().following == 0:  # a count, looked at every 5 ms
            with trio.move_on_after(0.005):
                await answered.wait()  # answered without following: at once
            if answered.is_set():
                return values[0]
        await control.rpush(f"{namespace}:following", [str(request)])
    return values[0]


def seen(backend: RedisBackend) -> dict[str, Any]:
    """What the backend went through, for a test's failure message."""
    stats = backend.statistics()
    return {
        "takeovers": stats.takeovers,
        "subscribed": stats.subscribed,
        "unavailable": stats.unavailable,
        "corrupt": stats.corrupt,
    }


async def rounds(url: str, namespace: str, keys: int) -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(0.02)
        return request

    backend = RedisBackend(url, namespace=namespace)
    slowest = 0.0
    async with trio_persist.open_persist(device, backend=backend) as persist:
        end = time.time() + 3.0
        while time.time() < end:
            epoch = int(time.time() * 10) + 1
            await trio.sleep(epoch / 10 - time.time())
            start = time.time()
            async with trio.open_nursery() as nursery:
                for key in range(keys):
                    nursery.start_soon(persist.resolve, "base", f"{epoch}:{key}")
            slowest = max(slowest, time.time() - start)
    stats = backend.statistics()
    print(json.dumps({"led": stats.led, "followed": stats.followed, "slowest": slowest}))


TIMEOUT = 1.0  # the backend's step timeout here: a value later than this is not good
# Arrivals let in at the door between two yields of the generator: the door
# cannot see calls spawned that have not reached the persist yet, so without a
# yield a whole batch (5 ms of arrivals) passes an open door at once.
LET_IN_PER_YIELD = 64


async def instant(base: Any, request: Any) -> Any:
    return request


async def shedding(url: str, namespace: str, rate: int, seconds: float) -> dict[str, Any]:
    """`offered`, with each arrival shed at the door while the persist is overloaded."""
    return await offered(url, namespace, rate, seconds, door=True)


async def offered(
    url: str, namespace: str, rate: int, seconds: float, *, door: bool = False
) -> dict[str, Any]:
    """Open-loop load: *rate* calls a second whatever happens to them; with
    *door*, an arrival is shed before its task while the persist is overloaded."""
    backend = RedisBackend(url, namespace=namespace, timeout=TIMEOUT, heartbeat=None)
    pid = os.getpid()
    ok, good, errors, late, shed, durations = 0, 0, 0, 0, 0, []
    admitted = 0
    async with trio_persist.open_persist(instant, backend=backend) as persist:

        async def call(n: int) -> None:
            nonlocal ok, good, errors, late
            start = trio.current_time()
            try:
                await persist.resolve("base", f"{pid}:{n}")
            except trio_persist.PersistError:
                errors += 1
                late += trio.current_time() - start > TIMEOUT
                return
            elapsed = trio.current_time() - start
            ok += 1
            durations.append(elapsed)
            good += elapsed <= TIMEOUT

        started = 0
        async with trio.open_nursery() as nursery:
            begin = trio.current_time()
            while (now := trio.current_time()) < begin + seconds:
                due = int((now - begin) * rate)
                while started < due:
                    started += 1
                    if not door:
                        nursery.start_soon(call, started)
                    elif persist.overloaded():
                        shed += 1  # answered "busy" at once: no task, no call
                    else:
                        nursery.start_soon(call, started)
                        admitted += 1
                        if admitted % LET_IN_PER_YIELD == 0:
                            # As an accept loop yields at each accept: the calls
                            # let in reach the persist, and the door sees them.
                            await trio.lowlevel.checkpoint()
                await trio.sleep(0.005)
            # The load stops: how soon does a new call succeed in time again?
            recovered = await _recovery(persist, f"{pid}:probe", trio.current_time())
    durations.sort()
    p99 = durations[int(len(durations) * 0.99)] if durations else None
    return {
        "offered": started / seconds,
        "ok": ok,
        "good": good / seconds,
        "errors": errors,
        "late_errors": late,
        "shed": shed,
        "p99": p99,
        "recovered": recovered,
        "rejected": backend.statistics().rejected,
    }


async def _recovery(persist: Any, key: str, stopped: float) -> float:
    """Seconds from the end of the load (its calls may still be in progress) to a
    new call that succeeds within the timeout."""
    n = 0
    while True:
        start = trio.current_time()
        try:
            await persist.resolve("base", f"{key}:{n}")
        except trio_persist.PersistError:
            pass
        else:
            if trio.current_time() - start <= TIMEOUT:
                return trio.current_time() - stopped
        n += 1


async def looping(url: str, namespace: str, callers: int, seconds: float) -> dict[str, Any]:
    """*callers* tasks looping over as many keys, shared with the other processes."""
    executions = calls = 0

    async def device(base: Any, request: Any) -> Any:
        nonlocal executions
        executions += 1
        await trio.sleep(0.02)
        return request

    backend = RedisBackend(url, namespace=namespace, heartbeat=None)
    async with trio_persist.open_persist(device, backend=backend, linger=0.05) as persist:
        deadline = trio.current_time() + seconds

        async def loop(caller: int) -> None:
            nonlocal calls
            n = caller
            while trio.current_time() < deadline:
                await persist.resolve("base", n % callers)
                calls += 1
                n += 1

        async with trio.open_nursery() as nursery:
            for caller in range(callers):
                nursery.start_soon(loop, caller)
    return {"calls": calls, "executions": executions}


async def closed(url: str, namespace: str, callers: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load: *callers* tasks call one after another."""
    backend = RedisBackend(url, namespace=namespace, timeout=TIMEOUT, heartbeat=None)
    pid = os.getpid()
    answered = 0
    async with trio_persist.open_persist(instant, backend=backend) as persist:
        deadline = trio.current_time() + seconds

        async def loop(caller: int) -> None:
            nonlocal answered
            n = 0
            while trio.current_time() < deadline:
                n += 1
                try:
                    await persist.resolve("base", f"{pid}:{caller}:{n}")
                except trio_persist.PersistError:
                    continue
                answered += 1

        async with trio.open_nursery() as nursery:
            for caller in range(callers):
                nursery.start_soon(loop, caller)
    return {"per_second": answered / seconds}


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
