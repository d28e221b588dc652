"""A separate process for the cross-process tests: a persist on the Redis backend.

    python redis_worker.py URL NAMESPACE MODE CALLERS

MODE ``callers``: CALLERS tasks resolve one key; the device counts its
executions in Redis and waits for the test's ``go``; the process reports
``ready`` once its flight has reached Redis, and prints the results as JSON.
MODE ``hang``: one caller leads and hangs (to be SIGKILLed).
MODE ``rounds``: for 3 s, at every 100 ms boundary resolve CALLERS keys of that
round at once (a 20 ms device) and print the backend's counts as JSON (the
bench's synchronised rounds).
MODE ``follow``: resolve each request popped from ``go`` (until ``-1``) and push
``{"request", "value", "at"}`` (JSON; ``at`` from ``time.time()``) to ``answered``
when it is answered (the bench's follower in another process). An optional fifth
argument is the lease TTL (and timeout) in seconds.
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
                    value = await persist.resolve("base", request)
                    answer = {"request": request, "value": value, "at": time.time()}
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


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
