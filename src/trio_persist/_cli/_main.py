"""The ``trio-persist`` command: ``demo`` and ``monitor``.

It sits on top of the library and is never imported by it.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TextIO

import trio
from rich.console import Console

from .._core._open import open_persist
from .._core._persist import Persist
from .._monitor import build_frame
from .._stats import PersistStatistics
from ..stores import MemoryStore
from ._demo import Shop, workload
from ._tui import MonitorView, follow, run_live, run_once, run_plain


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


DEMO_SOCKET = "trio-persist-demo.sock"
"""The demo's monitor socket, in the temporary directory unless ``--socket`` says."""


async def demo(
    duration: float | None,
    plain: bool,
    seed: int,
    out: TextIO = sys.stdout,
    *,
    socket: str | None = None,
) -> int:
    """Run the demo workload on an embedded persist and watch it; print a summary.

    The persist's monitor is served on *socket* (by default ``DEMO_SOCKET`` in
    the temporary directory, or a name of this process's own if another demo
    serves that one), and the first screen says how to watch it from another
    terminal.
    """
    rng = random.Random(seed)
    shop = Shop(rng)
    async with (
        open_persist(
            shop, worker_timeout=2.0, max_workers=5, store=MemoryStore(), checkpoint_interval=1.0
        ) as persist,
        trio.open_nursery() as nursery,
    ):
        try:
            path = await _serve_demo_monitor(persist, nursery, socket)
        except OSError as exc:  # --socket names a taken path, or a missing directory
            print(f"trio-persist demo: {exc}", file=sys.stderr)
            return 1
        view = MonitorView(hint=f"in another terminal: trio-persist monitor {shlex.quote(path)}")
        nursery.start_soon(workload, persist, shop)

        async def producer(view: MonitorView, redraw: Callable[[], None]) -> None:
            while True:
                view.feed(build_frame(persist, max_groups=50))
                redraw()
                await trio.sleep(1.0 if plain else 0.25)

        if plain:
            await run_plain(view, producer, out, duration=duration)
        else:
            console = Console(file=out)
            await run_live(console, view, producer, keys_fd=sys.stdin.fileno(), duration=duration)
        nursery.cancel_scope.cancel()
    print(_summary(persist.statistics()), file=out)
    return 0


async def _serve_demo_monitor(
    persist: Persist[Any, Any, Any], nursery: trio.Nursery, socket: str | None
) -> str:
    """Serve *persist*'s monitor at *socket*, or at the default path (or this process's own)."""
    if socket is not None:
        path: str = await nursery.start(persist.serve_monitor, socket)
        return path
    shared = os.path.join(tempfile.gettempdir(), DEMO_SOCKET)
    try:
        path = await nursery.start(persist.serve_monitor, shared)
    except FileExistsError:  # another demo serves it: this one gets a name of its own
        own = shared.replace(".sock", f"-{os.getpid()}.sock")
        path = await nursery.start(persist.serve_monitor, own)
    return path


def _summary(stats: PersistStatistics) -> str:
    ratio = stats.deduplicated / stats.requests if stats.requests else 0.0
    return (
        f"trio-persist demo: {stats.requests} requests, {stats.executions} executions, "
        f"{stats.deduplicated} deduplicated ({ratio:.0%}); {stats.workers_started} workers "
        f"started ({stats.activations} sessions activated), {stats.worker_timeouts} timed "
        f"out, {stats.evictions} evicted, {stats.saves} states saved; "
        f"{stats.failures} failures"
    )


ENV_URL = "TRIO_PERSIST_REDIS_URL"


async def _cluster_once(url: str, namespace: str | None, out: TextIO) -> int:
    from ..redis._cluster import watch_cluster

    view = MonitorView()
    with trio.CancelScope() as scope:

        def on_frame(frame: dict[str, Any]) -> None:
            view.feed(frame)
            scope.cancel()

        def on_status(status: str | None) -> None:
            view.status = status
            if status is not None:
                scope.cancel()

        await watch_cluster(url, namespace, on_frame, on_status)
    if view.frame is None:
        print(f"trio-persist monitor: {view.status}", file=sys.stderr)
        return 1
    view.status = ""
    console = Console(file=out)
    console.print(view.renderable(width=console.width))
    return 0


async def monitor(
    path: str | None,
    once: bool,
    plain: bool,
    out: TextIO = sys.stdout,
    *,
    redis: str | None = None,
    namespace: str | None = None,
) -> int:
    """Watch the monitor socket at *path*, or a whole cluster through *redis*."""
    if redis is not None:
        from ..redis._cluster import watch_cluster

        cluster_url = redis
        if once:
            return await _cluster_once(cluster_url, namespace, out)

        async def producer(view: MonitorView, redraw: Callable[[], None]) -> None:
            def on_frame(frame: dict[str, Any]) -> None:
                view.feed(frame)
                redraw()

            def on_status(status: str | None) -> None:
                if status != view.status:
                    view.status = status
                    redraw()

            await watch_cluster(cluster_url, namespace, on_frame, on_status)

    elif path is None:
        print("trio-persist monitor: give a socket PATH or --redis URL", file=sys.stderr)
        return 2
    else:
        socket_path = path
        if once:
            return await run_once(socket_path, Console(file=out))

        async def producer(view: MonitorView, redraw: Callable[[], None]) -> None:
            await follow(socket_path, view, redraw)

    view = MonitorView()
    if plain:
        await run_plain(view, producer, out)
    else:
        await run_live(Console(file=out), view, producer, keys_fd=sys.stdin.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trio-persist", description="Deduplicated execution and persistent workers for Trio."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run a built-in workload on an embedded persist and watch it live"
    )
    demo_parser.add_argument(
        "--duration", type=float, default=None, help="stop after SECONDS (default: until q)"
    )
    demo_parser.add_argument("--plain", action="store_true", help="print sitrep lines instead")
    demo_parser.add_argument("--seed", type=int, default=1, help="seed of the workload")
    demo_parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=f"serve the monitor here (default: {DEMO_SOCKET} in the temporary directory)",
    )
    monitor_parser = commands.add_parser("monitor", help="watch a persist's monitor socket")
    monitor_parser.add_argument(
        "path", nargs="?", help="the Unix socket given to persist.serve_monitor"
    )
    monitor_parser.add_argument(
        "--redis",
        metavar="URL",
        nargs="?",
        const=ENV_URL,
        help=f"watch every process on a Redis backend instead; without URL, read it from "
        f"${ENV_URL} (keeps a password off the command line)",
    )
    monitor_parser.add_argument(
        "--namespace", default=None, help="show only this namespace (with --redis; default: all)"
    )
    monitor_parser.add_argument("--once", action="store_true", help="print one frame and exit")
    monitor_parser.add_argument(
        "--plain", action="store_true", help="print sitrep lines when something changes"
    )
    args = parser.parse_args(argv)
    if args.command == "monitor" and args.redis == ENV_URL:
        args.redis = os.environ.get(ENV_URL)
        if not args.redis:
            print(f"trio-persist monitor: --redis without a URL needs ${ENV_URL}", file=sys.stderr)
            return 2
    # Not a terminal (a pipe, a log): plain lines instead of the live view.
    plain = args.plain or not _is_terminal(sys.stdout)
    try:
        if args.command == "demo":
            return trio.run(partial(demo, socket=args.socket), args.duration, plain, args.seed)
        return trio.run(
            partial(monitor, redis=args.redis, namespace=args.namespace),
            args.path,
            args.once,
            plain,
        )
    except KeyboardInterrupt:
        return 130
