"""The cluster-workers figures of tools/bench.py (``--redis``).

A routed ask (the group's worker in another backend) beside a bare GET in the
same run (bar: device time + 3 round trips, median); N processes x M callers
asking random groups of 1,000 (a 1 ms device; bar: 2,000 asks/s, nothing hung
or lost); the failover of a SIGKILLed owner beside its bound.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import coredis
import trio

import trio_persist
from trio_persist.redis import RedisBackend

TOOLS = Path(__file__).resolve().parent
TESTS = TOOLS.parent / "tests"


async def echo(state: Any, request: Any) -> Any:
    return request


async def routed_ask(url: str, n: int) -> tuple[float, float]:
    """Median microseconds of a routed ask (the owner in another process) and of
    a bare GET, interleaved."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    owner = await trio.lowlevel.open_process(
        [sys.executable, str(TOOLS / "_cluster_load.py"), url, namespace, "0", "1", "120"],
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None
    await owner.stdout.receive_some()  # "ready": it owns the group
    backend = RedisBackend(url, namespace=namespace, workers="cluster", heartbeat=None)
    asks, gets = [], []
    async with (
        coredis.Redis.from_url(url) as client,
        trio_persist.open_persist(echo, backend=backend, worker_timeout=600) as caller,
    ):
        for i in range(n):
            began = time.perf_counter()
            await client.get("bench:key")
            gets.append(time.perf_counter() - began)
            began = time.perf_counter()
            await caller.ask("g", i)
            asks.append(time.perf_counter() - began)
    owner.kill()
    await owner.wait()
    assert backend.statistics().routed_out == n
    return statistics.median(asks) * 1e6, statistics.median(gets) * 1e6


def load(url: str, processes: int, callers: int, seconds: float) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(TOOLS / "_cluster_load.py"),
                url,
                namespace,
                str(callers),
                "1000",
                str(seconds),
                str(processes),
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    results = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in procs]
    return {
        "ok": sum(r["ok"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "slowest": max(r["slowest"] for r in results),
        "rate": sum(r["ok"] for r in results) / seconds,
    }


async def failover(url: str) -> float:
    """Seconds from SIGKILLing an owner mid-request to the answer (lease_ttl 1, timeout 1)."""
    sys.path.insert(0, str(TESTS))
    from cluster_helpers import Logged, fresh

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    with trio.fail_after(60):
        async with coredis.Redis.from_url(url) as control:
            owner = await trio.lowlevel.open_process(
                [sys.executable, str(TESTS / "cluster_owner.py"), url, namespace, "1.0"]
            )
            try:
                await control.blpop([f"{namespace}:ready"], timeout=30)
                logged = Logged(control, namespace, url, owner=False)
                backend = RedisBackend(
                    url, namespace=namespace, lease_ttl=1.0, timeout=1.0, workers="cluster"
                )
                async with trio_persist.open_persist(
                    logged, backend=backend, store=logged, durable=True
                ) as persist:
                    hit: list[float] = []

                    async def kill() -> None:
                        raw = await control.blpop([f"{namespace}:started"], timeout=30)
                        os.kill(int(raw[1]), signal.SIGKILL)
                        hit.append(trio.current_time())

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(kill)
                        await persist.ask("g", {"id": "slow", "slow": 30}, default=fresh)
                    return trio.current_time() - hit[0]
            finally:
                with trio.CancelScope(shield=True):
                    owner.kill()
                    await owner.wait()


def cluster_figures(url: str, *, quick: bool) -> bool:
    print("\nWorkers across the cluster (workers='cluster')")
    ask, get = trio.run(routed_ask, url, 300 if quick else 2000)
    print(
        f"  routed ask (instant device, owner in another backend): p50 {ask:.0f} us, "
        f"{ask / get:.1f} bare GET round trips (GET p50 {get:.0f} us; bar 3)"
    )
    ok = ask / get <= 3.0
    figures = load(url, 4, 50, 2.0 if quick else 5.0)
    print(
        f"  4 processes x 50 callers, random groups of 1,000, 1 ms device: "
        f"{figures['rate']:.0f} asks/s (bar 2,000), {figures['errors']} errors, "
        f"slowest {figures['slowest'] * 1000:.0f} ms"
    )
    ok &= figures["rate"] >= 2000 and figures["errors"] == 0
    seconds = trio.run(failover, url)
    bound = 1.0 + 1.0 / 3 + 1.0
    print(
        f"  SIGKILLed owner mid-request: answered {seconds:.2f} s after the kill "
        f"(bound lease_ttl + lease_ttl/3 + timeout = {bound:.2f} s, lease_ttl = timeout = 1)"
    )
    return ok and seconds <= bound + 1.0
