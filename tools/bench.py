"""Measure trio-persist beside hand-written floors, in one run.

Each figure is printed beside a minimal implementation of the same design
class, written below and measured in the same process, as a ratio. Run:

    .venv/bin/python tools/bench.py            # everything in-process
    .venv/bin/python tools/bench.py --quick    # smaller counts, for a smoke run
    .venv/bin/python tools/bench.py --redis    # add the cross-process figures
    .venv/bin/python tools/bench.py --stores   # only the state stores' figures
    .venv/bin/python tools/bench.py --virtual  # only the virtual workers' figures (ask)
    .venv/bin/python tools/bench.py --grouping-only --grouping-against REV
                                               # the default grouper, beside commit REV's
    .venv/bin/python tools/bench.py --only-redis  # the cross-process figures alone
    .venv/bin/python tools/bench.py --check    # CI: the short figures against
                                               # tools/bench_bars.toml (ratios only)

The figures in docs/performance.md come from this script.
"""

from __future__ import annotations

import argparse
import collections
import gc
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

import trio_persist

# ---------------------------------------------------------------- floors ----


class _FloorFlight:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class FloorSingleflight:
    """The floor: a dict + `trio.Event` singleflight running work in its own nursery task."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.flights: dict[Any, _FloorFlight] = {}

    async def do(self, key: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        flight = self.flights.get(key)
        if flight is None:
            flight = self.flights[key] = _FloorFlight()
            self.nursery.start_soon(self._run, key, flight, fn)
        await flight.event.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value

    async def _run(self, key: Any, flight: _FloorFlight, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            flight.value = await fn()
        except Exception as exc:
            flight.error = exc
        finally:
            del self.flights[key]
            flight.event.set()


async def floor_worker(receive: trio.MemoryReceiveChannel[Any]) -> None:
    """The floor worker: a memory-channel request/reply loop."""
    state = 0
    async for request, reply in receive:
        state += request
        reply.value = state
        reply.event.set()


async def floor_idle_worker(receive: trio.MemoryReceiveChannel[Any], idle: float) -> None:
    """The floor worker with an idle timeout: one cancel scope whose deadline moves
    before each wait (what a worker that times out when idle needs at the least)."""
    state = 0
    with trio.CancelScope() as scope:
        while True:
            scope.deadline = trio.current_time() + idle
            try:
                request, reply = await receive.receive()
            except trio.EndOfChannel:
                return
            scope.deadline = math.inf
            state += request
            reply.value = state
            reply.event.set()


# ---------------------------------------------------------------- devices ----


class KeyDevice:
    """Groups by the request itself, so both sides hash the same key."""

    async def resolve(self, base: Any, request: Any) -> Any:
        return request

    def group(self, base: Any, request: Any) -> Any:
        return request


class CheckpointDevice(KeyDevice):
    async def resolve(self, base: Any, request: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return request


async def instant(base: Any, request: Any) -> Any:
    return request


class CounterDevice:
    """A worker device: the state is a number, each request adds to it."""

    async def resolve(self, base: Any, request: Any) -> Any:
        return base + request

    def group(self, base: Any, request: Any) -> Any:
        return "counter"


# ---------------------------------------------------------------- harness ----


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """Microseconds per call: the median of *runs* runs (each one a fresh trio.run)."""
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples)


# What `timed` reads: wall time; `--check` reads the process's CPU time instead,
# which other processes on a loaded machine do not inflate.
clock: Callable[[], float] = time.perf_counter


def timed(main: Callable[[], Awaitable[int]]) -> float:
    gc.collect()
    start = clock()
    calls = trio.run(main)
    return (clock() - start) / calls * 1e6


def sequential_distinct(n: int, use_floor: bool, device: Any = None) -> float:
    async def main() -> int:
        if use_floor:
            async with trio.open_nursery() as nursery:
                floor = FloorSingleflight(nursery)
                for i in range(n):

                    async def fn(i: int = i) -> int:
                        return i

                    await floor.do(i, fn)
        else:
            async with trio_persist.open_persist(device or KeyDevice()) as persist:
                for i in range(n):
                    await persist.resolve(None, i)
        return n

    return timed(main)


class LabelledKeyDevice(KeyDevice):
    """`KeyDevice` with a ``label`` hook (what an operator sees for a group)."""

    def label(self, base: Any, request: Any) -> str:
        return "key"


class NullObserver:
    """An observer that does nothing: what is measured is what telling it costs."""

    def execution_started(self, kind: str, group: Any, label: str, execution: Any) -> None:
        pass

    def joined(self, kind: str, group: Any, execution: Any) -> None:
        pass

    def execution_ended(
        self, kind: str, group: Any, execution: Any, outcome: str, seconds: float
    ) -> None:
        pass


def _silence(persist: Any) -> None:
    """Make the per-call work of durations no-ops in *persist*: the clock reads
    (a constant clock: every time is 0.0; only for flights, as a worker's idle
    deadline is read from it) and the samples (sinks: C calls that keep
    nothing, so the floor pays no Python frame that the real tree does not)."""
    core = persist._core
    core.now = float  # a C call returning 0.0
    timings = core.timings
    timings.both = collections.deque(maxlen=0)  # keeps nothing, so never folded
    timings.execution.add = timings.wait.add = id  # a C call that keeps nothing


def observed_distinct(n: int, observed: bool, direct: bool = False) -> float:
    """(i) with observability in use (one observer, a ``label`` hook, durations),
    or, *observed* False, the same tree with that per-call work made no-ops:
    no observer (so no label is asked for), and `_silence`.

    With *direct* (and *observed* False), the caller's loop calls the same
    empty ``label`` hook and observer methods itself, once each per call: what
    the user's own functions cost, which the used figure's floor includes so
    that only what the persist adds to them is counted.
    """

    async def main() -> int:
        device = LabelledKeyDevice() if observed or direct else KeyDevice()
        observer = NullObserver()
        async with trio_persist.open_persist(device) as persist:
            if observed:
                persist.add_observer(observer)
                for i in range(n):
                    await persist.resolve(None, i)
                return n
            _silence(persist)
            if not direct:
                for i in range(n):
                    await persist.resolve(None, i)
                return n
            label, started, ended = (
                device.label,
                observer.execution_started,
                observer.execution_ended,
            )
            for i in range(n):
                started("flight", i, label(None, i), None)
                await persist.resolve(None, i)
                ended("flight", i, None, "ok", 0.0)
        return n

    return timed(main)


def observed_inline(n: int) -> float:
    """The used observability figure's work written by hand in the caller's loop,
    around the same silenced tree: two `time.perf_counter` reads, a sample kept
    and folded every 256 calls, the ``label`` hook and each observer method
    called through a loop over a tuple. What that work costs here at the least
    (no library frame, no check), beside `observed_distinct`'s direct floor."""
    from trio_persist._core._histogram import Histogram

    async def main() -> int:
        device = LabelledKeyDevice()
        observer = NullObserver()
        async with trio_persist.open_persist(device) as persist:
            _silence(persist)
            label, now = device.label, time.perf_counter
            on_started, on_ended = (observer.execution_started,), (observer.execution_ended,)
            execution, wait, samples = Histogram(), Histogram(), []
            for i in range(n):
                began = now()
                text = label(None, i)
                for started in on_started:
                    started("flight", i, text, None)
                await persist.resolve(None, i)
                elapsed = now() - began
                samples.append(elapsed)
                for ended in on_ended:
                    ended("flight", i, None, "ok", elapsed)
                if len(samples) == 256:
                    execution.fold(samples, wait)
                    samples.clear()
        return n

    return timed(main)


