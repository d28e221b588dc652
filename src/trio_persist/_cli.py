"""The ``trio-persist`` command: ``demo`` (and, with the monitor, ``monitor``).

It sits on top of the library and is never imported by it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from ._persist import open_persist


async def _demo(duration: float) -> None:
    executions = 0

    async def lookup(base: Any, request: Any) -> Any:
        nonlocal executions
        executions += 1
        await trio.sleep(0.2)
        return f"{base}/{request}"

    async with open_persist(lookup) as persist:
        end = trio.current_time() + duration
        burst = 0
        while trio.current_time() < end:
            burst += 1
            async with trio.open_nursery() as nursery:
                for caller in range(20):
                    nursery.start_soon(persist.resolve, "users", f"user-{burst % 3}-{caller % 2}")
            print(f"burst {burst}: 20 callers, {executions} executions so far")
        stats = persist.statistics()
    ratio = stats.deduplicated / stats.requests if stats.requests else 0.0
    print(
        f"requests {stats.requests}, executions {stats.executions}, "
        f"deduplicated {stats.deduplicated} ({ratio:.0%})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-persist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a built-in workload and show deduplication")
    demo.add_argument("--duration", type=float, default=3.0, help="seconds to run (default 3)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        trio.run(_demo, args.duration)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
