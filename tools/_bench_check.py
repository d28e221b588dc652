"""The short local figures for CI: ratios to their floors, checked against a table.

`tools/bench.py --check` runs each figure of `tools/bench_bars.toml` (the
numbers docs/performance.md shows, and tests/test_docs.py checks the page
against) in alternated rounds, ours then the floor's, each a fresh
``trio.run`` timed in the process's CPU time, and takes the median of the
rounds' ratios: both sides of a round see the same machine, and other
processes' load does not count. A figure fails when its median ratio is more
than ``slack`` (5%: a figure 10% behind fails whatever the noise) above the
ratio recorded in the table, or above its bar. Absolute times are printed,
never compared.

Memory per idle worker is measured in a fresh interpreter per side (RSS
deltas are only meaningful in a process that has not yet grown its heap).
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BARS = Path(__file__).with_name("bench_bars.toml")

Side = Callable[[], float]


def load_bars(path: Path = BARS) -> dict[str, Any]:
    """The table: ``{"slack": float, "figures": {name: {"ratio", "bar", "what"}}}``."""
    with path.open("rb") as file:
        return tomllib.load(file)


def _memory(n: int, use_floor: bool) -> float:
    """Bytes per idle worker (or floor task), in a fresh interpreter."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench; "
        "print(bench.idle_memory(int(sys.argv[2]), sys.argv[3] == '1'))"
    )
    tools = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, tools, str(n), "1" if use_floor else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.split()[-1])


def figures(bench: Any, scale: int = 1) -> dict[str, tuple[Side, Side]]:
    """Each short figure's two sides: ours, and its floor's (microseconds of the
    process's CPU time, or bytes)."""
    import _bench_virtual
    from _bench_virtual import _round_trips

    # CPU time, not wall time: what other processes take of a shared machine's
    # cores does not count (both sides are in-process and never wait on I/O).
    bench.clock = _bench_virtual.clock = time.process_time

    n = 10_000 // scale
    w = 10_000 // scale
    m = 10_000 // scale
    return {
        "distinct_keys": (
            lambda: bench.sequential_distinct(n, False),
            lambda: bench.sequential_distinct(n, True),
        ),
        "one_key_callers": (
            lambda: bench.concurrent_callers(1, n, False),
            lambda: bench.concurrent_callers(1, n, True),
        ),
        "worker_round_trip": (
            lambda: bench.worker_round_trip(w, False),
            lambda: bench.worker_round_trip(w, True),
        ),
        "worker_round_trip_idle": (
            lambda: bench.worker_round_trip(w, False, 10.0),
            lambda: bench.worker_round_trip(w, True, 10.0),
        ),
        "ask": (lambda: _round_trips(w, True), lambda: _round_trips(w, False)),
        # Observability's per-call cost, as a ratio to the same tree with that
        # work made no-ops, in the same process (`bench.observed_distinct`);
        # the difference is printed in microseconds per call.
        "observability_unused": (
            lambda: bench.sequential_distinct(n, False),
            lambda: bench.observed_distinct(n, False),
        ),
        # Used: beside the same no-op tree whose loop calls the same empty
        # label hook and observer methods directly (their own cost is the user's).
        "observability": (
            lambda: bench.observed_distinct(n, True),
            lambda: bench.observed_distinct(n, False, direct=True),
        ),
        "idle_memory": (lambda: _memory(m, False), lambda: _memory(m, True)),
    }


def measure(
    ours: Side, floor: Side, rounds: int, warm_up: bool = True
) -> tuple[float, float, float]:
    """``(median ratio, median ours, median floor)`` over *rounds* alternated rounds
    (with *warm_up*, a first round of each side is not counted)."""
    if warm_up:
        ours()
        floor()
    ratios, mine, theirs = [], [], []
    for index in range(rounds):
        # Alternate which side goes first, so neither always runs on a warmer cache.
        if index % 2:
            b, a = floor(), ours()
        else:
            a, b = ours(), floor()
        ratios.append(a / b)
        mine.append(a)
        theirs.append(b)
    return statistics.median(ratios), statistics.median(mine), statistics.median(theirs)


def check(
    bench: Any,
    rounds: int = 9,
    only: list[str] | None = None,
    sides: dict[str, tuple[Side, Side]] | None = None,
    table: dict[str, Any] | None = None,
) -> bool:
    """Measure every figure of the table; print each; True if none fell behind.

    *sides* and *table* replace the real figures and `tools/bench_bars.toml`
    (for the check's own test).
    """
    table = load_bars() if table is None else table
    slack = float(table["slack"])
    # The used observability figure's work written by hand (`bench.observed_inline`),
    # printed beside it: not a figure of the table.
    inline = None
    if sides is None:
        sides = figures(bench)
        inline = functools.partial(bench.observed_inline, 10_000)
    ok = True
    print(
        f"short figures: median ratio of {rounds} alternated rounds; fails past "
        f"{slack:.0%} above the table's ratio, or above the bar\n"
    )
    for name, entry in table["figures"].items():
        if only and name not in only:
            continue
        ours, floor = sides[name]
        # Memory is measured in fresh interpreters (no warm-up to do) and varies
        # little: three rounds.
        memory = name == "idle_memory"
        ratio, a, b = measure(ours, floor, 3 if memory else rounds, warm_up=not memory)
        limit = min(float(entry["bar"]), float(entry["ratio"]) * (1 + slack))
        good = ratio <= limit
        ok &= good
        unit = "bytes" if memory else "us"
        print(
            f"  {entry['what']:<58} {a:9.2f} {unit:<5} floor {b:9.2f} ratio {ratio:5.2f} "
            f"(table {entry['ratio']}, limit {limit:.2f}) {'ok' if good else 'BEHIND'}"
        )
        if name.startswith("observability"):
            print(f"  {'':<58} {(ratio - 1) * b:+9.2f} us per call")
        if name == "observability" and inline is not None:
            least, _, floor_us = measure(inline, floor, rounds)
            print(
                f"  {'':<58} {(least - 1) * floor_us:+9.2f} us per call: the same work "
                "written inline in the caller's loop (the least it costs here)"
            )
    return ok