def wrapped_distinct(n: int) -> float:
    """Per-call cost of *n* distinct calls, one after another, of a wrapped function."""

    async def fetch(i: int) -> int:
        return i

    async def main() -> int:
        async with trio_persist.open_persist(instant) as persist:
            wrapped = persist.wrap(fetch)
            for i in range(n):
                await wrapped(i)
        return n

    return timed(main)


def decorated_distinct(n: int) -> float:
    """The same through ``@trio_persist.deduplicated`` (no block)."""
    deduplicated = getattr(trio_persist, "deduplicated", None)
    if deduplicated is None:  # an older version, measured beside this one
        return math.nan

    @deduplicated
    async def fetch(i: int) -> int:
        return i

    async def main() -> int:
        for i in range(n):
            await fetch(i)
        return n

    return timed(main)


def concurrent_callers(keys: int, callers: int, use_floor: bool) -> float:
    async def main() -> int:
        async with trio.open_nursery() as nursery:
            if use_floor:
                floor = FloorSingleflight(nursery)

                async def call(key: int) -> None:
                    async def fn() -> int:
                        await trio.lowlevel.checkpoint()
                        return key

                    await floor.do(key, fn)

                for key in range(keys):
                    for _ in range(callers):
                        nursery.start_soon(call, key)
            else:
                async with (
                    trio_persist.open_persist(CheckpointDevice()) as persist,
                    trio.open_nursery() as inner,
                ):
                    for key in range(keys):
                        for _ in range(callers):
                            inner.start_soon(persist.resolve, None, key)
        return keys * callers

    return timed(main)


