"""The state stores' figures for tools/bench.py: save and load, small and 1 MB states.

Each store is measured beside a hand-written floor of its design class, in the
same run: the same JSON faithfulness check (encode, decode, compare), the
same storage steps (a dict; a temporary file, fsync, rename, directory fsync
in a worker thread; one SQLite connection in WAL mode with synchronous=FULL in
a worker thread; a bare SET and GET through the same kind of coredis client, on
the same real Redis server started here), and nothing else: no group naming,
no seal, no fencing script, no counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from trio_persist import stores
from trio_persist.redis import RedisStore

SMALL = {"user": "alice", "items": ["book", "pen"], "total": 12.5}
LARGE = {
    "items": [
        {"id": i, "name": f"item-{i}", "qty": i % 7, "tags": ["a", "b"]} for i in range(18_000)
    ]
}  # about 1 MB of JSON


def _encode(state: Any) -> bytes:
    text = json.dumps(state, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    if json.loads(text) != state:
        raise TypeError("would not read back equal")
    return text.encode()


class FloorMemory:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def save(self, group: str, state: Any) -> None:
        self.data[group] = _encode(state)
        await trio.lowlevel.checkpoint()

    async def load(self, group: str) -> Any:
        await trio.lowlevel.checkpoint()
        return json.loads(self.data[group])


class FloorFile:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    async def save(self, group: str, state: Any) -> None:
        await trio.to_thread.run_sync(self._write, group, _encode(state))

    def _write(self, group: str, data: bytes) -> None:
        path = os.path.join(self.directory, group)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def load(self, group: str) -> Any:
        def read() -> bytes:
            with open(os.path.join(self.directory, group), "rb") as file:
                return file.read()

        return json.loads(await trio.to_thread.run_sync(read))


class FloorSqlite:
    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS s (k TEXT PRIMARY KEY, v BLOB)")
        self.limiter = trio.CapacityLimiter(1)

    async def save(self, group: str, state: Any) -> None:
        data = _encode(state)
        await trio.to_thread.run_sync(
            self.connection.execute,
            "INSERT OR REPLACE INTO s VALUES (?, ?)",
            (group, data),
            limiter=self.limiter,
        )

    async def load(self, group: str) -> Any:
        def read() -> bytes:
            row: tuple[bytes] = self.connection.execute(
                "SELECT v FROM s WHERE k = ?", (group,)
            ).fetchone()
            return row[0]

        return json.loads(await trio.to_thread.run_sync(read, limiter=self.limiter))


class FloorRedis:
    """A bare SET and GET of the JSON, on a client built as the store builds its own."""

    def __init__(self, url: str) -> None:
        from trio_persist.redis._client import open_client

        self.client = open_client(url, 5.0)
        self.key = f"bench-floor-{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> FloorRedis:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.__aexit__(None, None, None)

    async def save(self, group: str, state: Any) -> None:
        await self.client.set(self.key, _encode(state))

    async def load(self, group: str) -> Any:
        return json.loads(await self.client.get(self.key))


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A real Redis server for the figures (the suite's helper), stopped at the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_server import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _measure(make: Callable[[str], Any], state: Any, count: int) -> tuple[float, float]:
    """Microseconds per save and per load (medians of *count* calls), in a fresh place."""
    place = tempfile.mkdtemp(prefix="trio-persist-bench-", dir=os.environ.get("BENCH_DIR"))

    async def main() -> tuple[float, float]:
        store = make(place)
        saves, loads = [], []
        async with contextlib.AsyncExitStack() as opened:
            if hasattr(store, "__aenter__"):  # a store with a life: open while measured
                await opened.enter_async_context(store)
            for _ in range(count):
                start = time.perf_counter()
                await store.save("g", state)
                saves.append(time.perf_counter() - start)
                start = time.perf_counter()
                await store.load("g")
                loads.append(time.perf_counter() - start)
        await _aclose(store)
        return statistics.median(saves) * 1e6, statistics.median(loads) * 1e6

    try:
        return trio.run(main)
    finally:
        shutil.rmtree(place)


def _alternate(
    ours: Callable[[str], Any], floor: Callable[[str], Any], state: Any, count: int, rounds: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Rounds of ours then the floor, alternated so that the machine's load hits
    both alike; the median round of each."""
    mine, hand = [], []
    for _ in range(rounds):
        mine.append(_measure(ours, state, count))
        hand.append(_measure(floor, state, count))

    def median(samples: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)

    return median(mine), median(hand)


async def _aclose(store: Any) -> None:
    if hasattr(store, "aclose"):
        await store.aclose()
    elif hasattr(store, "connection"):
        store.connection.close()


STORES: dict[str, tuple[Callable[[str], Any], Callable[[str], Any]]] = {
    "MemoryStore": (lambda place: stores.MemoryStore(), lambda place: FloorMemory()),
    "FileStore": (lambda place: stores.FileStore(place), FloorFile),
    "SqliteStore": (
        lambda place: stores.SqliteStore(os.path.join(place, "s.db")),
        lambda place: FloorSqlite(os.path.join(place, "s.db")),
    ),
}
# Bars: on disk, the fsyncs dominate and the store must stay close to the floor;
# in memory, naming the group and sealing the state (header, SHA-256) are most
# of a small state's cost, so the bar is wider there.
# On Redis, a round trip to a local server (about 100 us) carries the same
# naming and seal as in memory, and a script instead of a bare SET.
BARS = {
    "MemoryStore": (6.0, 1.5),
    "FileStore": (1.5, 1.5),
    "SqliteStore": (1.5, 1.5),
    "RedisStore": (2.0, 1.5),
}


def store_figures(row: Callable[[str, float, float, str, float], bool], *, quick: bool) -> bool:
    print(
        "\nState stores (median call of the median round; floor: the same steps by hand, no seal)"
    )
    with redis_server() as url:
        return _figures(row, quick, url)


def _figures(row: Callable[[str, float, float, str, float], bool], quick: bool, url: str) -> bool:
    ok = True
    every = {
        **STORES,
        "RedisStore": (
            lambda place: RedisStore(url, namespace=f"bench-{uuid.uuid4().hex[:8]}"),
            lambda place: FloorRedis(url),
        ),
    }
    for name, (ours, floor) in every.items():
        for label, state, count, bar in (
            ("small state", SMALL, 20 if quick else 50, BARS[name][0]),
            ("1 MB state", LARGE, 3 if quick else 5, BARS[name][1]),
        ):
            if name == "MemoryStore" and label == "small state":
                count *= 20
            mine, hand = _alternate(ours, floor, state, count, 1 if quick else 7)
            ok &= row(f"{name} save, {label}", mine[0], hand[0], "us", bar)
            ok &= row(f"{name} load, {label}", mine[1], hand[1], "us", bar)
    signed = _measure(lambda place: stores.FileStore(place, signing_key=b"k" * 32), LARGE, 5)
    print(
        f"  FileStore with a signing key (pickles), 1 MB state: save {signed[0]:.0f} us, "
        f"load {signed[1]:.0f} us"
    )
    return ok
