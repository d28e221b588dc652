"""One process of the cluster-workers load (tools/_bench_cluster.py).

    python _cluster_load.py URL NAMESPACE CALLERS GROUPS SECONDS [PROCESSES]

CALLERS tasks ask random groups of GROUPS (a 1 ms device) for SECONDS on a
persist with ``workers="cluster"``; prints ``{"ok", "errors", "slowest"}``.
The PROCESSES of one run start asking together and close together (barriers
in Redis): the figure is the steady state, not the asks that meet an owner
closing at the end, which wait for their next look at its lease.
With CALLERS 0, it owns group ``"g"`` (an instant device), prints ``ready``
and serves what is routed to it for SECONDS.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import coredis
import trio

import trio_persist
from trio_persist.redis import RedisBackend


async def device(state: Any, request: Any) -> Any:
    await trio.sleep(0.001)
    return state + 1


async def echo(state: Any, request: Any) -> Any:
    return request


async def own(url: str, namespace: str, seconds: float) -> None:
    backend = RedisBackend(url, namespace=namespace, workers="cluster", heartbeat=None)
    async with trio_persist.open_persist(echo, backend=backend, worker_timeout=600) as persist:
        await persist.ask("g", 0, default=int)
        print("ready", flush=True)
        await trio.sleep(seconds)


async def barrier(url: str, key: str, processes: int) -> None:
    """Wait until *processes* processes have reached *key*."""
    async with coredis.Redis.from_url(url) as client:
        await client.incr(key)
        await client.expire(key, 600)
        while int(await client.get(key) or 0) < processes:  # noqa: ASYNC110 - in Redis
            await trio.sleep(0.01)


async def main(
    url: str, namespace: str, callers: int, groups: int, seconds: float, processes: int
) -> None:
    backend = RedisBackend(url, namespace=namespace, workers="cluster", heartbeat=None)
    counts: dict[str, Any] = {"ok": 0, "errors": 0, "slowest": 0.0}
    async with trio_persist.open_persist(device, backend=backend, worker_timeout=600) as persist:
        await barrier(url, namespace + ":started", processes)
        end = trio.current_time() + seconds

        async def caller() -> None:
            while trio.current_time() < end:
                began = trio.current_time()
                try:
                    await persist.ask(f"g{random.randrange(groups)}", 1, default=int)
                except Exception as exc:
                    counts["errors"] += 1
                    counts.setdefault("kinds", {})[repr(exc)[:120]] = 1
                else:
                    counts["ok"] += 1
                counts["slowest"] = max(counts["slowest"], trio.current_time() - began)

        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        await barrier(url, namespace + ":finished", processes)  # serving the others till then
    print(json.dumps(counts))


if __name__ == "__main__":
    url, namespace, callers, groups, seconds = sys.argv[1:6]
    processes = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    if int(callers):
        trio.run(main, url, namespace, int(callers), int(groups), float(seconds), processes)
    else:
        trio.run(own, url, namespace, float(seconds))