def live_groups(live: int, probes: int) -> float:
    """Per-call cost of a resolve while *live* other flights are in progress."""
    result: list[float] = []
    release: trio.Event

    class Parked(KeyDevice):
        async def resolve(self, base: Any, request: Any) -> Any:
            if base == "park":
                await release.wait()
            return request

    async def main() -> int:
        nonlocal release
        release = trio.Event()
        async with trio_persist.open_persist(Parked()) as persist, trio.open_nursery() as nursery:
            for i in range(live):
                nursery.start_soon(persist.resolve, "park", ("live", i))
            await trio.testing.wait_all_tasks_blocked()
            # Frozen, so the figure is our per-call cost, not the collector's walk
            # over the live flights (which any design holding them would pay).
            gc.collect()
            gc.freeze()
            start = time.perf_counter()
            for i in range(probes):
                await persist.resolve(None, i)
            result.append((time.perf_counter() - start) / probes * 1e6)
            gc.unfreeze()
            release.set()
        return 1

    trio.run(main)
    return result[0]


def worker_round_trip(n: int, use_floor: bool, timeout: float | None = None) -> float:
    """One requester, *n* sequential requests to one worker (idle timeout *timeout*)."""

    async def main() -> int:
        if use_floor:
            send, receive = trio.open_memory_channel[Any](64)
            async with trio.open_nursery() as nursery:
                if timeout is None:
                    nursery.start_soon(floor_worker, receive)
                else:
                    nursery.start_soon(floor_idle_worker, receive, timeout)
                for _ in range(n):
                    reply = _FloorFlight()
                    await send.send((1, reply))
                    await reply.event.wait()
                await send.aclose()
        else:
            device = CounterDevice()
            async with trio_persist.open_persist(device, worker_timeout=timeout) as persist:
                await persist.start_worker(0)
                for _ in range(n):
                    await persist.resolve(0, 1)
        return n

    return timed(main)


_READER = """
import select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    socks.append(s)
print("connected", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    ready, _, _ = select.select(socks, [], [], 1)
    for s in ready:
        if not s.recv(1 << 20):
            socks.remove(s)
    if not socks:
        break
"""


class ManyGroups:
    """Groups named by their request; "live" requests stay in flight."""

    def group(self, base: Any, request: Any) -> Any:
        return (base, request)

    async def resolve(self, base: Any, request: Any) -> Any:
        if base == "live":
            await trio.sleep_forever()
        return request


def monitor_load(clients: int, live: int = 10_000, seconds: float = 3.0) -> float:
    """Microseconds per resolve beside *live* groups while *clients* read the monitor
    (the clients run in another process, so only the server's cost counts)."""
    import subprocess
    import tempfile

    out: list[float] = []

    async def main() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.sock")
            async with (
                trio_persist.open_persist(ManyGroups()) as persist,
                trio.open_nursery() as nursery,
            ):
                for i in range(live):
                    nursery.start_soon(persist.resolve, "live", i)
                await trio.testing.wait_all_tasks_blocked()
                await nursery.start(persist.serve_monitor, path)
                reader = None
                if clients:
                    reader = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                        [sys.executable, "-c", _READER, path, str(clients)],
                        stdout=subprocess.PIPE,
                    )
                    assert reader.stdout is not None
                    await trio.to_thread.run_sync(reader.stdout.readline)
                await trio.sleep(1.5)  # every client has had its first frames
                count = 0
                start = time.perf_counter()
                end = start + seconds
                while time.perf_counter() < end:
                    await persist.resolve("probe", count)
                    count += 1
                out.append((time.perf_counter() - start) / count * 1e6)
                if reader is not None:
                    reader.kill()
                    reader.wait()
                nursery.cancel_scope.cancel()
        return 1

    trio.run(main)
    return out[0]


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover


