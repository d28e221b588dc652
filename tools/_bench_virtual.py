"""The virtual workers' figures for tools/bench.py.

* ``ask`` to a live worker, beside ``resolve`` to the same kind of worker (the
  worker round trip), in interleaved rounds of one run.
* An activation from a `MemoryStore` (the state loaded, then one request),
  beside ``start_worker`` with the state in hand and one ``resolve``: what
  the engine adds to start a worker on demand is the load, and the load is
  the store's (its seal and JSON check) rather than the engine's.
* 100,000 groups asked once each, ``max_workers=1000``, a `FileStore`: the
  process's memory while it runs (bounded by the live and the saving
  workers, not by the groups), and every state on disk at the end.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio

import trio_persist
from trio_persist import stores


class Adder:
    """The state is a number; each request adds to it."""

    def group(self, base: Any, request: Any) -> Any:
        return "counter"

    async def resolve(self, state: Any, request: Any) -> Any:
        return state + request


# What `_round_trips` reads (`tools/bench.py --check` reads CPU time instead).
clock: Callable[[], float] = time.perf_counter


def _round_trips(n: int, use_ask: bool) -> float:
    out: list[float] = []

    async def main() -> None:
        async with trio_persist.open_persist(Adder()) as persist:
            if use_ask:
                await persist.ask("counter", 0, default=int)
            else:
                await persist.start_worker(0)
            gc.collect()
            start = clock()
            if use_ask:
                for _ in range(n):
                    await persist.ask("counter", 1)
            else:
                for _ in range(n):
                    await persist.resolve(0, 1)
            out.append((clock() - start) / n * 1e6)

    trio.run(main)
    return out[0]


def _activations(n: int, use_ask: bool) -> float:
    """Microseconds per group: *n* groups each started with its state and asked once."""
    out: list[float] = []

    async def main() -> None:
        store = stores.MemoryStore()
        for group in range(n):
            await store.save(group, group)
        async with trio_persist.open_persist(
            Adder(), store=store if use_ask else None, shutdown_grace=60
        ) as persist:
            gc.collect()
            start = time.perf_counter()
            if use_ask:
                for group in range(n):
                    await persist.ask(group, 1)
            else:
                for group in range(n):
                    await persist.start_worker(group, group=group)
                    await persist.resolve(group, 1)
            out.append((time.perf_counter() - start) / n * 1e6)

    trio.run(main)
    return out[0]


def _interleaved(
    rounds: int, ours: Callable[[], float], floor: Callable[[], float]
) -> tuple[float, float]:
    ours_samples, floor_samples = [], []
    for _ in range(rounds):
        ours_samples.append(ours())
        floor_samples.append(floor())
    return statistics.median(ours_samples), statistics.median(floor_samples)


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def many_groups(groups: int, max_workers: int, askers: int = 100) -> dict[str, Any]:
    """Ask *groups* groups once each; RSS growth sampled as it runs; files at the end."""
    result: dict[str, Any] = {}

    async def main(directory: str) -> None:
        gc.collect()
        before = _rss_kib()
        samples: list[tuple[int, int]] = []
        asked = 0
        started = time.perf_counter()
        async with trio_persist.open_persist(
            Adder(), store=stores.FileStore(directory), max_workers=max_workers
        ) as persist:

            async def asker(first: int) -> None:
                nonlocal asked
                for group in range(first, groups, askers):
                    await persist.ask(group, 1, default=int)
                    asked += 1

            async def watch() -> None:
                peak = 0
                while True:
                    live = len(persist.workers())
                    peak = max(peak, live)
                    samples.append((asked, _rss_kib() - before))
                    result["peak_workers"] = peak
                    await trio.sleep(0.25)

            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch)
                async with trio.open_nursery() as nursery:
                    for first in range(askers):
                        nursery.start_soon(asker, first)
                watcher.cancel_scope.cancel()
        result["seconds"] = time.perf_counter() - started
        result["samples"] = samples
        result["stats"] = persist.statistics()
        names = os.listdir(directory)
        result["files"] = sum(1 for name in names if name.endswith(".state"))

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, directory)
    return result


def virtual_figures(row: Callable[..., bool], *, quick: bool = False, runs: int = 5) -> bool:
    """Print the virtual workers' rows; False if one is over its bar."""
    ok = True
    print("\nVirtual workers (ask)")
    n = 2_000 if quick else 20_000
    ours, floor = _interleaved(runs, lambda: _round_trips(n, True), lambda: _round_trips(n, False))
    ok &= row(f"ask to a live worker, {n} requests", ours, floor, "us", 1.2)
    g = 1_000 if quick else 5_000
    ours, floor = _interleaved(runs, lambda: _activations(g, True), lambda: _activations(g, False))
    ok &= row(f"activation from MemoryStore + 1 ask, {g} groups", ours, floor, "us", 1.5)
    total = 10_000 if quick else 100_000
    live = 100 if quick else 1_000
    figures = many_groups(total, live)
    samples = figures["samples"]
    peak = max(growth for _, growth in samples)
    halfway = [growth for asked, growth in samples if asked >= total // 5]
    late = max(halfway) - min(halfway) if halfway else 0
    stats = figures["stats"]
    print(
        f"  {total:,} groups asked once, max_workers={live:,}, FileStore: "
        f"{figures['seconds']:.1f} s, {stats.saves:,} saves, {figures['files']:,} files; "
        f"at most {figures['peak_workers']:,} workers alive (saving included); "
        f"RSS growth at most {peak / 1024:.1f} MiB, and it moved by {late / 1024:.1f} MiB "
        f"over the last 80% of the groups"
    )
    every = figures["files"] == total
    bounded = figures["peak_workers"] <= 2 * live
    if not (every and bounded):
        print("  OVER BAR: a state is missing on disk, or more workers lived than allowed")
    return ok and every and bounded