def idle_memory(n: int, use_floor: bool) -> float:
    """Bytes of RSS per idle worker (or floor task), measured in a subprocess-free way."""
    out: list[float] = []

    async def floor_task(receive: trio.MemoryReceiveChannel[Any]) -> None:
        with trio.move_on_after(3600):
            await receive.receive()

    async def main() -> int:
        gc.collect()
        before = rss_kib()
        if use_floor:
            async with trio.open_nursery() as nursery:
                channels = []
                for _ in range(n):
                    send, receive = trio.open_memory_channel[Any](64)
                    channels.append(send)
                    nursery.start_soon(floor_task, receive)
                await trio.sleep(0.01)
                gc.collect()
                out.append((rss_kib() - before) * 1024 / n)
                nursery.cancel_scope.cancel()
        else:
            async with trio_persist.open_persist(instant, shutdown_grace=1) as persist:
                for i in range(n):
                    await persist.start_worker(i, group=i, timeout=3600)
                await trio.sleep(0.01)
                gc.collect()
                out.append((rss_kib() - before) * 1024 / n)
                # Reaching in: skip stopping 100,000 workers one by one (not measured).
                persist._core.nursery.cancel_scope.cancel()
        return 1

    trio.run(main)
    return out[0]


def row(name: str, ours: float, floor: float, unit: str, bar: float) -> bool:
    ratio = ours / floor
    ok = ratio <= bar
    mark = "ok" if ok else "OVER BAR"
    print(
        f"  {name:<46} {ours:9.2f} {unit:<6} floor {floor:9.2f} {unit:<6} ratio {ratio:5.2f} (bar {bar}) {mark}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--redis", action="store_true", help="also measure the Redis backend")
    parser.add_argument("--stores", action="store_true", help="only the state stores' figures")
    parser.add_argument(
        "--virtual", action="store_true", help="only the virtual workers' figures (ask)"
    )
    parser.add_argument(
        "--front-only",
        action="store_true",
        help="only the resolve figures (i)-(iii) and the wrapped functions' figures",
    )
    parser.add_argument(
        "--grouping-only", action="store_true", help="only the default grouper's figures"
    )
    parser.add_argument(
        "--grouping-against",
        action="append",
        default=[],
        metavar="REV",
        help="also measure the grouping encoder of commit REV (repeatable)",
    )
    parser.add_argument("--only-redis", action="store_true", help="measure the Redis backend alone")
    parser.add_argument(
        "--check",
        nargs="*",
        metavar="FIGURE",
        help="CI: the short figures (or those named) against tools/bench_bars.toml; "
        "fails when one falls behind its recorded ratio (by more than its slack) or its bar",
    )
    parser.add_argument("--rounds", type=int, default=9, help="alternated rounds (--check)")
    args = parser.parse_args()
    if args.check is not None:
        sys.path.insert(0, os.path.dirname(__file__))
        from _bench_check import check

        ok = check(sys.modules[__name__], rounds=args.rounds, only=args.check)
        print("\nno figure behind the table" if ok else "\nA FIGURE FELL BEHIND THE TABLE")
        return 0 if ok else 1
    scale = 10 if args.quick else 1
    runs = 1 if args.quick else args.runs
    print(
        f"trio-persist {trio_persist.__version__}, trio {trio.__version__}, Python {sys.version.split()[0]}"
    )
    print(f"median of {runs} runs; us = microseconds per call\n")
    sys.path.insert(0, os.path.dirname(__file__))
    from _bench_grouping import grouping_figures
    from _bench_stores import store_figures
    from _bench_virtual import virtual_figures

    if args.virtual:
        ok = virtual_figures(row, quick=args.quick, runs=runs)
        print("\nall figures within their bars" if ok else "\nSOME FIGURES ARE OVER THEIR BARS")
        return 0 if ok else 1
    if args.stores:
        ok = store_figures(row, quick=args.quick)
        print("\nall figures within their bars" if ok else "\nSOME FIGURES ARE OVER THEIR BARS")
        return 0 if ok else 1
    if args.grouping_only:
        ok = grouping_figures(row, quick=args.quick, runs=runs, against=args.grouping_against)
        return 0 if ok else 1
    ok = True
    if args.only_redis:
        sys.path.insert(0, os.path.dirname(__file__))
        from _bench_redis import redis_figures

        ok = redis_figures(row, quick=args.quick)
        print("\nall figures within their bars" if ok else "\nSOME FIGURES ARE OVER THEIR BARS")
        return 0 if ok else 1
    print("Deduplicated resolution")
    n = 10_000 // scale
    ok &= row(
        f"(i) {n} distinct keys, one after another",
        best_of(runs, lambda: sequential_distinct(n, False)),
        best_of(runs, lambda: sequential_distinct(n, True)),
        "us",
        1.5,
    )
    print(
        f"      same, default BLAKE2b grouper: {best_of(runs, lambda: sequential_distinct(n, False, instant)):.2f} us"
    )
    c = 10_000 // scale
    ok &= row(
        f"(ii) 1 key x {c} concurrent callers",
        best_of(runs, lambda: concurrent_callers(1, c, False)),
        best_of(runs, lambda: concurrent_callers(1, c, True)),
        "us",
        1.5,
    )
    k = 1000 // scale
    ok &= row(
        f"(iii) {k} keys x 100 callers",
        best_of(runs, lambda: concurrent_callers(k, 100, False)),
        best_of(runs, lambda: concurrent_callers(k, 100, True)),
        "us",
        1.5,
    )
    print(
        f"      {n} distinct calls of a wrapped function (persist.wrap): "
        f"{best_of(runs, lambda: wrapped_distinct(n)):.2f} us"
    )
    print(
        f"      the same through @deduplicated: "
        f"{best_of(runs, lambda: decorated_distinct(n)):.2f} us"
    )
    if args.front_only:
        return 0 if ok else 1
    small = best_of(runs, lambda: live_groups(100, 5000 // scale))
    large = best_of(runs, lambda: live_groups(100_000 // scale, 5000 // scale))
    print(
        f"  per-call cost beside 100 live flights: {small:.2f} us; beside {100_000 // scale}: {large:.2f} us"
        f" (ratio {large / small:.2f})"
    )
    print("\nThe monitor (10,000 live groups; clients read in another process)")
    ok &= row(
        "resolve cost with 50 monitor clients",
        best_of(runs, lambda: monitor_load(50)),
        best_of(runs, lambda: monitor_load(0)),
        "us",
        1.11,  # throughput at least 90% of the same run with no client
    )
    print("\nPersistent workers")
    w = 20_000 // scale
    ok &= row(
        f"worker round trip, {w} sequential requests",
        best_of(runs, lambda: worker_round_trip(w, False)),
        best_of(runs, lambda: worker_round_trip(w, True)),
        "us",
        1.5,
    )
    ok &= row(
        f"same, default idle timeout (10 s), {w} requests",
        best_of(runs, lambda: worker_round_trip(w, False, 10.0)),
        best_of(runs, lambda: worker_round_trip(w, True, 10.0)),
        "us",
        1.25,
    )
    m = 100_000 // scale
    ok &= row(
        f"memory per idle worker, {m} workers",
        idle_memory(m, False),
        idle_memory(m, True),
        "bytes",
        1.5,
    )
    ok &= store_figures(row, quick=args.quick)
    ok &= virtual_figures(row, quick=args.quick, runs=runs)
    # Last of the in-process figures: its 9 MB values must not weigh on the memory one.
    ok &= grouping_figures(row, quick=args.quick, runs=runs, against=args.grouping_against)
    if args.redis:
        from _bench_redis import redis_figures

        ok &= redis_figures(row, quick=args.quick)
    print("\nall figures within their bars" if ok else "\nSOME FIGURES ARE OVER THEIR BARS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
